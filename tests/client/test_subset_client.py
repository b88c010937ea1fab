"""WeiClient over a subset, on a real ZooKeeper and real servers: calls, channels and watches stay in it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from registry.watcher import MembershipWatcher
from weiclient import ClientConfig, WeiClient
from weiclient.balancer import SubsetConfig, Subsetter


def x(rows: int) -> np.ndarray:
    return np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)


def client_outside(zk_settings, pod_id: str, n: int, size: int = 2) -> WeiClient:
    """A client whose subset of ``size`` lacks ``pod_id`` (the rule is pure: find such an id first)."""
    probe = WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(metrics=False))
    try:
        probe._watcher.wait_for(lambda s: len(s.routable()) == n)
        records = list(probe.snapshot.instances.values())
    finally:
        probe.close()
    for i in range(1000):
        cfg = SubsetConfig(min_size=size, client_id=f"client-{i}")
        if pod_id not in Subsetter(config=cfg, client_id=cfg.client_id).choose(records, size):
            return WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(subset=cfg, metrics=False))
    raise AssertionError("no client id leaves the pod out")  # pragma: no cover


@pytest.fixture
def five_pods(cluster):
    for _ in range(4):
        cluster.add(versions=(1,))
    cluster.add(versions=(1, 2))  # pod-4: the only one with version 2
    return cluster


def test_calls_and_channels_stay_in_the_subset_and_an_unhosted_version_reaches_its_pod(five_pods, zk_settings):
    client = client_outside(zk_settings, "pod-4", 5)
    try:
        subset = {ep.instance_id for ep in client._balancer.candidates.endpoints}
        assert len(subset) == 2 and "pod-4" not in subset
        answered = {f"pod-{int(client.predict('ctr', {'x': x(1)}, version=1)['who'][0])}" for _ in range(40)}
        assert answered <= subset
        ports = {five_pods.pods[int(i.split('-')[1])].server.port for i in subset}
        assert {int(a.rsplit(":", 1)[1]) for a in client.stats().channels} == ports  # no channel beyond it
        assert int(client.predict("ctr", {"x": x(1)}, version=2)["who"][0]) == 4  # the fallback
        assert client.stats().balancer.subset_size == 2 and client.stats().balancer.members == 5
    finally:
        client.close()


@pytest.mark.skipif("watch_filter" not in inspect.signature(MembershipWatcher).parameters,
                    reason="registry.watcher takes no watch_filter yet (issue 11, part 2)")
def test_data_watches_are_kept_on_the_subset_only(five_pods, zk_settings):
    client = client_outside(zk_settings, "pod-4", 5)
    try:
        subset = {ep.instance_id for ep in client._balancer.candidates.endpoints}
        client._watcher.wait_for(lambda s: client._watcher.watched == subset, timeout=10)
        assert len(client.snapshot) == 5  # every member is still known
    finally:
        client.close()
