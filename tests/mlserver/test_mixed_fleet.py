"""A mixed fleet end to end: real MLServer pods behind real ``wei-agent --protocol oip`` processes and
real wei-serve pods, one service in the real ZooKeeper, one WeiClient.

Every pod serves the client tests' ``Ident`` model (``y = 2x + 1``; ``who``: the pod) under ``ctr``:
wei-serve pods 0 and 1 (registered by a Publisher, as tests/client registers them), MLServer pods 2
and 3 (registered by their agents). One scenario, in the order a fleet lives it, so that two MLServer
starts (~5 s each on a loaded machine) serve all of it:

1. only the MLServer pods are registered: a caller's mistake (shape, dtype) is ``InvalidInput``,
   raised at once, and leaves the pods as healthy as it found them;
2. the wei-serve pods join (at the agents' published weight); a new client over the four: the same
   mistakes are the same ``InvalidInput`` from either kind of pod;
3. 200 calls, sync from 4 threads and async, spread over all four pods, every answer right;
4. 2,000 rows in one call, and split over the four;
5. an MLServer pod is SIGKILLed under load from 4 threads: no caller sees an error; its agent drains
   it, the client's snapshot drops it, and later calls go to the other three only.

Every wait is on an event (a snapshot, a count of answers) with a generous deadline, never a sleep.
Shares are not asserted, only that each pod answers some: the default policy (p2c_jsed) follows
latency, and an MLServer pod is ~2x slower per small call than wei-serve here, so the two MLServer
pods answer about a quarter of the calls, not half.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pytest
from client_metrics import counted
from pods import MLServerPod, OipAgent

from registry.membership import MembershipSnapshot
from registry.records import Protocol, State
from weiclient import ClientConfig, WeiClient
from weiclient.errors import InvalidInput

SERVICE = "ctr"
WEI, OIP = (0, 1), (2, 3)          # ``who`` of the wei-serve pods and of the MLServer pods
CALL_TIMEOUT_S = 5.0
WAIT_S = 60.0                      # a deadline for events, not a measure of anything
MISTAKES = {"shape": np.zeros((2, 5), np.float32), "dtype": np.zeros((2, 3), np.float64)}

T = TypeVar("T")


def rows(n: int, rng: random.Random) -> np.ndarray:
    return np.asarray([[rng.uniform(-100, 100) for _ in range(3)] for _ in range(n)], np.float32)


def check(out: dict[str, np.ndarray], x: np.ndarray) -> int:
    """The answer is right for ``x``; returns which pod gave it."""
    np.testing.assert_array_equal(out["y"], x * 2 + 1)
    assert out["ver"].tolist() == [1] * len(x)
    (who,) = set(out["who"].tolist())
    return who


def assert_unharmed(client: WeiClient) -> None:
    """No pod blamed: no failure counted, full health, never ejected, all routable."""
    stats = client.stats().balancer
    assert stats.routable == stats.members and stats.ejected == 0, stats
    for e in stats.endpoints:
        assert (e.consecutive_failures, e.health, e.ejected_for_s, e.times_ejected) == (0, 1.0, 0.0, 0), e


class Loop:
    """One event loop on a thread for the test's apredict calls: a client's asyncio channels belong
    to the loop that first used them, so every async call and the client's ``aclose`` run here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


class Load:
    """``predict`` in a loop on ``threads`` threads until :meth:`stop` (or ``calls`` calls each):
    answers counted by pod, every exception and wrong answer kept."""

    def __init__(self, client: WeiClient, threads: int, *, calls: int | None = None, seed: int = 0) -> None:
        self.client = client
        self.answered: Counter[int] = Counter()
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(calls, random.Random(seed + i)), daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, calls: int | None, rng: random.Random) -> None:
        done = 0
        while not self._stop.is_set() and (calls is None or done < calls):
            x = rows(rng.randint(1, 4), rng)
            try:
                who = check(self.client.predict(SERVICE, {"x": x}, timeout=CALL_TIMEOUT_S), x)
            except Exception as e:  # noqa: BLE001 - any error is a failure of the test
                with self._cond:
                    self.errors.append(f"{type(e).__name__}: {e}")
            else:
                with self._cond:
                    self.answered[who] += 1
                    self._cond.notify_all()
            done += 1

    @property
    def total(self) -> int:
        with self._cond:
            return sum(self.answered.values())

    def wait_for(self, predicate: Callable[[Counter[int]], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.answered) or bool(self.errors), WAIT_S), \
                f"not within {WAIT_S:g} s: {what}; answered {self.answered}"
            assert not self.errors, self.errors[:5]

    def join(self) -> Counter[int]:
        for t in self._threads:
            t.join(WAIT_S * 2)
            assert not t.is_alive(), "a caller is stuck"
        return self.answered

    def stop(self) -> Counter[int]:
        self._stop.set()
        return self.join()

    def cancel(self) -> None:
        """Stop without waiting (a failed test's cleanup)."""
        self._stop.set()


@pytest.fixture
def clients(zk_settings) -> Iterator[Callable[[int], WeiClient]]:
    """``clients(n)``: a WeiClient over the service once its snapshot holds ``n`` routable members, all
    SERVING (an agent registers its pod WARMING, then promotes it)."""
    made: list[WeiClient] = []

    def make(members: int) -> WeiClient:
        client = WeiClient(zk_settings.hosts, SERVICE, rng=random.Random(members),
                           config=ClientConfig(timeout_s=CALL_TIMEOUT_S))
        made.append(client)
        client._watcher.wait_for(lambda s: len(s.routable(SERVICE)) == members and all(
            r.state is State.SERVING for r in s.routable(SERVICE)), timeout=WAIT_S)
        return client

    yield make
    for client in made:
        client.close()


def start_oip_pods(mlserver_pod, oip_agent) -> list[tuple[MLServerPod, OipAgent]]:
    """Both MLServer pods at once (their starts overlap), each with its agent."""
    with ThreadPoolExecutor(len(OIP)) as pool:
        pods = list(pool.map(lambda who: mlserver_pod(who=who), OIP))
    return [(pod, oip_agent(pod, f"mls-{pod.spec.who}")) for pod in pods]


def test_a_mixed_fleet_of_mlserver_and_wei_serve_pods(mlserver_pod, oip_agent, weiserve_cluster, clients):
    oip_pods = start_oip_pods(mlserver_pod, oip_agent)
    addresses = {pod.spec.who: pod.address for pod, _ in oip_pods}

    # 1. only the MLServer pods: a caller's mistake over OIP is the caller's, and no pod's fault
    try:
        only_oip = clients(len(OIP))
    except TimeoutError:
        raise AssertionError("\n".join(f"{agent!r}:\n{agent.log_tail()}" for _, agent in oip_pods)) from None
    records = only_oip.snapshot.routable(SERVICE)
    assert {(r.id, r.protocol, r.state, r.endpoint) for r in records} == {
        (f"mls-{who}", Protocol.OIP, State.SERVING, address) for who, address in addresses.items()}
    assert all(r.models == {"ctr": (1,), "ctr_b": (1,)} for r in records)
    retries = counted("weiclient_retries", only_oip)
    for what, bad in MISTAKES.items():
        for _ in range(3):
            with pytest.raises(InvalidInput, match="'x'") as err:
                only_oip.predict(SERVICE, {"x": bad})
            assert err.value.code == "INVALID_ARGUMENT" and err.value.endpoint in addresses.values(), what
    assert counted("weiclient_retries", only_oip) == retries      # raised at once, on the first pod
    assert_unharmed(only_oip)
    x = rows(3, random.Random(0))
    assert check(only_oip.predict(SERVICE, {"x": x}), x) in OIP

    # 2. the wei-serve pods join at the agents' weight; a client over the four
    weight = max(r.weight for r in records)
    assert weight > 0
    for _ in WEI:
        weiserve_cluster.add(weight=weight)
    client = clients(len(WEI) + len(OIP))
    kinds = {who: Protocol.OIP if who in OIP else Protocol.WEISERVING for who in (*WEI, *OIP)}
    address_of = {**addresses, **{p.index: f"127.0.0.1:{p.server.port}" for p in weiserve_cluster.pods}}
    who_at = {a: who for who, a in address_of.items()}
    assert {r.endpoint: r.protocol for r in client.snapshot.routable(SERVICE)} == {
        address_of[who]: kinds[who] for who in kinds}
    refused_by: dict[Protocol, set[type]] = {Protocol.OIP: set(), Protocol.WEISERVING: set()}
    for bad in MISTAKES.values():
        for _ in range(128):                 # until each kind of pod has refused it (P2C picks at random)
            with pytest.raises(InvalidInput) as err:
                client.predict(SERVICE, {"x": bad})
            refused_by[kinds[who_at[err.value.endpoint]]].add(type(err.value))
            if all(refused_by.values()):
                break
    assert refused_by == {Protocol.OIP: {InvalidInput}, Protocol.WEISERVING: {InvalidInput}}
    assert_unharmed(client)

    # 3. 200 calls over both kinds: 160 from 4 threads, 40 apredict at once
    loop = Loop()
    loads: list[Load] = []
    try:
        load = Load(client, 4, calls=40, seed=100)
        loads.append(load)

        async def async_calls() -> list[int]:
            rng = random.Random(7)
            xs = [rows(rng.randint(1, 4), rng) for _ in range(40)]
            outs = await asyncio.gather(*(client.apredict(SERVICE, {"x": x}, version=None if i % 2 else 1)
                                          for i, x in enumerate(xs)))
            return [check(out, x) for out, x in zip(outs, xs, strict=True)]

        answered = Counter(loop.run(async_calls())) + load.join()
        assert not load.errors, load.errors[:5]
        assert sum(answered.values()) == 200 and set(answered) == set(kinds), answered
        by_kind = {k.value: sum(n for who, n in answered.items() if kinds[who] is k) for k in refused_by}
        print(f"\n200 calls answered by pod {dict(sorted(answered.items()))}, by kind {by_kind}")

        # 4. 2,000 rows: in one call (to either kind), and split over the four pods in order
        x = rows(2000, random.Random(2000))
        whole: set[Protocol] = set()
        for _ in range(128):                 # until each kind has answered one (P2C picks at random)
            whole.add(kinds[check(client.predict(SERVICE, {"x": x}), x)])
            if len(whole) == 2:
                break
        assert whole == {Protocol.OIP, Protocol.WEISERVING}
        out = client.predict(SERVICE, {"x": x}, split=True)
        np.testing.assert_array_equal(out["y"], x * 2 + 1)
        assert set(out["who"].tolist()) == set(kinds)
        out = loop.run(client.apredict(SERVICE, {"x": x}, split=True))
        np.testing.assert_array_equal(out["y"], x * 2 + 1)

        # 5. SIGKILL an MLServer pod under load: no caller error; its agent drains it; then the other three
        victim, _ = oip_pods[0]
        victim_id = f"mls-{victim.spec.who}"
        gone = threading.Event()

        def on_membership(snap: MembershipSnapshot) -> None:  # runs after the client's own update
            rec = snap.get(victim_id)
            if rec is None or not rec.routable:
                gone.set()

        client._watcher.subscribe(on_membership)
        load = Load(client, 4, seed=200)
        loads.append(load)
        load.wait_for(lambda a: a[victim.spec.who] >= 5, "the victim in rotation")
        victim.kill()
        assert gone.wait(WAIT_S), f"{victim_id} still routable: {client.snapshot.get(victim_id)}"
        after = load.total
        load.wait_for(lambda a: sum(a.values()) >= after + 40, "40 more answers after the victim left")
        killed_run = load.stop()
        assert load.errors == []
        failed = sum(counted("weiclient_attempts", client, endpoint=victim.address, code=code)
                     for code in ("UNAVAILABLE", "CANCELLED_BY_SERVER"))
        assert failed > 0                   # calls went to it after the kill, and were retried elsewhere
        tried = counted("weiclient_attempts", client, endpoint=victim.address)
        rest = Load(client, 3, calls=20, seed=300)
        loads.append(rest)
        later = rest.join()
        assert not rest.errors and sum(later.values()) == 60, rest.errors[:5]
        assert set(later) <= set(kinds) - {victim.spec.who}, later
        assert counted("weiclient_attempts", client, endpoint=victim.address) == tried  # never picked again
        print(f"kill: {sum(killed_run.values())} calls under load {dict(sorted(killed_run.items()))}, "
              f"{failed:g} attempts failed on the victim and were retried; then {dict(sorted(later.items()))}")
    finally:
        for load in loads:
            load.cancel()
        loop.run(client.aclose())
        loop.close()
