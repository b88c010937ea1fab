"""WeiClient over a mixed fleet: pods whose record says ``oip`` get OIP ModelInfer, the others msgpack.

Real ZooKeeper, real wei-serve servers on port 0 (wei-serve speaks both
protocols on its port, so a record decides which one the client uses), and
tiny real gRPC servers that serve only ``inference.GRPCInferenceService/ModelInfer``
the way a third-party server would (no load report, no retry-after), to
refuse, to answer garbage, or to answer without our trailers.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from concurrent import futures

import grpc
import numpy as np
import pytest
from client_metrics import counted

from protocol import oip, wire
from protocol.oip.infer import decode_infer_request, encode_infer_response
from registry.publisher import Publisher
from registry.records import InstanceRecord, Protocol, State
from weiclient import ClientConfig, OverloadConfig, WeiClient
from weiclient.config import HedgingConfig
from weiclient.errors import (
    InvalidInput,
    ModelNotFound,
    NoEndpointAvailable,
    RequestFailed,
    Unavailable,
)

OIP, WEI = Protocol.OIP, Protocol.WEISERVING
LONG = OverloadConfig(default_retry_after_s=30.0, max_retry_after_s=30.0)  # outlasts any test


def x(rows: int) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)


@pytest.fixture
def client_for(zk_settings):
    clients = []

    def make(members: int, *, seed: int = 1, **config) -> WeiClient:
        config.setdefault("timeout_s", 5.0)
        c = WeiClient(zk_settings.hosts, "ctr", rng=random.Random(seed), config=ClientConfig(**config))
        clients.append(c)
        c._watcher.wait_for(lambda s: len(s.routable()) == members)
        return c

    yield make
    for c in clients:
        c.close()


def served(pod, model: str = "ctr", code: str = "OK") -> float:
    """The wei-serve's own count of calls (either protocol)."""
    return pod.server.metrics.registry.get_sample_value("weiserving_requests_total",
                                                        {"model": model, "code": code}) or 0.0


def address(pod) -> str:
    return f"127.0.0.1:{pod.server.port}"


def row(client: WeiClient, instance_id: str):
    return next(e for e in client.stats().balancer.endpoints if e.instance_id == instance_id)


def who(out) -> int:
    return int(out["who"][0])


class OipPod:
    """A real gRPC server with only OIP ModelInfer, answering ``respond(request, context)``, registered
    as ``oip``; it records each call's ``wei-priority`` (None when absent)."""

    def __init__(self, zk, name: str, respond, models=("ctr",)) -> None:
        self.id = name
        self.priorities: list[str | None] = []
        self._lock = threading.Lock()

        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.priorities.append(dict(context.invocation_metadata()).get(wire.PRIORITY_KEY))
            return respond(request, context)

        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(oip.SERVICE, {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(handler)})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"
        self.publisher = Publisher(zk, InstanceRecord(
            service="ctr", id=name, address="127.0.0.1", port=self.port, weight=1.0, state=State.SERVING,
            models={m: [1] for m in models}, protocol=OIP))
        assert self.publisher.register()

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.priorities)

    def close(self) -> None:
        self.publisher.close(deregister=False)
        self.server.stop(0)


@pytest.fixture
def oip_pod(zk):
    pods: list[OipPod] = []

    def add(name: str, respond, models=("ctr",)) -> OipPod:
        pod = OipPod(zk, name, respond, models)
        pods.append(pod)
        return pod

    yield add
    for pod in pods:
        pod.close()


def third_party(request: bytes, context: grpc.ServicerContext) -> bytes:
    """What the test model computes (y = 2x + 1, who = 100), with no trailers at all."""
    req = decode_infer_request(request)
    rows = len(req.inputs["x"])
    return encode_infer_response(req.model, 1, {"y": req.inputs["x"] * 2 + 1, "who": np.full(rows, 100),
                                                "ver": np.ones(rows, np.int64)})


def refusing(retry_after_ms: int | None):
    def respond(request: bytes, context: grpc.ServicerContext) -> bytes:
        if retry_after_ms is not None:
            context.set_trailing_metadata(((wire.RETRY_AFTER_KEY, str(retry_after_ms)),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded: queue full")
        raise AssertionError("abort raises")
    return respond


# -- a mixed fleet ---------------------------------------------------------------------------------

def test_a_mixed_fleet_answers_alike_and_spreads_calls_over_both_protocols(cluster, client_for):
    pods = [cluster.add(protocol=p) for p in (OIP, WEI, OIP, WEI)]
    client = client_for(4)
    plans = []
    call = client._transport.call
    client._transport.call = lambda plan: plans.append(plan) or call(plan)  # see each plan after its call
    before = {p.index: counted("weiclient_attempts", client, endpoint=address(p), code="OK") for p in pods}
    whos = []
    for i in range(1, 201):
        out = client.predict("ctr", {"x": x(i % 5 + 1)}, version=None if i % 2 else 1)
        np.testing.assert_array_equal(out["y"], x(i % 5 + 1) * 2 + 1)
        assert out["ver"].tolist() == [1] * (i % 5 + 1)
        whos.append(who(out))
    answered = Counter(whos)
    assert set(answered) == {0, 1, 2, 3} and min(answered.values()) >= 20, answered
    for p in pods:  # the client's count of answers per endpoint is the server's
        assert counted("weiclient_attempts", client, endpoint=address(p), code="OK") - before[p.index] \
            == served(p) == answered[p.index]
    # the OIP body was built for the calls that went to an OIP pod, and for no other
    assert [p.oip.encoded for p in plans] == [w in (0, 2) for w in whos]
    assert set(client.predict("ctr", {"x": x(2)}, outputs=["y"])) == {"y"}  # outputs asked for, either way


def test_a_split_call_spans_both_protocols_in_order(cluster, client_for):
    for p in (OIP, WEI, OIP, WEI):
        cluster.add(protocol=p)
    client = client_for(4)
    out = client.predict("ctr", {"x": x(2000)}, split=True)
    np.testing.assert_array_equal(out["y"], x(2000) * 2 + 1)
    served_by = out["who"].tolist()
    assert set(served_by) == {0, 1, 2, 3}
    assert sum(1 for a, b in zip(served_by, served_by[1:], strict=False) if a != b) == 3  # contiguous shards

    async def main():
        try:
            return await client.apredict("ctr", {"x": x(1100)}, split=True)  # 4 shards of >= 256 rows
        finally:
            await client.aclose()

    out = asyncio.run(main())
    np.testing.assert_array_equal(out["y"], x(1100) * 2 + 1)
    assert set(out["who"].tolist()) == {0, 1, 2, 3}


def test_apredict_retries_and_hedges_over_oip_pods(cluster, client_for):
    cluster.add(weight=9.0, protocol=WEI)
    cluster.add(weight=1.0, delay_s=0.1, protocol=OIP)
    dead = cluster.add(weight=1.0, protocol=OIP)
    client = client_for(3, balancer="random", hedging=HedgingConfig(enabled=True, percentile=0.5, budget_ratio=0.5))
    client._balancer._rng.seed(2)
    dead.kill()  # still registered: its calls fail UNAVAILABLE and are retried elsewhere
    retries = counted("weiclient_retries", client)
    hedges = counted("weiclient_hedges", client, outcome="backup_won")

    async def main() -> Counter:
        try:
            for _ in range(64):  # latency samples for the hedge delay (and a few retries)
                await client.apredict("ctr", {"x": x(1)})
            assert client._transport.latency.delay is not None
            answered: Counter = Counter()
            for _ in range(100):
                out = await client.apredict("ctr", {"x": x(2)})
                np.testing.assert_array_equal(out["y"], x(2) * 2 + 1)
                answered[who(out)] += 1
            return answered
        finally:
            await client.aclose()

    answered = asyncio.run(main())
    assert answered[1] == 0 and answered[2] == 0, answered  # the slow OIP pod's calls were won by the hedge
    assert counted("weiclient_retries", client, code="UNAVAILABLE") > 0 and counted("weiclient_retries", client) > \
        retries
    assert counted("weiclient_hedges", client, outcome="backup_won") > hedges
    assert all(e.in_flight == 0 for e in client.stats().balancer.endpoints)  # the losers' slots were released


@pytest.mark.parametrize("slow", [OIP, WEI], ids=["slow_oip", "slow_weiserving"])
def test_a_hedge_crosses_protocols_and_cancels_the_loser(cluster, client_for, slow):
    cluster.add(weight=9.0, protocol=WEI if slow is OIP else OIP)
    cluster.add(weight=1.0, delay_s=0.1, protocol=slow)
    client = client_for(2, balancer="random", hedging=HedgingConfig(enabled=True, percentile=0.5, budget_ratio=0.5))
    client._balancer._rng.seed(1)
    for _ in range(64):  # latency samples for the hedge delay
        client.predict("ctr", {"x": x(1)})
    hedges = counted("weiclient_hedges", client, outcome="backup_won")
    answered = Counter(who(client.predict("ctr", {"x": x(1)})) for _ in range(100))
    assert answered[1] == 0, answered
    assert counted("weiclient_hedges", client, outcome="backup_won") > hedges
    assert all(e.in_flight == 0 for e in client.stats().balancer.endpoints)


# -- failures: the caller's, the pod's, an overload, a bad answer --------------------------------------

@pytest.mark.parametrize("protocol", [OIP, WEI])
def test_a_callers_mistake_is_the_same_error_on_both_protocols_and_neutral_for_the_pod(cluster, client_for,
                                                                                       protocol):
    pod = cluster.add(protocol=protocol)
    cluster.add(protocol=protocol)
    client = client_for(2)
    pod.publisher.update(models={"ctr": [1], "ctr_b": [1], "ghost": [1]})  # a model its server does not have
    client._watcher.wait_for(lambda s: "ghost" in s.get("pod-0").models)
    retries = counted("weiclient_retries", client)
    with pytest.raises(InvalidInput, match="x") as shape:
        client.predict("ctr", {"x": np.zeros((2, 5), np.float32)})
    with pytest.raises(InvalidInput, match="x") as dtype:
        client.predict("ctr", {"x": np.zeros((2, 3), np.float64)})
    with pytest.raises(ModelNotFound, match="ghost") as ghost:
        client.predict("ghost", {"x": x(1)})
    assert (shape.value.code, dtype.value.code, ghost.value.code) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT",
                                                                      "NOT_FOUND")
    assert ghost.value.endpoint == address(pod)
    assert counted("weiclient_retries", client) == retries  # raised at once
    for e in client.stats().balancer.endpoints:
        assert (e.consecutive_failures, e.health, e.ejected_for_s) == (0, 1.0, 0.0)
    assert client.predict("ctr", {"x": x(1)})["y"].shape == (1, 3)


def test_an_oip_pod_killed_mid_run_costs_no_caller_error(cluster, client_for):
    pods = [cluster.add(protocol=p) for p in (OIP, OIP, WEI)]
    client = client_for(3)
    errors: list[Exception] = []
    done = Counter()
    halfway = threading.Event()

    def calls() -> None:
        for i in range(150):
            try:
                client.predict("ctr", {"x": x(2)})
                done["ok"] += 1
            except Exception as e:  # noqa: BLE001 - any error is a failure of the test
                errors.append(e)
            if i == 30:
                halfway.set()

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for t in threads:
        t.start()
    halfway.wait(30)
    pods[0].kill()  # calls in flight on it, and more picked for it until it is ejected
    for t in threads:
        t.join(60)
    assert errors == [] and done["ok"] == 600
    dead = row(client, "pod-0")
    assert dead.ejected_for_s > 0 or dead.consecutive_failures > 0
    failed = sum(counted("weiclient_attempts", client, endpoint=address(pods[0]), code=code)
                 for code in ("UNAVAILABLE", "CANCELLED_BY_SERVER"))  # refused, or cut while in flight
    assert failed > 0


@pytest.mark.parametrize(("hint_ms", "avoided_s"), [(20_000, (10.0, 20.0)), (None, (20.0, 30.0))],
                         ids=["wei-serve_hint", "third_party_no_hint"])
def test_an_overload_refusal_over_oip_is_neutral_and_followed(cluster, client_for, oip_pod, hint_ms, avoided_s):
    busy = oip_pod("busy", refusing(hint_ms))
    cluster.add(protocol=WEI)
    client = client_for(2, balancer="round_robin", overload=LONG)
    for _ in range(20):
        np.testing.assert_array_equal(client.predict("ctr", {"x": x(2)})["y"], x(2) * 2 + 1)
    assert busy.calls == 1  # refused once, then left alone for its retry-after
    r = row(client, "busy")
    assert (r.consecutive_failures, r.health, r.ejected_for_s, r.times_ejected) == (0, 1.0, 0.0, 0)
    assert avoided_s[0] < r.refused_for_s <= avoided_s[1]
    assert counted("weiclient_overload_refusals", client, endpoint=busy.address) == 1


@pytest.mark.parametrize("answer", [
    b"\x08\xff\xff garbage",
    encode_infer_response("not_ctr", 1, {"y": x(1)}),
], ids=["garbage", "another_model"])
def test_a_malformed_oip_answer_is_malformed_and_retried_elsewhere(cluster, client_for, oip_pod, answer):
    bad = oip_pod("bad", lambda request, context: answer, models=("ctr", "solo"))
    cluster.add(protocol=WEI)
    client = client_for(2, balancer="round_robin")
    with pytest.raises(RequestFailed) as e:  # only the bad pod hosts it
        client.predict("solo", {"x": x(1)})
    assert [a.code for a in e.value.attempts] == ["MALFORMED_RESPONSE"]
    for _ in range(6):  # the bad pod's answers are retried on the good one, until it is ejected
        np.testing.assert_array_equal(client.predict("ctr", {"x": x(1)})["y"], x(1) * 2 + 1)
    assert counted("weiclient_attempts", client, endpoint=bad.address, code="MALFORMED_RESPONSE") == bad.calls > 1
    assert row(client, "bad").consecutive_failures > 0 or row(client, "bad").ejected_for_s > 0  # blamed


# -- what OIP has and has not -------------------------------------------------------------------------

def test_a_third_party_pod_sends_no_report_and_takes_its_share(cluster, client_for, oip_pod):
    oip_pod("triton", third_party)
    cluster.add(protocol=WEI)
    client = client_for(2)  # the default policy, p2c_jsed
    answered = Counter(who(client.predict("ctr", {"x": x(4)})) for _ in range(200))
    assert set(answered) == {0, 100} and min(answered.values()) >= 50, answered
    states = {ep.instance_id: ep.state for ep in client._balancer.candidates.view("ctr").endpoints}
    assert states["triton"].report is None and states["pod-0"].report is not None
    assert states["triton"].latency_s > 0  # its own measurements stand in for a report


def test_priority_is_sent_on_every_oip_call(client_for, oip_pod):
    pod = oip_pod("only", third_party)
    client = client_for(1)
    for priority in ("critical", "sheddable", "default"):
        client.predict("ctr", {"x": x(1)}, priority=priority)
    asyncio.run(client.apredict("ctr", {"x": x(1)}, priority="critical"))
    assert pod.priorities == ["critical", "sheddable", None, "critical"]


def test_predict_many_goes_to_weiserving_pods_or_says_why_not(cluster, client_for):
    cluster.add(protocol=OIP, models=("ctr", "ctr_b", "ctr_c"))
    cluster.add(protocol=WEI, models=("ctr", "ctr_b"))
    cluster.add(protocol=OIP, models=("ctr", "ctr_b"))
    client = client_for(3)
    for _ in range(20):
        many = client.predict_many({"ctr": None, "ctr_b": 1}, {"x": x(2)})
        assert who(many["ctr"]) == who(many["ctr_b"]) == 1
    with pytest.raises(NoEndpointAvailable) as e:
        client.predict_many({"ctr": None, "ctr_c": None}, {"x": x(1)})
    assert e.value.why is Unavailable.NO_MULTI_MODEL and "pod-0" in e.value.detail
    assert who(client.predict("ctr_c", {"x": x(1)})) == 0  # one model at a time, over OIP
