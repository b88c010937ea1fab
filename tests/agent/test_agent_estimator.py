"""The capacity estimator: a prior, evidence that outweighs it, a hold without traffic (pure, table-driven)."""

from __future__ import annotations

import pytest

from server_agent.errors import ConfigError
from server_agent.estimator import CapacityEstimator, EstimatorConfig, WorkTotals


def feed(est: CapacityEstimator, rate: float, busy_per_poll: float, polls: int, start: WorkTotals | None = None):
    """``polls`` intervals in which the server ran ``busy_per_poll`` full-use seconds at ``rate`` rows/s."""
    t = start or est._last or WorkTotals(0, 0.0)
    if est._last is None:
        est.observe(t)
    for _ in range(polls):
        t = WorkTotals(t.rows + round(rate * busy_per_poll), t.busy_s + busy_per_poll)
        est.observe(t)
    return t


def test_the_prior_stands_until_there_is_evidence():
    est = CapacityEstimator(prior=8000.0)
    assert est.value == 8000.0 and est.confidence == 0.0
    assert est.observe(None) == 8000.0
    assert est.observe(WorkTotals(0, 0.0)) == 8000.0  # the first reading is only a baseline


@pytest.mark.parametrize(("true_rate", "prior"), [(1000.0, 8000.0), (4000.0, 8000.0), (16000.0, 2000.0),
                                                  (50.0, 8000.0)])
def test_evidence_outweighs_a_wrong_prior_within_seconds_of_model_time(true_rate, prior):
    est = CapacityEstimator(prior=prior)
    feed(est, true_rate, busy_per_poll=0.4, polls=10)  # 4 s of model time: at 80 % load, 5 s of polls
    assert est.value == pytest.approx(true_rate, rel=0.15)
    assert est.confidence > 0.75


def test_equal_priors_find_a_1_2_4_fleet():
    pods = [CapacityEstimator(prior=2000.0) for _ in range(3)]
    for est, rate in zip(pods, (1000.0, 2000.0, 4000.0), strict=True):
        feed(est, rate, busy_per_poll=4.0, polls=12)  # 80 % busy, a 5 s poll, one minute
    ratios = [p.value / pods[0].value for p in pods]
    assert ratios == [pytest.approx(1.0), pytest.approx(2.0, rel=0.15), pytest.approx(4.0, rel=0.15)]


def test_it_follows_a_speed_change_within_a_minute_at_80_percent_load():
    est = CapacityEstimator(prior=4000.0)
    t = feed(est, 4000.0, busy_per_poll=4.0, polls=60)  # settled: five minutes at 4,000
    feed(est, 1000.0, busy_per_poll=4.0, polls=12, start=t)  # the pod slows to a quarter
    assert est.value == pytest.approx(1000.0, rel=0.15)


def test_one_slow_interval_moves_a_settled_estimate_a_little():
    est = CapacityEstimator(prior=4000.0)
    t = feed(est, 4000.0, busy_per_poll=4.0, polls=60)
    feed(est, 1000.0, busy_per_poll=0.5, polls=1, start=t)  # a GC pause's worth
    assert est.value > 0.85 * 4000.0


def test_no_traffic_holds_the_estimate():
    est = CapacityEstimator(prior=4000.0)
    t = feed(est, 2500.0, busy_per_poll=4.0, polls=20)
    held = est.value
    for _ in range(100):  # idle, or ejected by every client: counters do not move
        est.observe(t)
    t = feed(est, 2500.0, busy_per_poll=0.01, polls=50, start=t)  # a trickle below min_busy_s per poll
    assert est.value == held


def test_a_counter_reset_starts_a_new_baseline_and_a_glitch_is_ignored():
    est = CapacityEstimator(prior=4000.0)
    t = feed(est, 3000.0, busy_per_poll=4.0, polls=20)
    settled = est.value
    est.observe(WorkTotals(10, 0.1))  # a version reload restarted the counters
    assert est.value == settled
    est.observe(WorkTotals(10 + 10**9, 0.1 + 4.0))  # 250 M rows/s: a glitch, not a faster pod
    assert est.value == settled
    feed(est, 3000.0, busy_per_poll=4.0, polls=1, start=WorkTotals(10 + 10**9, 4.1))
    assert est.value == pytest.approx(3000.0, rel=0.01)
    assert t.rows > 0


def test_a_guess_is_replaced_by_measurements_and_a_calibration_is_averaged_with_them():
    guess, calibrated = CapacityEstimator(prior=5000.0), CapacityEstimator(prior=5000.0, calibrated=True)
    feed(guess, 2500.0, busy_per_poll=0.2, polls=1)
    assert guess.value == 5000.0  # 0.2 s of model time: not enough to replace even a guess
    feed(guess, 2500.0, busy_per_poll=0.4, polls=1)
    assert guess.value == pytest.approx(2500.0)  # a guess may be off by any factor: not averaged in
    feed(calibrated, 2500.0, busy_per_poll=0.6, polls=1)
    assert 2500.0 < calibrated.value < 5000.0  # a calibration is a measurement: it weighs 5 s
    assert calibrated.value == pytest.approx((5 * 5000.0 * 0.94 + 0.6 * 2500.0) / (5 * 0.94 + 0.6), rel=0.01)


@pytest.mark.parametrize("bad", [{"memory_busy_s": 0}, {"min_busy_s": -1}, {"max_ratio": 1.0},
                                 {"prior_evidence_s": float("nan")}])
def test_bad_knobs_are_refused(bad):
    with pytest.raises(ConfigError):
        EstimatorConfig(**bad)
    with pytest.raises(ConfigError, match="prior"):
        CapacityEstimator(prior=0.0)
