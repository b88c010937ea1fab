"""The client's fleet-scale shell: its zone, its watch filter, and a subset that follows its load (fake clock)."""

from __future__ import annotations

import random

import pytest

from registry.membership import snapshot_from_records
from registry.records import Capacity, InstanceRecord, State
from weiclient.config import ClientConfig, SubsetConfig, ZoneConfig
from weiclient.errors import InvalidBalancerConfig
from weiclient.fleet import Fleet


def rec(i: int, zone: str = "z1") -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i:03d}", address="10.0.0.1", port=9000 + i, weight=1000.0,
                          capacity=Capacity(samples_per_s=1000.0), state=State.SERVING, zone=zone,
                          models={"ctr": [1]})


RECORDS = [rec(i, zone=f"z{i % 3 + 1}") for i in range(300)]
SNAP = snapshot_from_records("ctr", RECORDS, version=1)


def fleet(environ=None, **cfg) -> Fleet:
    return Fleet(ClientConfig(metrics=False, **cfg), random.Random(1), environ=environ or {})


@pytest.mark.parametrize("config_zone, env, zone", [
    ("z2", {"WEI_ZONE": "z3"}, "z2"),   # the config wins
    (None, {"WEI_ZONE": "z3"}, "z3"),
    (None, {"WEI_ZONE": "  "}, None),
    (None, {}, None),
])
def test_the_zone_comes_from_the_config_else_from_wei_zone(config_zone, env, zone):
    f = fleet(env, zone=config_zone)
    assert f.zone == zone
    assert (f.locality is not None) == (zone is not None)
    assert f.subsetter is not None and f.subsetter.zone == zone


def test_zones_off_keeps_the_zone_but_ignores_it():
    f = fleet(zone="z1", zones=ZoneConfig(enabled=False))
    assert f.locality is None and f.subsetter.zone is None


def test_the_watch_filter_names_the_balancers_subset():
    f = fleet(zone="z1", subset=SubsetConfig(min_size=10))
    b = f.balancer(None, rng=random.Random(2), service="ctr")
    b.update(SNAP, 0.0)
    watch = f.watch_filter(lambda: b)
    ids = set(watch(SNAP.instances))
    assert len(ids) == 30 and ids == {ep.instance_id for ep in b.candidates.endpoints}  # 10 per zone


def test_no_watch_filter_without_subsetting():
    f = fleet(subset=SubsetConfig(enabled=False))
    assert f.watch_filter(lambda: None) is None and f.watcher_options(lambda: None) == {}
    b = f.balancer(None, rng=random.Random(2), service="ctr")
    b.update(SNAP, 0.0)
    assert len(b.candidates.endpoints) == 300 and b.stats(0.0).subset_size is None


def test_the_subset_grows_with_the_clients_peak_and_shrinks_back_after_the_window():
    f = fleet(subset=SubsetConfig(min_size=10, pod_share=0.01, peak_window_s=10.0))
    b = f.balancer(None, rng=random.Random(2), service="ctr")
    b.update(SNAP, 0.0)
    assert not f.resize(b, RECORDS, now=1.0)
    for t in range(5):  # 250 rows/s: 250 / (1 % of 1,000) = 25 pods
        f.record(250, now=10.0 + t + 0.5)
    assert f.resize(b, RECORDS, now=15.0) and b.subset_size == 25 and len(b.candidates.endpoints) == 25
    f.record(150, now=20.5)   # the burst left the window at 24.9: 15 wanted, more than half of 25, kept
    assert not f.resize(b, RECORDS, now=24.9) and b.subset_size == 25
    assert f.resize(b, RECORDS, now=40.0) and b.subset_size == 10  # idle for a window: the minimum


def test_refilter_asks_the_watcher_again_when_it_can():
    asked = []

    class Watcher:
        def set_watch_filter(self, f):
            asked.append(f)

    f = fleet()
    watch = f.watch_filter(lambda: None)
    f.refilter(Watcher())
    f.refilter(object())  # a watcher without the method: nothing to do
    from weiclient import fleet as module
    assert asked == ([watch] if module._WATCHER_TAKES_FILTER else [])


@pytest.mark.parametrize("kw", [dict(zone=""), dict(zone=3), dict(subset={"min_size": 3}), dict(zones=None)])
def test_bad_fleet_config_says_what_was_expected(kw):
    with pytest.raises(InvalidBalancerConfig, match="expected"):
        ClientConfig(**kw)
