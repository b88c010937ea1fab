"""One slow start: a new pod's first share of traffic is the agent's documented starting fraction.

The real weight controller (the agent's core) publishes the first weight; the
real balancer (the client's core) turns the record into picks. Nothing
multiplies a second ramp in.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from server_agent.config import WeightConfig
from server_agent.weight import WeightController
from weiclient.balancer import Balancer, build_policy

SCORE = 8.0  # the new pod's capacity score: the same as its two established peers


def rec(i: int, weight: float, state: State = State.SERVING) -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                          state=state, models={"ctr": [1]})


@pytest.mark.parametrize("policy", ["random", "round_robin", "weighted_p2c"])
def test_a_new_pods_first_share_is_the_documented_starting_fraction(policy):
    cfg = WeightConfig()
    assert cfg.floor_fraction == 0.05  # what WeightConfig and SlowStart document as the start
    ctl = WeightController(cfg, capacity_score=SCORE, now=0.0)
    ctl.registered(0.0)
    first = ctl.decide(0.0)
    assert first.publish and first.weight == pytest.approx(cfg.floor_fraction * SCORE)

    b = Balancer(build_policy(policy), rng=random.Random(5))
    b.update(snapshot_from_records("ctr", [rec(0, SCORE), rec(1, SCORE)], version=1), now=100.0)
    b.update(snapshot_from_records("ctr", [rec(0, SCORE), rec(1, SCORE), rec(2, first.weight, State.WARMING)],
                                   version=2), now=100.0)
    new = next(e for e in b.stats(100.0).endpoints if e.instance_id == "p2")
    assert new.ramp == 1.0 and new.effective_weight == pytest.approx(first.weight)  # not 0.1 x 5 %

    expected = first.weight / (2 * SCORE + first.weight)  # 2.4 %
    n = 20_000
    picks = Counter(b.pick("ctr", now=100.0).instance_id for _ in range(n))
    assert abs(picks["p2"] / n - expected) < 0.006, (picks, expected)


def test_the_share_follows_the_agents_ramp_to_full_weight_and_stays():
    cfg = WeightConfig()
    ctl = WeightController(cfg, capacity_score=SCORE, now=0.0)
    ctl.registered(0.0)
    b = Balancer(build_policy("random"), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(0, SCORE)], version=1), now=0.0)
    for version, t in enumerate((0.0, cfg.ramp_s / 2, cfg.ramp_s), start=2):
        w = ctl.weight(t)
        state = State.WARMING if ctl.ramp(t) < 1.0 else State.SERVING
        b.update(snapshot_from_records("ctr", [rec(0, SCORE), rec(1, w, state)], version=version), now=t)
        eff = next(e for e in b.stats(t).endpoints if e.instance_id == "p1").effective_weight
        assert eff == pytest.approx(w)
    assert eff == SCORE  # SERVING at full weight, and no client ramp starts at the promotion
