"""Load faults: an overload burst from another caller, and a poisoned batch.

The burst is sheddable work at twice the fleet's capacity from a second WeiClient (another ranking
service), open-loop for 3 s: the servers refuse what they cannot finish in time, the burst's
callers get fast refusals (Overloaded, Throttled) rather than late failures, the steady caller
(default priority) sees at most fast refusals during the burst, and none from 2 s after it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import numpy as np
from fault_cluster import FEATURES, MODEL, POISON, ROOT, SERVICE, UNIT_S

from weiclient import ClientConfig, WeiClient
from weiclient.errors import InvalidInput, WeiClientError

BURST_S = 3.0
BURST_ROWS = 1000


async def burst(cluster, rate: float) -> Counter[str]:
    """Open-loop sheddable calls of BURST_ROWS rows at ``rate`` per second for BURST_S; outcome counts."""
    x = np.ones((BURST_ROWS, FEATURES), np.float32)
    outcomes: Counter[str] = Counter()
    async with WeiClient(cluster.hosts, SERVICE, root=ROOT, config=ClientConfig(timeout_s=1.0)) as other:
        async def one() -> None:
            try:
                await other.apredict(MODEL, {"x": x}, priority="sheddable")
                outcomes["ok"] += 1
            except WeiClientError as e:
                outcomes[type(e).__name__] += 1

        loop = asyncio.get_running_loop()
        start, tasks = loop.time(), []
        for i in range(int(rate * BURST_S)):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    return outcomes


def test_overload_burst(cluster, steady, record):
    load = steady()
    capacity_rows_s = len(cluster.pods) / UNIT_S          # speed 1: 5,000 rows/s a pod
    t0 = time.monotonic()
    outcomes = asyncio.run(burst(cluster, rate=2 * capacity_rows_s / BURST_ROWS))
    t1 = time.monotonic()                                 # the load is back to normal
    load.succeeded(150)                                   # > 2 s of steady calls after it
    late = [c for c in load.since(t1) if not c.ok]
    last = max((c.started for c in load.since(t0) if not c.ok), default=None)
    recovery = 0.0 if last is None or last < t1 else last - t1
    errors = load.errors(t0)
    record(len(load.since(t0)), errors, recovery, "from the burst's end until the steady caller's last error",
           burst=", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    assert outcomes["ok"] > 0, outcomes                   # the fleet kept doing useful work
    # Refusals, fast; admission predicts from the measured pace, and on two shared cores a call
    # it admitted may still miss its deadline now and then: at most 5 % of the burst.
    assert set(outcomes) <= {"ok", "Overloaded", "Throttled", "DeadlineExceeded"}, outcomes
    assert outcomes["DeadlineExceeded"] <= 0.05 * sum(outcomes.values()), outcomes
    assert not [c for c in late if c.started >= t1 + 2.0], load.errors_seen
    assert set(errors) <= {"Overloaded", "Throttled"}, load.errors_seen


def test_poisoned_batch(cluster, steady, record):
    """A call holding a poisoned row is batched with innocent ones: it alone fails, with the model's
    INVALID_ARGUMENT (not retried: the caller's mistake), and no pod is ejected or marked unhealthy."""
    load = steady()
    client = load.client
    ejected = {e.instance_id: e.times_ejected for e in client.stats().balancer.endpoints}
    rounds, group = 5, 8
    culprits: Counter[str] = Counter()
    innocents: Counter[str] = Counter()
    t0 = time.monotonic()
    for _ in range(rounds):                               # each round: 1 poisoned + 7 innocent, at once
        gate = threading.Barrier(group)

        def call(poisoned: bool) -> None:
            x = np.ones((4, FEATURES), np.float32)
            if poisoned:
                x[2, 1] = POISON
            gate.wait(10)
            try:
                client.predict(MODEL, {"x": x})
                outcome = "ok"
            except InvalidInput as e:
                outcome = "InvalidInput" if "poisoned row" in str(e) else f"InvalidInput: {e}"
            except WeiClientError as e:
                outcome = f"{type(e).__name__}: {e}"
            (culprits if poisoned else innocents)[outcome] += 1

        threads = [threading.Thread(target=call, args=(i == 0,)) for i in range(group)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    load.succeeded(30)
    after = client.stats().balancer.endpoints
    errors = load.errors(t0) + Counter({k: v for k, v in innocents.items() if k != "ok"})
    record(len(load.since(t0)) + rounds * group, errors + Counter({f"culprits {k}": v for k, v in culprits.items()}),
           None, "nothing to recover: only the culprits failed")
    assert culprits == {"InvalidInput": rounds}, culprits
    assert innocents == {"ok": rounds * (group - 1)}, innocents
    assert not errors, load.errors_seen
    assert {e.instance_id: e.times_ejected for e in after} == ejected
    assert all(e.consecutive_failures == 0 and e.health == 1.0 for e in after), after
