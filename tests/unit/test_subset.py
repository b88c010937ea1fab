"""Subsetting: evenness, weights, churn, size, and the fallback for versions no subset member hosts."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from registry.membership import snapshot_from_records
from registry.records import Capacity, InstanceRecord, State
from weiclient.balancer import Balancer, RateMeter, SubsetConfig, Subsetter, build_policy
from weiclient.balancer.subset import aperture, id_hash, next_size, pod_capacity, rendezvous, subset_size
from weiclient.errors import InvalidBalancerConfig, NoEndpointAvailable, Unavailable


def rec(i: int, weight: float = 1.0, **kw) -> InstanceRecord:
    base = dict(service="ctr", id=f"p{i:03d}", address="10.0.0.1", port=9000 + i, weight=weight,
                state=State.SERVING, models={"ctr": [1]})
    base.update(kw)
    return InstanceRecord(**base)


def subsetter(client: int | str, size: int = 10, **kw) -> Subsetter:
    return Subsetter(config=SubsetConfig(min_size=size, **kw), client_id=f"c{client}")


def subsetted(recs, client: int = 0, size: int = 10, seed: int = 1) -> Balancer:
    b = Balancer(build_policy(), rng=random.Random(seed), subset=subsetter(client, size))
    b.update(snapshot_from_records("ctr", recs, version=1), now=0.0)
    return b


FLEET = [rec(i) for i in range(100)]


def test_a_fleet_no_larger_than_the_subset_is_routed_over_whole():
    small = FLEET[:10]
    assert set(subsetter(1).choose(small, 10)) == {r.id for r in small}
    assert len(subsetted(small).candidates.endpoints) == 10
    assert subset_size(SubsetConfig(min_size=10), 0.0, None) == 10


def test_the_subset_is_k_routable_members_and_the_same_for_the_same_client():
    draining = [r.with_changes(state=State.DRAINING) if i % 2 else r for i, r in enumerate(FLEET)]
    a = subsetter(7).choose(draining, 10)
    assert len(a) == 10 and all(int(i[1:]) % 2 == 0 for i in a)  # only routable members are eligible
    assert a == subsetter(7).choose(list(reversed(draining)), 10)  # order of records is irrelevant
    assert a != subsetter(8).choose(draining, 10)


def test_every_pod_is_in_about_the_same_number_of_subsets():
    counts = Counter(i for c in range(2000) for i in rendezvous(hash_of(c), [r.id for r in FLEET], 10))
    per_pod = [counts[r.id] for r in FLEET]
    assert len(per_pod) == 100 and min(per_pod) > 0
    assert max(per_pod) / statistics.fmean(per_pod) < 1.3  # binomial(2000, 0.1): sd 7 %, the max ~1.2


def hash_of(c: int) -> int:
    from weiclient.balancer.subset import id_hash
    return id_hash(f"c{c}")


def test_a_4x_pod_carries_4x_the_load_across_all_subsets():
    fleet = [rec(i, weight=4.0 if i % 4 == 0 else 1.0) for i in range(80)]
    snap = snapshot_from_records("ctr", fleet, version=1)
    load: Counter = Counter()
    for c in range(1500):
        b = Balancer(build_policy(), rng=random.Random(c), subset=subsetter(c, 16))
        b.update(snap, 0.0)
        for ep, share in b.shares("ctr", now=1.0).items():
            load[ep.instance_id] += share
    big = statistics.fmean(load[r.id] for r in fleet if r.weight == 4.0)
    small = statistics.fmean(load[r.id] for r in fleet if r.weight == 1.0)
    assert 3.6 < big / small < 4.4  # membership is uniform, the weight acts inside each subset


@pytest.mark.parametrize("change", ["leave", "join"])
def test_one_pod_joining_or_leaving_moves_few_clients_by_one_pod(change):
    after = FLEET[1:] if change == "leave" else [*FLEET, rec(500)]
    moved = []
    for c in range(1000):
        s = subsetter(c)
        a, b = set(s.choose(FLEET, 10)), set(s.choose(after, 10))
        if a != b:
            moved.append(len(b - a))
    assert 0.05 < len(moved) / 1000 < 0.16  # k / n = 10 % of the clients ranked that pod (or rank the new one)
    assert set(moved) == {1}


def test_aperture_moves_most_clients_when_one_pod_leaves():
    ids = [r.id for r in FLEET]
    changed = sum(set(aperture(c / 1000, ids, 10)) != set(aperture(c / 1000, ids[1:], 10)) for c in range(1000))
    assert changed > 500  # every window after the gap shifts: why rendezvous is the default


def test_aperture_covers_k_slots_with_partial_edges():
    ids = [f"p{i}" for i in range(10)]
    cover = aperture(0.05, ids, 3)  # slots 0.5 .. 3.5
    assert sum(cover.values()) == pytest.approx(3.0)
    assert sorted(cover.values()) == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert aperture(0.3, ids, 20) == dict.fromkeys(ids, 1.0)  # a window wider than the ring: all of it


@pytest.mark.parametrize("config, peak, capacity, size", [
    (SubsetConfig(min_size=32), 0.0, 5000.0, 32),           # idle: the minimum
    (SubsetConfig(min_size=32), 100.0, 5000.0, 32),         # 100 / (0.2 % of 5,000) = 10: the minimum
    (SubsetConfig(min_size=32), 5000.0, 5000.0, 500),       # a whale: its peak at 0.2 % of each pod
    (SubsetConfig(min_size=32, pod_share=0.1), 5000.0, 5000.0, 32),
    (SubsetConfig(min_size=32), 5000.0, None, 32),          # no measured capacity: no load term
    (SubsetConfig(min_size=32, size=8), 1e9, 5000.0, 8),    # a fixed size wins
    (SubsetConfig(min_size=32), float("inf"), 5000.0, 32),  # nonsense peak: the minimum
])
def test_the_size_follows_the_clients_peak_never_below_the_minimum(config, peak, capacity, size):
    assert subset_size(config, peak, capacity) == size


@pytest.mark.parametrize("current, wanted, size", [(32, 40, 40), (40, 32, 40), (40, 21, 40), (40, 19, 19)])
def test_a_subset_grows_at_once_and_shrinks_only_below_half(current, wanted, size):
    assert next_size(current, wanted) == size


def test_pod_capacity_is_the_mean_measured_one():
    recs = [rec(0, capacity=Capacity(samples_per_s=1000.0)), rec(1, capacity=Capacity(samples_per_s=3000.0)), rec(2)]
    assert pod_capacity(recs) == 2000.0
    assert pod_capacity([rec(0)]) is None


def test_the_peak_is_the_busiest_second_of_the_window():
    m = RateMeter(10.0)
    for t, rows in [(0.1, 100), (0.5, 100), (3.2, 500), (9.9, 50)]:
        m.add(rows, t)
    assert m.peak(9.9) == 500
    assert m.peak(13.5) == 50  # second 3 left the 10 s window
    assert m.peak(100.0) == 0.0


@pytest.mark.parametrize("kw", [dict(min_size=0), dict(size=0), dict(pod_share=0.0), dict(pod_share=2.0),
                                dict(method="ring"), dict(enabled="yes"), dict(client_id=""),
                                dict(peak_window_s=0.5)])
def test_bad_subset_config_says_what_was_expected(kw):
    with pytest.raises(InvalidBalancerConfig, match="expected"):
        SubsetConfig(**kw)


def test_the_balancer_routes_over_its_subset_only():
    b = subsetted(FLEET, client=3)
    subset = {ep.instance_id for ep in b.candidates.endpoints}
    assert len(subset) == 10 and len(b.candidates.outside) == 90
    assert {b.pick("ctr", now=1.0).instance_id for _ in range(500)} <= subset
    assert set(b.watched(snapshot_from_records("ctr", FLEET).instances)) == subset
    assert b.stats(1.0).subset_size == 10 and b.stats(1.0).members == 100


def test_a_version_no_subset_member_hosts_is_routed_to_the_members_that_do():
    canary = {"p042", "p077"}
    fleet = [r.with_changes(models={"ctr": [1, 2]}) if r.id in canary else r for r in FLEET]
    b = subsetted(fleet, client=5)
    assert not canary & {ep.instance_id for ep in b.candidates.endpoints}  # this client's subset lacks both
    picked = Counter(b.pick("ctr", 2, now=1.0).instance_id for _ in range(400))
    assert set(picked) == canary
    ep = b.pick("ctr", 2, now=1.0)
    b.on_start(ep, 1.0, cost=10)
    b.update(snapshot_from_records("ctr", fleet, version=2), now=2.0)  # its load survives an update
    assert b.candidates.states[ep.key].in_flight == 1
    assert {b.pick("ctr", 1, now=3.0).instance_id for _ in range(200)} <= {e.instance_id
                                                                           for e in b.candidates.endpoints}


def test_a_version_nobody_hosts_is_still_not_hosted():
    with pytest.raises(NoEndpointAvailable) as e:
        subsetted(FLEET).pick("ctr", 9, now=1.0)
    assert e.value.why is Unavailable.NOT_HOSTED


def test_resize_grows_the_subset_and_keeps_what_it_had():
    b = subsetted(FLEET, client=9)
    before = {ep.key: ep.state for ep in b.candidates.endpoints}
    assert b.resize(20, now=5.0) and not b.resize(20, now=6.0)
    after = {ep.key: ep.state for ep in b.candidates.endpoints}
    assert len(after) == 20 and all(after[k] is st for k, st in before.items())  # nested: top 10 of top 20


def test_a_policy_switch_keeps_the_subset():
    b = subsetted(FLEET, client=2)
    b.resize(15, now=1.0)
    nxt = b.with_policy(build_policy("round_robin"))
    assert nxt.subset_size == 15 and nxt.candidates is b.candidates


def test_the_kept_answer_and_scores_give_what_a_fresh_rendezvous_gives_through_churn():
    """A Subsetter keeps its last answer (asked twice per membership change) and its scores:
    through 300 random joins, leaves and weight changes, its choice is always the fresh top k."""
    rng = random.Random(3)
    s, fresh = subsetter(7, size=10), subsetter(7, size=10)
    live = {r.id: r for r in FLEET}
    nxt = len(FLEET)
    for _ in range(300):
        op = rng.random()
        if op < 0.4:
            r = rec(nxt)
            nxt += 1
            live[r.id] = r
        elif op < 0.8 and len(live) > 12:
            live.pop(rng.choice(sorted(live)))
        else:
            i = rng.choice(sorted(live))
            live[i] = live[i].with_changes(weight=rng.choice([1.0, 2.0, 4.0]))
        records = list(live.values())
        got = s.choose(records, 10)
        assert got == s.choose(reversed(records), 10)  # another container of the same records: kept
        assert got == fresh._choose(records, 10)
        assert set(got) == set(rendezvous(id_hash("c7"), [r.id for r in records], 10))
    assert len(s._scores) <= 2 * len(live) + 1024
