"""Overload without collapse, the client's side (issue 10, part 1): real ZooKeeper, real gRPC.

A refusing pod is a real gRPC server on port 0 that answers Predict the way
an overloaded server does (RESOURCE_EXHAUSTED with ``wei-retry-after-ms`` in
its trailing metadata, or an old server's "batch queue full" without it),
registered in ZooKeeper beside real model servers.
"""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from client_metrics import counted

from protocol import wire
from registry.publisher import Publisher
from registry.records import InstanceRecord, State
from weiclient import ClientConfig, OverloadConfig, ScatterConfig, ThrottleConfig, WeiClient
from weiclient.errors import InvalidInput, Overloaded, RequestFailed, Throttled

NO_THROTTLE = ThrottleConfig(enabled=False)
LONG = OverloadConfig(default_retry_after_s=30.0, max_retry_after_s=30.0)  # outlasts any test


def x(rows: int, first: float = 1.0) -> np.ndarray:
    out = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    out[0, 0] = first
    return out


class RawPod:
    """A real gRPC server answering Predict with ``respond(request, context)``; it records every
    call's ``wei-priority`` (None when absent) and counts calls."""

    def __init__(self, zk, index: int, respond) -> None:
        self.priorities: list[str | None] = []
        self.lock = threading.Lock()
        self._respond = respond

        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.priorities.append(dict(context.invocation_metadata()).get(wire.PRIORITY_KEY))
            return self._respond(request, context)

        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(wire.SERVICE, {
            "Predict": grpc.unary_unary_rpc_method_handler(handler)})])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.id = f"raw-{index}"
        self.publisher = Publisher(zk, InstanceRecord(service="ctr", id=self.id, address="127.0.0.1", port=port,
                                                      weight=1.0, state=State.SERVING, models={"ctr": [1]}))
        assert self.publisher.register()

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.priorities)

    def close(self) -> None:
        self.publisher.close(deregister=False)
        self.server.stop(0)


def refusing(retry_after_ms: int | None, message: str = "overloaded: expected queue wait over the deadline"):
    def respond(request: bytes, context: grpc.ServicerContext) -> bytes:
        if retry_after_ms is not None:
            context.set_trailing_metadata(((wire.RETRY_AFTER_KEY, str(retry_after_ms)),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        raise AssertionError("abort raises")
    return respond


def answering(request: bytes, context: grpc.ServicerContext) -> bytes:
    """y = x; x[0, 0] == 0 is a pod failure (UNAVAILABLE), x[0, 0] == -1 a caller's mistake."""
    x_in = wire.decode_request(request).inputs["x"]
    if x_in[0, 0] == 0:
        context.abort(grpc.StatusCode.UNAVAILABLE, "the backend is down")
    if x_in[0, 0] == -1:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "x: expected values >= 0")
    return wire.encode_response(wire.PredictResponse(results={"ctr": wire.ModelResult(version=1, outputs={"y": x_in})}))


@pytest.fixture
def raw(zk):
    pods: list[RawPod] = []

    def add(respond) -> RawPod:
        pod = RawPod(zk, len(pods), respond)
        pods.append(pod)
        return pod

    yield add
    for pod in pods:
        pod.close()


@pytest.fixture
def client(zk_settings):
    made: list[WeiClient] = []

    def make(n_pods: int, *, policy: str = "round_robin", seed: int = 1, **config) -> WeiClient:
        config.setdefault("timeout_s", 10.0)
        c = WeiClient(zk_settings.hosts, "ctr", rng=random.Random(seed),
                      config=ClientConfig(balancer=policy, **config))
        made.append(c)
        c._watcher.wait_for(lambda s: len(s.routable()) == n_pods)
        return c

    yield make
    for c in made:
        c.close()


def endpoint_row(client: WeiClient, instance_id: str):
    return next(e for e in client.stats().balancer.endpoints if e.instance_id == instance_id)


# -- a refusal is a signal ------------------------------------------------------------------------------

def test_a_refusing_pod_is_left_for_its_retry_after_and_never_charged(raw, client):
    """Round robin would send it every other call; after one refusal it gets none, every call is
    answered (the one refused at once elsewhere) and the pod is neither ejected nor less healthy.
    Before: each refusal was a failure, the pod was ejected after five."""
    busy = raw(refusing(retry_after_ms=20_000))
    raw(answering)
    c = client(2, overload=LONG, throttle=NO_THROTTLE)
    retries_before = counted("weiclient_retries", c, code="RESOURCE_EXHAUSTED")  # a label outlives its client
    for _ in range(20):
        np.testing.assert_array_equal(c.predict("ctr", {"x": x(2)})["y"], x(2))
    assert busy.calls == 1
    row = endpoint_row(c, busy.id)
    assert (row.consecutive_failures, row.health, row.ejected_for_s, row.times_ejected) == (0, 1.0, 0.0, 0)
    assert row.refused_for_s > 0
    assert counted("weiclient_overload_refusals", c, endpoint=row.address) == 1
    assert counted("weiclient_retries", c, code="RESOURCE_EXHAUSTED") - retries_before <= 1  # the one refused


def test_an_old_servers_queue_full_without_a_hint_is_overload_with_the_default_back_off(raw, client):
    old = raw(refusing(None, "batch queue full: 8 rows queued + 1 requested > 8"))
    raw(answering)
    c = client(2, overload=LONG, throttle=NO_THROTTLE)
    for _ in range(10):
        c.predict("ctr", {"x": x(1)})
    assert old.calls == 1 and endpoint_row(c, old.id).consecutive_failures == 0


def test_every_pod_refusing_fails_fast_as_overloaded_with_the_soonest_retry_after(raw, client):
    """Hints over half the time left: no wait round (tests/unit/test_overload_signal.py has it)."""
    a, b = raw(refusing(retry_after_ms=300)), raw(refusing(retry_after_ms=400))
    c = client(2, throttle=NO_THROTTLE, timeout_s=0.5)
    with pytest.raises(Overloaded) as e:
        c.predict("ctr", {"x": x(1)})
    assert type(e.value) is Overloaded and isinstance(e.value, RequestFailed)
    assert [t.code for t in e.value.attempts] == ["RESOURCE_EXHAUSTED"] * 2 and (a.calls, b.calls) == (1, 1)
    assert e.value.retry_after_s == pytest.approx(0.3)


def test_every_pod_refusing_with_a_short_hint_is_tried_again_once_after_it(raw, client):
    a, b = raw(refusing(retry_after_ms=20)), raw(refusing(retry_after_ms=30))
    c = client(2, throttle=NO_THROTTLE)
    with pytest.raises(Overloaded) as e:
        c.predict("ctr", {"x": x(1)})
    assert len(e.value.attempts) == 4 and (a.calls, b.calls) == (2, 2)
    assert all(r.consecutive_failures == 0 for r in c.stats().balancer.endpoints)


def test_a_callers_mistake_does_not_clear_a_sick_pods_failures(raw, client):
    """Before: INVALID_ARGUMENT was recorded as a success and reset the run of failures."""
    pod = raw(answering)
    c = client(1, throttle=NO_THROTTLE)
    for _ in range(3):
        with pytest.raises(RequestFailed):
            c.predict("ctr", {"x": x(1, first=0.0)})
    with pytest.raises(InvalidInput):
        c.predict("ctr", {"x": x(1, first=-1.0)})
    assert endpoint_row(c, pod.id).consecutive_failures == 3
    c.predict("ctr", {"x": x(1)})
    assert endpoint_row(c, pod.id).consecutive_failures == 0  # an answer still clears it


# -- priority ---------------------------------------------------------------------------------------------

def test_priority_travels_as_metadata_on_every_path(raw, client):
    """``default`` is sent as no header (the protocol's same thing), the others by name."""
    pods = [raw(answering), raw(answering)]
    c = client(2, throttle=NO_THROTTLE, scatter=ScatterConfig(min_shard_rows=2))
    c.predict("ctr", {"x": x(2)}, priority="sheddable")
    c.predict("ctr", {"x": x(2)})
    c.predict_many({"ctr": None}, {"x": x(2)}, priority="critical")
    np.testing.assert_array_equal(c.predict("ctr", {"x": x(4)}, split=True, priority="critical")["y"], x(4))
    assert [p.priorities[-1] for p in pods] == ["critical", "critical"]  # a shard to each pod

    async def main() -> None:
        try:
            await c.apredict("ctr", {"x": x(2)}, priority="sheddable")
            await c.apredict_many({"ctr": None}, {"x": x(2)}, priority="critical")
            await c.apredict("ctr", {"x": x(2)}, priority="default")
        finally:
            await c.aclose()

    asyncio.run(main())
    sent = sorted((p for pod in pods for p in pod.priorities), key=str)
    assert sent == sorted(["sheddable", None, "critical", "critical", "critical", "sheddable", "critical", None],
                          key=str)


@pytest.mark.parametrize("bad", ["low", "", "Critical", None, 2])
def test_a_wrong_priority_is_invalid_input_naming_the_valid_ones_and_nothing_is_sent(raw, client, bad):
    pod = raw(answering)
    c = client(1)
    with pytest.raises(InvalidInput, match="priority: expected one of sheddable, default, critical"):
        c.predict("ctr", {"x": x(1)}, priority=bad)
    with pytest.raises(InvalidInput, match="priority"):
        c.predict_many({"ctr": None}, {"x": x(1)}, priority=bad)
    assert pod.calls == 0


# -- adaptive throttling -----------------------------------------------------------------------------------

def test_throttling_rejects_locally_sheddable_first_and_never_critical(raw, client):
    """A fleet that refuses everything: soon most calls are rejected here, without a byte sent;
    a critical call still reaches the pod every time. (A hint over half the time left: one
    attempt per call, no wait round.)"""
    pod = raw(refusing(retry_after_ms=600))
    c = client(1, seed=3, timeout_s=1.0)
    outcomes = {"sent": 0, "throttled": 0}
    for _ in range(60):
        before = pod.calls
        try:
            c.predict("ctr", {"x": x(1)}, priority="sheddable")
        except Throttled as e:
            assert pod.calls == before and e.attempts == () and e.priority == "sheddable"
            assert "nothing sent" in str(e) and 0 < e.probability < 1
            outcomes["throttled"] += 1
        except Overloaded:
            assert pod.calls == before + 1
            outcomes["sent"] += 1
    assert outcomes["throttled"] > outcomes["sent"] > 0
    assert counted("weiclient_throttled", c, priority="sheddable") == outcomes["throttled"]
    assert counted("weiclient_requests", c, outcome="Throttled") == outcomes["throttled"]

    before = pod.calls
    for _ in range(10):
        with pytest.raises(Overloaded) as e:
            c.predict("ctr", {"x": x(1)}, priority="critical")
        assert type(e.value) is Overloaded
    assert pod.calls == before + 10


def test_throttling_off_sends_every_call(raw, client):
    pod = raw(refusing(retry_after_ms=600))
    c = client(1, throttle=NO_THROTTLE, timeout_s=1.0)
    for _ in range(30):
        with pytest.raises(Overloaded) as e:
            c.predict("ctr", {"x": x(1)}, priority="sheddable")
        assert type(e.value) is Overloaded
    assert pod.calls == 30
