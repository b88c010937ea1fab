"""WeiClient against real ZooKeeper and real model servers (gRPC on port 0)."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
from prometheus_client import REGISTRY

from registry.service_config import BalancerSpec, ConfigStore, ServiceConfig
from registry.testing import ZooKeeperEnsemble
from registry.zk import ZkSettings, connect
from weiclient import ClientConfig, WeiClient
from weiclient.config import ChannelConfig, RetryConfig
from weiclient.errors import (
    DeadlineExceeded,
    InvalidInput,
    NoEndpointAvailable,
    RequestFailed,
    Unavailable,
)


def x(rows: int) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)


@pytest.fixture
def client_for(zk_settings):
    clients = []

    def make(**config) -> WeiClient:
        c = WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(**config))
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def wait_members(client: WeiClient, n: int) -> None:
    client._watcher.wait_for(lambda s: len(s.routable()) == n)


def who(client: WeiClient, calls: int, **kw) -> Counter:
    counts: Counter = Counter()
    for _ in range(calls):
        counts[int(client.predict("ctr", {"x": x(1)}, **kw)["who"][0])] += 1
    return counts


def retries(service: str = "ctr") -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "weiclient_retries"
               for s in m.samples if s.labels.get("service") == service and s.name.endswith("_total"))


def test_predict_many_and_async_twins(cluster, client_for):
    cluster.add()
    cluster.add()
    client = client_for()
    wait_members(client, 2)
    out = client.predict("ctr", {"x": x(4)})
    np.testing.assert_array_equal(out["y"], x(4) * 2 + 1)
    assert not out["y"].flags.writeable  # zero-copy views of the reply
    many = client.predict_many({"ctr": None, "ctr_b": 1}, {"x": x(2)})
    assert set(many) == {"ctr", "ctr_b"} and many["ctr_b"]["ver"].tolist() == [1, 1]

    async def main():
        one = await client.apredict("ctr", {"x": x(3)}, outputs=["y"])
        both = await client.apredict_many({"ctr": None, "ctr_b": None}, {"x": x(3)})
        return one, both

    one, both = asyncio.run(main())
    assert set(one) == {"y"} and both["ctr"]["y"].shape == (3, 3)
    stats = client.stats()
    assert stats.members == 2 and stats.balancer.policy == "p2c_jsed"
    assert 1 <= len(stats.channels) <= 2  # the pods the two blocking calls went to (idle and equal: either)


def test_weight_change_shifts_traffic(cluster, client_for):
    """A weight published in ZooKeeper reaches the balancer. Weighted random keeps
    the shares free of latency noise (P2C's steering is covered by the pure tests)."""
    pods = [cluster.add(weight=1.0), cluster.add(weight=1.0)]
    client = client_for(balancer="random")
    wait_members(client, 2)
    before = who(client, 400)
    assert 0.4 < before[0] / 400 < 0.6, before
    pods[0].publisher.update(weight=4.0)
    client._watcher.wait_for(lambda s: s.get("pod-0").weight == 4.0)
    after = who(client, 400)
    assert 0.72 < after[0] / 400 < 0.88, after


def test_killed_server_causes_no_caller_visible_error(cluster, client_for):
    pods = [cluster.add() for _ in range(3)]
    client = client_for()
    wait_members(client, 3)
    who(client, 30)
    pods[1].kill()  # still registered: its session has not expired
    counts = who(client, 300)  # raises if any call fails
    assert sum(counts.values()) == 300
    eps = {e.instance_id: e for e in client.stats().balancer.endpoints}
    assert eps["pod-1"].ejected_for_s > 0 or eps["pod-1"].consecutive_failures > 0


def test_all_instances_down_says_what_was_tried(cluster, client_for):
    pods = [cluster.add(), cluster.add()]
    client = client_for(retry=RetryConfig(max_attempts=3))
    wait_members(client, 2)
    for p in pods:
        p.kill()
    with pytest.raises(RequestFailed) as e:
        client.predict("ctr", {"x": x(1)})
    assert e.value.code == "UNAVAILABLE" and len(e.value.attempts) == 2
    assert {a.endpoint for a in e.value.attempts} == {f"127.0.0.1:{p.server.port}" for p in pods}
    assert "no other instance to retry on" in str(e.value)


def test_caller_errors_are_raised_at_once_without_retries(cluster, client_for):
    cluster.add()
    cluster.add()
    client = client_for()
    wait_members(client, 2)
    before = retries()
    with pytest.raises(InvalidInput, match="x") as e:
        client.predict("ctr", {"x": np.zeros((2, 5), np.float32)})  # wrong shape
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(InvalidInput, match="object arrays"):
        client.predict("ctr", {"x": np.array([object()])})
    with pytest.raises(InvalidInput, match="key"):
        client.predict("ctr", {"x": x(1)}, key=3.5)
    with pytest.raises(NoEndpointAvailable) as nf:
        client.predict("nope", {"x": x(1)})
    assert nf.value.why is Unavailable.NOT_HOSTED
    with pytest.raises(NoEndpointAvailable):
        client.predict("ctr", {"x": x(1)}, version=99)
    assert retries() == before
    assert client.predict("ctr", {"x": x(1)})["y"].shape == (1, 3)  # and the client is fine


def test_version_split_follows_the_service_config(cluster, client_for, zk):
    cluster.add(versions=(1, 2))
    cluster.add(versions=(1, 2))
    client = client_for()
    wait_members(client, 2)
    store = ConfigStore(zk)
    store.set_split("ctr", "ctr", {1: 80, 2: 20})
    client._config_watcher.wait_for(lambda s: s.present)
    versions = Counter(int(client.predict("ctr", {"x": x(1)})["ver"][0]) for _ in range(500))
    assert 0.12 < versions[2] / 500 < 0.28, versions
    store.set_split("ctr", "ctr", {1: 0, 2: 100})
    client._config_watcher.wait_for(lambda s: s.config.splits["ctr"][2] == 100.0)
    assert {int(client.predict("ctr", {"x": x(1)})["ver"][0]) for _ in range(50)} == {2}
    # a sticky key always gets the same version
    store.set_split("ctr", "ctr", {1: 50, 2: 50})
    client._config_watcher.wait_for(lambda s: s.config.splits["ctr"][2] == 50.0)
    assert len({int(client.predict("ctr", {"x": x(1)}, key="user-42")["ver"][0]) for _ in range(20)}) == 1


def test_balancer_policy_follows_the_service_config(cluster, client_for, zk):
    cluster.add()
    client = client_for()
    wait_members(client, 1)
    ConfigStore(zk).set("ctr", ServiceConfig(balancer=BalancerSpec(policy="round_robin")))
    client._config_watcher.wait_for(lambda s: s.present)
    assert client.stats().balancer.policy == "round_robin"
    assert client.predict("ctr", {"x": x(1)})["y"].shape == (1, 3)


def test_scatter_gather_keeps_order_across_instances(cluster, client_for):
    for w in (1.0, 2.0, 1.0):
        cluster.add(weight=w)
    client = client_for()
    wait_members(client, 3)
    rows = 2000
    out = client.predict("ctr", {"x": x(rows)}, split=True)
    np.testing.assert_array_equal(out["y"], x(rows) * 2 + 1)
    served = out["who"].tolist()
    assert len(set(served)) == 3
    # contiguous blocks, in the order of the shards
    assert sum(1 for a, b in zip(served, served[1:], strict=False) if a != b) == 2


def test_the_balancer_counts_each_calls_rows(cluster, client_for):
    """Load is counted in rows: every call (scattered shards, predict_many, asyncio) starts and
    ends its attempts with its batch size, and nothing is left in flight after."""
    for _ in range(2):
        cluster.add()
    client = client_for(balancer="least_outstanding")
    wait_members(client, 2)
    bal = client._balancer
    costs: list[tuple[str, float]] = []

    def recording(method, kind):
        def wrapped(ep, now, *args, cost=1.0, **kw):
            costs.append((kind, cost))
            return method(ep, now, *args, cost=cost, **kw)
        return wrapped

    bal.on_start = recording(bal.on_start, "start")
    bal.on_finish = recording(bal.on_finish, "end")
    client.predict("ctr", {"x": x(37)})
    client.predict_many({"ctr": None, "ctr_b": None}, {"x": x(5)})
    asyncio.run(client.apredict("ctr", {"x": x(11)}))
    client.predict("ctr", {"x": x(600)}, split=True)  # two shards of at least 256 rows
    assert costs[:6] == [("start", 37), ("end", 37), ("start", 5), ("end", 5), ("start", 11), ("end", 11)]
    shards = sorted(c for kind, c in costs[6:] if kind == "start")
    assert sum(shards) == 600 and len(shards) == 2 and sorted(c for k, c in costs[6:] if k == "end") == shards
    stats = client.stats().balancer
    assert (stats.in_flight, stats.in_flight_rows) == (0, 0.0)


def test_deadline_is_never_exceeded_by_retries(cluster, client_for):
    cluster.add(delay_s=0.5)
    client = client_for()
    wait_members(client, 1)
    with pytest.raises(DeadlineExceeded) as e:
        client.predict("ctr", {"x": x(1)}, timeout=0.1)
    assert e.value.attempts[-1].code == "DEADLINE_EXCEEDED" and len(e.value.attempts) == 1


@pytest.fixture
def own_zk():
    with ZooKeeperEnsemble(1) as zk:
        yield zk


def test_zookeeper_stopped_client_keeps_serving(own_zk, tmp_path, cluster_cls):
    admin = connect(ZkSettings(hosts=own_zk.hosts, session_timeout_s=4.0))
    cluster = cluster_cls(admin, tmp_path)
    cluster.add()
    cluster.add()
    client = WeiClient(own_zk.hosts, "ctr", config=ClientConfig(zk_session_timeout_s=4.0))
    try:
        wait_members(client, 2)
        own_zk.stop_all_members()
        client._watcher.wait_for(lambda s: s.stale, timeout=30)
        assert sum(who(client, 100).values()) == 100  # no ZooKeeper I/O on the request path
        assert client.stats().stale and client.stats().staleness_s >= 0
    finally:
        client.close()
        cluster.close()
        admin.stop()
        admin.close()


def test_closed_client_refuses_calls(cluster, client_for):
    from weiclient.errors import ClientClosed

    cluster.add()
    client = client_for(channel=ChannelConfig(close_grace_s=1.0))
    wait_members(client, 1)
    client.close()
    client.close()
    with pytest.raises(ClientClosed):
        client.predict("ctr", {"x": x(1)})


def test_hedging_answers_from_the_fast_instance_and_cancels_the_loser(cluster, client_for):

    from weiclient.config import HedgingConfig

    cluster.add(weight=9.0)
    cluster.add(weight=1.0, delay_s=0.1)
    client = client_for(balancer="random", hedging=HedgingConfig(enabled=True, percentile=0.5, budget_ratio=0.5),
                        timeout_s=2.0)
    client._rng.seed(1)
    client._balancer._rng.seed(1)
    wait_members(client, 2)
    who(client, 64)  # latency samples for the hedge delay
    assert client._transport.latency.delay is not None
    hedges_before = _hedges("backup_won")
    answered = who(client, 100)
    assert answered[1] == 0, answered  # every call that went to the slow pod was won by the hedge
    assert _hedges("backup_won") > hedges_before
    eps = {e.instance_id: e for e in client.stats().balancer.endpoints}
    assert eps["pod-1"].in_flight == 0 and eps["pod-0"].in_flight == 0


def _hedges(outcome: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "weiclient_hedges" for s in m.samples
               if s.labels.get("outcome") == outcome and s.name.endswith("_total"))


def test_asyncio_retries_and_hedges_like_the_sync_driver(cluster, client_for):
    from weiclient.config import HedgingConfig

    cluster.add(weight=9.0)
    cluster.add(weight=1.0, delay_s=0.1)
    dead = cluster.add(weight=1.0)
    client = client_for(balancer="random", hedging=HedgingConfig(enabled=True, percentile=0.5, budget_ratio=0.5),
                        timeout_s=2.0)
    client._rng.seed(2)
    client._balancer._rng.seed(2)
    wait_members(client, 3)
    dead.kill()  # still registered: calls to it fail UNAVAILABLE and are retried elsewhere

    async def main() -> Counter:
        for _ in range(64):  # latency samples for the hedge delay (and a few retries)
            await client.apredict("ctr", {"x": x(1)})
        assert client._transport.latency.delay is not None
        counts: Counter = Counter()
        for _ in range(100):
            counts[int((await client.apredict("ctr", {"x": x(1)}))["who"][0])] += 1
        await client.aclose()
        return counts

    hedges_before, retries_before = _hedges("backup_won"), retries()
    answered = asyncio.run(main())
    assert answered[1] == 0 and answered[2] == 0, answered
    assert _hedges("backup_won") > hedges_before and retries() > retries_before
    eps = {e.instance_id: e for e in client.stats().balancer.endpoints}
    assert all(e.in_flight == 0 for e in eps.values()), eps
