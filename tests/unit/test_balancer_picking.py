"""Traffic shares, load steering and candidate filtering (fixed seeds, fake clock)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from protocol.orca import LoadReport
from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from weiclient.balancer import Balancer, ServerLoad, build_policy
from weiclient.balancer.wrr import integer_weights, nginx_cycle
from weiclient.errors import NoEndpointAvailable, Unavailable, WeiClientError


def rec(i: int, weight: float = 1.0, **kw) -> InstanceRecord:
    base = dict(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                state=State.SERVING, models={"ctr": [1, 2]})
    base.update(kw)
    return InstanceRecord(**base)


def balancer(policy: str, *recs: InstanceRecord, seed: int = 1, **knobs) -> Balancer:
    b = Balancer(build_policy(policy, knobs), rng=random.Random(seed))
    b.update(snapshot_from_records("ctr", recs, version=1), now=0.0)
    return b


def shares(counts: Counter, total: int) -> dict[str, float]:
    return {k: v / total for k, v in counts.items()}


WEIGHTS = {"p0": 1 / 8, "p1": 2 / 8, "p2": 5 / 8}
N = 40_000


@pytest.mark.parametrize("policy", ["weighted_p2c", "random", "round_robin"])
def test_idle_traffic_is_proportional_to_weight(policy):
    b = balancer(policy, rec(0, 1.0), rec(1, 2.0), rec(2, 5.0))
    counts: Counter = Counter()
    for i in range(N):
        now = 1.0 + i * 0.001
        ep = b.pick("ctr", now=now)
        b.on_start(ep, now)
        b.on_finish(ep, now + 0.0005, 0.0005, True)  # idle: each request ends before the next
        counts[ep.instance_id] += 1
    for k, share in shares(counts, N).items():
        assert abs(share - WEIGHTS[k]) < 0.02, (k, share)


def test_round_robin_is_exact_over_every_cycle():
    b = balancer("round_robin", rec(0, 1.0), rec(1, 2.0), rec(2, 5.0))
    seq = [b.pick("ctr", now=1.0).instance_id for _ in range(8 * 50)]
    for c in range(50):
        assert Counter(seq[8 * c: 8 * c + 8]) == {"p0": 1, "p1": 2, "p2": 5}


def test_round_robin_follows_nginx_smooth_sequence():
    assert nginx_cycle([5, 1, 1]).order == (0, 0, 1, 0, 2, 0, 0)  # a a b a c a a, as nginx
    assert integer_weights([1.5, 3.0, 4.5], 100, 8192) == [1, 2, 3]
    big = integer_weights([float(i % 10 + 1) for i in range(1000)], 100, 8192)
    assert sum(big) <= 8192 and min(big) >= 1


def test_p2c_steers_away_from_growing_in_flight():
    b = balancer("weighted_p2c", rec(0), rec(1), rec(2))
    for ep in b.candidates.endpoints:
        b.on_finish(ep, 0.5, 0.010, True)
    hot = b.candidates.endpoints[0]
    for _ in range(20):
        b.on_start(hot, 1.0)
    counts = Counter(b.pick("ctr", now=1.0).instance_id for _ in range(3000))
    assert counts["p0"] == 0  # p2c always compares two distinct endpoints: the loaded one always loses
    assert counts["p1"] > 1200 and counts["p2"] > 1200


def test_p2c_steers_away_from_growing_latency():
    b = balancer("weighted_p2c", rec(0), rec(1), rec(2))
    before = Counter(b.pick("ctr", now=1.0).instance_id for _ in range(3000))
    assert before["p0"] > 800
    slow, *fast = b.candidates.endpoints
    b.on_finish(slow, 2.0, 0.200, True)  # the peak EWMA jumps at once
    for ep in fast:
        b.on_finish(ep, 2.0, 0.010, True)
    after = Counter(b.pick("ctr", now=2.0).instance_id for _ in range(3000))
    assert after["p0"] == 0


def test_p2c_reads_server_queue_depth_from_load_reports_and_forgets_stale_ones():
    b = balancer("weighted_p2c", rec(0), rec(1))
    busy, idle = b.candidates.endpoints
    report = LoadReport(named_metrics={"queue_depth": 8000.0, "in_flight": 3.0, "ewma_latency_ms": 12.0})
    b.on_finish(busy, 1.0, 0.01, True, load_report=report)
    b.on_finish(idle, 1.0, 0.01, True, load_report=ServerLoad(queue_depth=0.0))
    assert busy.state.report == ServerLoad(in_flight=3.0, queue_depth=8000.0, ewma_latency_s=0.012)
    assert Counter(b.pick("ctr", now=1.5).instance_id for _ in range(500)) == {"p1": 500}
    later = Counter(b.pick("ctr", now=10.0).instance_id for _ in range(2000))  # report older than 2 s
    assert 800 < later["p0"] < 1200


def test_a_new_endpoint_borrows_the_server_latency_and_is_probed_while_idle():
    b = balancer("weighted_p2c", rec(0), rec(1))
    a, c = b.candidates.endpoints
    b.on_finish(a, 1.0, 0.010, True)
    assert b.policy.load.cost(c.state, 1.0, 1.0, 1.0) == 0.0  # never answered, idle: probe it
    b.on_start(c, 1.0)
    assert b.policy.load.cost(c.state, 1.0, 1.0, 1.0) == 2.0 * b.policy.load.penalty_s
    c.state.report = ServerLoad(ewma_latency_s=0.02)
    assert b.policy.load.latency(c.state) == 0.02


def test_candidates_are_filtered_by_model_version_enabled_draining():
    b = balancer(
        "random",
        rec(0), rec(1, models={"ctr": [2]}), rec(2, models={"other": [1]}),
        rec(3, enabled=False, weight=0.0), rec(4, state=State.DRAINING), rec(5, state=State.WARMING),
    )
    assert {ep.instance_id for ep in b.candidates.view("ctr").endpoints} == {"p0", "p1", "p5"}
    assert {ep.instance_id for ep in b.candidates.view("ctr", 1).endpoints} == {"p0", "p5"}
    picked = {b.pick("ctr", 1, now=1.0).instance_id for _ in range(200)}
    assert picked == {"p0", "p5"}


def test_errors_say_why_nothing_is_available():
    empty = Balancer(build_policy("random"))
    with pytest.raises(NoEndpointAvailable) as e:
        empty.pick("ctr", now=0.0)
    assert e.value.why is Unavailable.NO_INSTANCES and isinstance(e.value, WeiClientError)

    b = balancer("random", rec(0, models={"ctr": [1]}), rec(1, state=State.DRAINING, models={"ctr": [7]}))
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("ranker", now=1.0)
    assert e.value.why is Unavailable.NOT_HOSTED and "ctr [1, 7]" in str(e.value)
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("ctr", 3, now=1.0)
    assert e.value.why is Unavailable.NOT_HOSTED and "ctr version 3" in str(e.value)
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("ctr", 7, now=1.0)
    assert e.value.why is Unavailable.ALL_DRAINING and "p1 draining" in str(e.value)
    only = b.pick("ctr", 1, now=1.0)
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("ctr", 1, exclude={only}, now=1.0)
    assert e.value.why is Unavailable.ALL_EXCLUDED
    assert (e.value.model, e.value.version) == ("ctr", 1)


@pytest.mark.parametrize("policy", ["weighted_p2c", "random", "round_robin", "consistent_hash"])
def test_exclude_skips_tried_endpoints_across_membership_updates(policy):
    b = balancer(policy, rec(0), rec(1), rec(2))
    first = b.pick("ctr", key="k", now=1.0)
    b.update(snapshot_from_records("ctr", [rec(0), rec(1), rec(2, weight=2.0)], version=2), now=2.0)
    for i in range(200):
        ep = b.pick("ctr", key=f"k{i}", exclude=frozenset({first}), now=2.0)
        assert ep != first
    others = {ep for ep in b.candidates.endpoints if ep != first}
    last = next(iter(others))
    assert {b.pick("ctr", key="k", exclude={first, last}, now=2.0) for _ in range(20)} == others - {last}


def test_p2c_with_more_choices_is_still_weighted_when_idle():
    b = balancer("weighted_p2c", rec(0, 1.0), rec(1, 2.0), rec(2, 5.0), rec(3, 2.0), choices=3)
    counts = Counter(b.pick("ctr", now=1.0).instance_id for _ in range(20_000))
    assert abs(counts["p2"] / 20_000 - 0.5) < 0.02


def test_round_robin_keeps_each_model_exact_when_picks_interleave():
    both = {"ctr": [1], "rank": [1]}
    b = balancer("round_robin", rec(0, 1.0, models=both), rec(1, 2.0, models=both), rec(2, 5.0, models=both))
    seqs: dict[str, list[str]] = {"ctr": [], "rank": []}
    for i in range(800):
        model = "ctr" if i % 2 else "rank"
        seqs[model].append(b.pick(model, now=1.0).instance_id)
    for seq in seqs.values():
        for c in range(0, 400, 8):
            assert Counter(seq[c: c + 8]) == {"p0": 1, "p1": 2, "p2": 5}


def _run_with_latencies(b: Balancer, base_ms: dict[str, float], n: int, seed: int = 7) -> dict[str, float]:
    """Sequential calls (nothing in flight) whose latencies jitter by +/-10 % around ``base_ms``."""
    noise = random.Random(seed)
    counts: Counter = Counter()
    for i in range(n):
        now = 1.0 + i * 0.001
        ep = b.pick("ctr", now=now)
        b.on_start(ep, now)
        b.on_finish(ep, now, base_ms[ep.instance_id] / 1000 * noise.uniform(0.9, 1.1), True)
        counts[ep.instance_id] += 1
    return shares(counts, n)


def test_p2c_latency_noise_does_not_override_weights():
    # Two endpoints: both are drawn every time, so only the first (weighted) draw
    # and the tolerance keep the 1:3 split when latencies differ by noise alone.
    b = balancer("weighted_p2c", rec(0, 1.0), rec(1, 3.0))
    got = _run_with_latencies(b, {"p0": 1.0, "p1": 1.15}, 20_000)
    assert got["p1"] == pytest.approx(0.75, abs=0.03)


def test_p2c_still_avoids_a_clearly_slower_endpoint():
    b = balancer("weighted_p2c", rec(0, 1.0), rec(1, 1.0))
    got = _run_with_latencies(b, {"p0": 1.0, "p1": 3.0}, 20_000)
    assert got["p0"] > 0.9


def test_p2c_a_latency_spike_does_not_starve_an_endpoint():
    """One slow call must not cost an endpoint its traffic for good: the estimate
    decays while it gets no samples (Finagle's decay on read), so it is tried again."""
    b = balancer("weighted_p2c", rec(0, 1.0), rec(1, 1.0))
    spike_at = 1.0
    ep0 = next(ep for ep in b.candidates.endpoints if ep.instance_id == "p0")
    b.on_start(ep0, spike_at)
    b.on_finish(ep0, spike_at, 0.050, True)  # one 50 ms outlier; normal calls take 1 ms
    counts: Counter = Counter()
    for i in range(20_000):  # 20 s of calls, 1 ms apart
        now = spike_at + 0.001 * (i + 1)
        ep = b.pick("ctr", now=now)
        b.on_start(ep, now)
        b.on_finish(ep, now, 0.001, True)
        if now > spike_at + 10.0:
            counts[ep.instance_id] += 1
    assert counts["p0"] / sum(counts.values()) > 0.35


def test_a_predict_many_pick_finds_the_one_instance_hosting_every_model():
    """40 instances lack the second model, one hosts both: one pick finds it, every time."""
    recs = [rec(i, models={"ctr": [1]}) for i in range(40)] + [rec(40, models={"ctr": [1], "ctr_b": [1, 2]})]
    for policy in ("weighted_p2c", "random", "round_robin", "consistent_hash"):
        b = balancer(policy, *recs)
        picked = {b.pick("ctr", None, also=(("ctr_b", 2),), key=i, now=1.0).instance_id for i in range(300)}
        assert picked == {"p40"}, policy
    view = b.candidates.view("ctr", None, (("ctr_b", 2),))
    assert view is b.candidates.view("ctr", None, [("ctr_b", 2)])  # memoized by the pairs
    assert view.also == (("ctr_b", 2),) and "ctr, ctr_b v2" in repr(view)
    shards = b.scatter("ctr", None, 10, also=(("ctr_b", None),), now=1.0)
    assert [s.endpoint.instance_id for s in shards] == ["p40"]


def test_a_predict_many_pick_says_which_models_no_instance_hosts_together():
    b = balancer("random", rec(0, models={"ctr": [1]}), rec(1, models={"ctr_b": [1]}),
                 rec(2, state=State.DRAINING, models={"ctr": [1], "ctr_c": [1]}))
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("ctr", 1, also=(("ctr_b", 1),), now=1.0)
    assert e.value.why is Unavailable.NOT_HOSTED and "no instance hosts all of ctr v1, ctr_b v1" in str(e.value)
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("ctr", None, also=(("ctr_c", None),), now=1.0)
    assert e.value.why is Unavailable.ALL_DRAINING and "p2 draining" in str(e.value)
    assert b.pick("ctr", 1, now=1.0).instance_id == "p0"  # one model alone: as before
