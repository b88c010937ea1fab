"""Registry and API input hardening (issue 10, part 4, and part 8's constructor wait).

Real ZooKeeper, real model servers: any number of clients in one process,
extreme weights, nothing but a WeiClientError out of ``predict``, and a
constructor that fails releases what it opened.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading

import numpy as np
import pytest
from prometheus_client import REGISTRY

from registry._loop import WatchLoop
from weiclient import ClientConfig, WeiClient
from weiclient.balancer.candidates import MAX_WEIGHT
from weiclient.errors import InternalError, InvalidArgument, InvalidInput, RegistryUnavailable, WeiClientError
from weiclient.metrics import live_clients


def x(rows: int) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)


@pytest.fixture
def clients(zk_settings):
    made: list[WeiClient] = []

    def make(service: str = "ctr", **config) -> WeiClient:
        c = WeiClient(zk_settings.hosts, service, config=ClientConfig(**config))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def endpoint_gauges(name: str = "weiclient_endpoint_in_flight") -> list[dict[str, str]]:
    return [s.labels for m in REGISTRY.collect() if m.name == name for s in m.samples]


def requests_of(client: WeiClient) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "weiclient_requests" for s in m.samples
               if s.labels.get("client") == client._metrics.name and s.name.endswith("_total"))


# -- two clients in one process ---------------------------------------------------------------------------

def test_clients_for_two_services_and_two_for_one_live_in_one_process(cluster, clients):
    """Before: the second WeiClient raised DuplicateTimeseries (metrics=True is the default)."""
    cluster.add()
    ctr = clients("ctr")
    cvr = clients("cvr")   # a service with no pods yet: still a client
    ctr2 = clients("ctr")  # a second client for the same service
    names = {ctr._metrics.name, cvr._metrics.name, ctr2._metrics.name}
    assert len(names) == 3 and names <= live_clients()
    before = [requests_of(c) for c in (ctr, ctr2, cvr)]  # a label outlives its client: counters go on
    for c in (ctr, ctr2):
        c._watcher.wait_for(lambda s: len(s.routable()) == 1)
        assert c.predict("ctr", {"x": x(1)})["y"].shape == (1, 3)
    assert [requests_of(c) - b for c, b in zip((ctr, ctr2, cvr), before, strict=True)] == [1, 1, 0]
    gauges = endpoint_gauges()
    assert {(g["service"], g["client"]) for g in gauges} >= {("ctr", ctr._metrics.name),
                                                             ("ctr", ctr2._metrics.name)}
    assert len(gauges) == len({tuple(sorted(g.items())) for g in gauges})  # no duplicate series

    ctr2.close()  # frees its label and its gauges; the next client takes the label
    assert ctr2._metrics.name not in live_clients()
    assert all(g["client"] != ctr2._metrics.name for g in endpoint_gauges())
    ctr3 = clients("ctr")
    assert ctr3._metrics.name == ctr2._metrics.name
    ctr3._watcher.wait_for(lambda s: len(s.routable()) == 1)
    assert ctr3.predict("ctr", {"x": x(1)})["y"].shape == (1, 3)


# -- extreme weights ----------------------------------------------------------------------------------------

def test_pods_at_weight_1e308_are_clamped_and_served(cluster, clients):
    """Before: every predict raised OverflowError (math.fsum over the weights)."""
    cluster.add(weight=1e308)
    cluster.add(weight=1e308)
    client = clients()
    client._watcher.wait_for(lambda s: len(s.routable()) == 2)
    served = {int(client.predict("ctr", {"x": x(1)})["who"][0]) for _ in range(40)}
    assert served == {0, 1}
    weights = [e.published_weight for e in client.stats().balancer.endpoints]
    assert weights == [MAX_WEIGHT, MAX_WEIGHT] and math.isfinite(sum(weights))


# -- nothing but a WeiClientError out of predict -----------------------------------------------------------

BAD_CALLS = [
    ({"inputs": "str"}, "inputs: expected a non-empty mapping of name -> array, got str"),
    ({"inputs": {"x": [[1.0, 2.0, 3.0], [1.0, 2.0]]}}, "input 'x': expected an array (every row of the same shape)"),
    ({"inputs": {1: x(1)}}, "inputs: expected input names as str"),
    ({"inputs": {"x": object()}}, "object arrays cannot be sent"),
    ({"timeout": "1"}, "timeout: expected seconds as a finite number > 0, or None, got str"),
    ({"timeout": float("nan")}, "timeout: expected seconds"),
    ({"timeout": -1}, "timeout: expected seconds"),
    ({"timeout": True}, "timeout: expected seconds"),
    ({"model": 3}, "model: expected a non-empty model name (str), got int"),
    ({"model": ""}, "model: expected a non-empty model name"),
    ({"outputs": "y"}, "outputs: expected a list of output names (str), or None, got str"),
    ({"split": "yes"}, "split: expected True, False or None"),
    ({"version": 1.5}, "version: expected a non-negative int or None"),
    ({"key": 3.5}, "key: expected str, bytes or int"),
]


@pytest.mark.parametrize(("bad", "says"), BAD_CALLS, ids=[s.split(":")[0] + str(i) for i, (_, s) in
                                                         enumerate(BAD_CALLS)])
def test_a_bad_argument_is_invalid_input_saying_what_was_expected(cluster, clients, bad, says):
    """Before: AttributeError (inputs="str"), ValueError (ragged lists), TypeError (timeout="1")."""
    cluster.add()
    client = clients()
    client._watcher.wait_for(lambda s: len(s.routable()) == 1)
    call = {"model": "ctr", "inputs": {"x": x(1)}, **bad}
    model, inputs = call.pop("model"), call.pop("inputs")
    with pytest.raises(InvalidInput) as e:
        client.predict(model, inputs, **call)
    assert says in str(e.value)
    with pytest.raises(InvalidInput, match="expected|cannot"):
        asyncio.run(client.apredict(model, inputs, **call))
    assert client.predict("ctr", {"x": x(1)})["y"].shape == (1, 3)  # and the client is fine


@pytest.mark.parametrize(("models", "says"), [
    (["ctr"], "models: expected a non-empty mapping of model name -> version"),
    ({}, "models: expected a non-empty mapping"),
    ({3: None}, "models: expected a non-empty model name"),
    ({"ctr": "1"}, "version: expected a non-negative int or None"),
])
def test_predict_many_refuses_bad_models_the_same_way(cluster, clients, models, says):
    cluster.add()
    client = clients()
    client._watcher.wait_for(lambda s: len(s.routable()) == 1)
    with pytest.raises(InvalidInput) as e:
        client.predict_many(models, {"x": x(1)})
    assert says in str(e.value)


def test_an_unexpected_exception_inside_a_call_is_an_internal_error(cluster, clients):
    """The safety net: a bug below predict (injected here) reaches the caller as a WeiClientError."""
    cluster.add()
    client = clients()
    client._watcher.wait_for(lambda s: len(s.routable()) == 1)

    def broken(plan):
        raise KeyError("a bug")

    client._transport.call = broken
    with pytest.raises(InternalError) as e:
        client.predict("ctr", {"x": x(1)})
    assert isinstance(e.value.__cause__, KeyError) and "KeyError" in str(e.value)


# -- the constructor: checks first, one deadline, releases what it opened on failure -------------------------

def started_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive after a join (each joined, no sleeping)."""
    new = [t for t in threading.enumerate() if t not in before]
    for t in new:
        t.join(timeout=15)
    return [t for t in new if t.is_alive()]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"service": "a/b"}, "service"),
    ({"service": ""}, "service"),
    ({"service": None}, "service"),
    ({"root": "relative"}, "root"),
    ({"zk": None}, "zk"),
    ({"zk": "host:notaport"}, "zk"),
    ({"config": {"timeout_s": 1}}, "config"),
])
def test_a_bad_constructor_argument_is_invalid_argument_and_opens_nothing(zk_settings, kwargs, field):
    """Before: WeiClient(zk, "a/b") raised the registry's RecordError, after opening a session."""
    call = {"zk": zk_settings.hosts, "service": "ctr", **kwargs}
    before = set(threading.enumerate())
    with pytest.raises(InvalidArgument) as e:
        WeiClient(call.pop("zk"), call.pop("service"), **call)
    assert e.value.field == field and "expected" in str(e.value)
    assert not [t for t in threading.enumerate() if t not in before]


def unreachable() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed


def test_zookeeper_unreachable_fails_after_one_start_timeout_and_releases_everything(monkeypatch):
    """Before: the constructor waited start_timeout_s twice (membership, then config) and returned a
    client that could not route. Now one deadline covers both waits; without a membership it raises
    RegistryUnavailable and closes its session and threads."""
    hosts = unreachable()
    waits: list[float | None] = []
    wait_for = WatchLoop.wait_for

    def recording(self, predicate, timeout=10.0):
        waits.append(timeout)
        return wait_for(self, predicate, timeout)

    monkeypatch.setattr(WatchLoop, "wait_for", recording)
    labels = live_clients()
    before = set(threading.enumerate())
    with pytest.raises(RegistryUnavailable) as e:
        WeiClient(hosts, "ctr", config=ClientConfig(start_timeout_s=1.0))
    assert isinstance(e.value, WeiClientError)
    assert hosts in str(e.value) and "start_timeout_s" in str(e.value)
    assert waits and sum(w for w in waits if w is not None) <= 1.0, waits
    assert started_since(before) == []  # the session's and the watchers' threads all ended
    assert live_clients() == labels     # its metrics label was released


def test_zookeeper_unreachable_with_a_snapshot_file_still_starts_from_the_file(cluster, zk_settings, tmp_path):
    """The one case a client starts without ZooKeeper: it routes on the members it saved."""
    cluster.add()
    path = tmp_path / "members.json"
    with WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(snapshot_file=path)) as first:
        first._watcher.wait_for(lambda s: len(s.routable()) == 1)
    # close() joined the watcher thread, which wrote the file
    with WeiClient(unreachable(), "ctr", config=ClientConfig(snapshot_file=path, start_timeout_s=1.0)) as client:
        assert client.snapshot.source == "file"
        assert client.predict("ctr", {"x": x(1)})["y"].shape == (1, 3)
