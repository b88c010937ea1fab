"""Zone affinity: local while the zone has capacity for its share, spill in proportion, panic, no zone info."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from registry.membership import snapshot_from_records
from registry.records import Capacity, InstanceRecord, State
from weiclient.balancer import Balancer, Locality, SubsetConfig, Subsetter, ZoneConfig, build_policy
from weiclient.balancer.zones import zone_plan
from weiclient.errors import InvalidBalancerConfig


def rec(i: int, zone: str, weight: float = 100.0, **kw) -> InstanceRecord:
    base = dict(service="ctr", id=f"{zone or 'x'}-{i:02d}", address="10.0.0.1", port=9000 + i, weight=weight,
                capacity=Capacity(samples_per_s=100.0), state=State.SERVING, zone=zone, models={"ctr": [1]})
    base.update(kw)
    return InstanceRecord(**base)


def fleet(up: dict[str, int], size: int = 10) -> list[InstanceRecord]:
    """``size`` pods per zone; the first ``size - up[zone]`` of a zone drain (their capacity stays registered)."""
    out = []
    for zone, n_up in up.items():
        for i in range(size):
            r = rec(i, zone)
            out.append(r if i >= size - n_up else r.with_changes(state=State.DRAINING, enabled=False, weight=0.0))
    return out


CASES = [
    # (pods up per zone, client zone, demand, expected shares)
    ({"a": 10, "b": 10, "c": 10}, "a", None, {"a": 1.0}),                  # every zone whole: all local
    ({"a": 10, "b": 10, "c": 10}, "a", {"a": 1, "b": 1, "c": 2}, {"a": 1.0}),  # more capacity than demand
    ({"a": 6, "b": 10, "c": 10}, "a", None, {"a": 9 / 13, "b": 2 / 13, "c": 2 / 13}),  # 6/26 of capacity for 1/3
    ({"a": 6, "b": 10, "c": 10}, "b", None, {"b": 1.0}),                  # the zones with room stay local
    ({"a": 6, "b": 10, "c": 8}, "a", None, {"a": 0.75, "b": 0.25}),        # spill only where there is room
    ({"a": 0, "b": 10, "c": 10}, "a", None, {"b": 0.5, "c": 0.5}),         # nothing local: all spills
    ({"a": 10, "b": 10, "c": 10}, "a", {"a": 2, "b": 1, "c": 1}, {"a": 2 / 3, "b": 1 / 6, "c": 1 / 6}),
]


@pytest.mark.parametrize("up, local, demand, shares", CASES)
def test_local_while_the_zone_has_capacity_for_its_share_else_spill_in_proportion(up, local, demand, shares):
    plan = zone_plan(local, fleet(up), ZoneConfig(demand=demand))
    assert plan is not None and plan.local == local
    assert dict(plan.shares) == pytest.approx(shares)


@pytest.mark.parametrize("up, local, records_zone, config", [
    ({"a": 4, "b": 4, "c": 4}, "a", True, ZoneConfig()),                         # 40 % of the fleet up: panic
    ({"a": 10, "b": 10, "c": 10}, None, True, ZoneConfig()),                     # the client's zone unknown
    ({"a": 10, "b": 10, "c": 10}, "q", True, ZoneConfig()),                      # no pod in the client's zone
    ({"a": 10, "b": 10, "c": 10}, "a", False, ZoneConfig()),                     # pods carry no zone
    ({"a": 10, "b": 10, "c": 10}, "a", True, ZoneConfig(enabled=False)),
])
def test_zones_are_ignored_in_panic_or_without_zone_information(up, local, records_zone, config):
    recs = fleet(up) if records_zone else [r.with_changes(zone="") for r in fleet(up)]
    assert zone_plan(local, recs, config) is None


def test_panic_threshold_is_a_knob():
    assert zone_plan("a", fleet({"a": 4, "b": 4, "c": 4}), ZoneConfig(panic_threshold=0.3)) is not None


def balancer(recs, zone: str, seed: int = 3, subset: Subsetter | None = None) -> Balancer:
    b = Balancer(build_policy(), rng=random.Random(seed), locality=Locality(zone=zone), subset=subset)
    b.update(snapshot_from_records("ctr", recs, version=1), now=0.0)
    return b


def test_a_client_with_room_in_its_zone_picks_only_there():
    b = balancer(fleet({"a": 10, "b": 10, "c": 10}), "b")
    assert Counter(b.pick("ctr", now=1.0).record.zone for _ in range(2000)) == {"b": 2000}
    assert b.stats(1.0).zone_plan.startswith("b: 33.3% of capacity")


def test_picks_spill_as_the_plan_says():
    b = balancer(fleet({"a": 6, "b": 10, "c": 10}), "a")
    zones = Counter(b.pick("ctr", now=1.0).record.zone for _ in range(20_000))
    assert zones["a"] / 20_000 == pytest.approx(9 / 13, abs=0.02)  # (6/26) / (1/3) stays
    assert zones["b"] / 20_000 == pytest.approx(2 / 13, abs=0.015)
    shares = Counter()
    for ep, s in b.shares("ctr", now=1.0).items():
        shares[ep.record.zone] += s
    assert dict(shares) == pytest.approx({"a": 9 / 13, "b": 2 / 13, "c": 2 / 13})


def test_a_retry_leaves_the_zone_when_every_local_endpoint_was_tried():
    b = balancer(fleet({"a": 10, "b": 10, "c": 10}), "a")
    local = [ep for ep in b.candidates.endpoints if ep.record.zone == "a"]
    assert b.pick("ctr", exclude=local, now=1.0).record.zone in {"b", "c"}


def test_ejected_local_endpoints_send_calls_elsewhere():
    b = balancer(fleet({"a": 10, "b": 10, "c": 10}), "a")
    for ep in b.candidates.endpoints:
        if ep.record.zone == "a":
            ep.state.ejected_until = 100.0
    b._epoch += 1  # what an ejection does (tables out of date)
    assert {b.pick("ctr", now=1.0).record.zone for _ in range(200)} <= {"b", "c"}


def test_a_model_hosted_only_in_other_zones_is_routed_there():
    recs = [r.with_changes(models={"ctr": [1], "lr": [1]}) if r.zone == "c" else r
            for r in fleet({"a": 10, "b": 10, "c": 10})]
    b = balancer(recs, "a")
    assert {b.pick("lr", now=1.0).record.zone for _ in range(100)} == {"c"}


def test_with_zones_the_subset_is_k_per_zone():
    sub = Subsetter(config=SubsetConfig(min_size=4), client_id="c1", zone="a")
    b = balancer(fleet({"a": 10, "b": 10, "c": 10}), "a", subset=sub)
    assert Counter(ep.record.zone for ep in b.candidates.endpoints) == {"a": 4, "b": 4, "c": 4}
    assert {b.pick("ctr", now=1.0).record.zone for _ in range(200)} == {"a"}


@pytest.mark.parametrize("kw", [dict(panic_threshold=1.5), dict(demand={}), dict(demand={"a": -1.0}),
                                dict(demand={"a": 0.0}), dict(enabled=1)])
def test_bad_zone_config_says_what_was_expected(kw):
    with pytest.raises(InvalidBalancerConfig, match="expected"):
        ZoneConfig(**kw)
