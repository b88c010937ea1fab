"""The weight controller on a fake clock: capacity, latency, floor, publish rules, and a closed loop."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.status import StatusDoc
from server_agent.config import WeightConfig
from server_agent.errors import ConfigError
from server_agent.server_io import ServerReading
from server_agent.weight import ServerSample, WeightController, round_weight

POLL = 5.0  # seconds between status samples, as the shell polls
HEALTHY = ServerSample(p99_ms=40.0, queue_rows=0)


def run(ctl: WeightController, sample: ServerSample, start: float, seconds: float) -> list:
    """Feed ``sample`` every POLL seconds over (start, start + seconds]; return the decisions."""
    out = []
    t = start
    while t < start + seconds - 1e-9:
        t += POLL
        out.append(ctl.step(sample, t))
    return out


def test_weight_rises_with_capacity():
    small, big = (WeightController(capacity_score=s, now=0.0) for s in (8.0, 32.0))
    run(small, HEALTHY, 0, 30)
    run(big, HEALTHY, 0, 30)
    assert small.weight(30) == 8.0 and big.weight(30) == 32.0
    small.set_capacity_score(16.0)
    assert small.weight(30) == 16.0
    with pytest.raises(ConfigError):
        small.set_capacity_score(0)


def test_weight_falls_while_latency_exceeds_its_target_then_holds_then_recovers():
    ctl = WeightController(capacity_score=10.0, now=0.0)
    run(ctl, HEALTHY, 0, 10)
    weights = [d.weight for d in run(ctl, ServerSample(p99_ms=300.0), 10, 60)]
    assert all(b < a for a, b in zip(weights, weights[1:], strict=False)) and weights[-1] < 5.0
    low = weights[-1]
    # Inside the band (70-100 ms against a 100 ms target) the weight holds.
    assert {d.weight for d in run(ctl, ServerSample(p99_ms=85.0), 70, 120)} == {low}
    # Comfortably below it, the weight grows back to full capacity.
    run(ctl, ServerSample(p99_ms=20.0), 190, 600)
    assert ctl.weight(790) == 10.0


@pytest.mark.parametrize(("busy", "shrinks_to"), [(None, 0.25), (0.5, 0.25), (0.9, 0.55), (1.0, 1.0)])
def test_a_busy_pods_latency_is_left_to_its_capacity(busy, shrinks_to):
    """Over the target: the full shrink when the pod is not busy (health), none when it is saturated
    (it is given more than it can do: the measured capacity corrects that, not health)."""
    ctl = WeightController(capacity_score=10.0, now=0.0)
    run(ctl, ServerSample(p99_ms=300.0, busy_fraction=busy), 0, 60)
    assert ctl.weight(60) / 10.0 == pytest.approx(shrinks_to, abs=0.08)
    # Recovery is not gated: a busy pod under its band grows back as any other.
    run(ctl, ServerSample(p99_ms=20.0, busy_fraction=1.0), 60, 600)
    assert ctl.weight(660) == 10.0


def test_one_absurd_sample_moves_the_weight_a_little():
    ctl = WeightController(capacity_score=10.0, now=0.0)
    run(ctl, HEALTHY, 0, 30)
    ctl.observe(ServerSample(p99_ms=60_000.0), 35.0)  # a minute-long GC pause
    assert ctl.weight(35.0) > 8.5


def test_floor_holds_for_a_hopeless_pod():
    cfg = WeightConfig(floor_fraction=0.05)
    ctl = WeightController(cfg, capacity_score=20.0, now=0.0)
    decisions = run(ctl, ServerSample(p99_ms=5000.0, queue_rows=0), 0, 900)
    assert min(d.weight for d in decisions) == 1.0 == ctl.weight(900)  # 5% of 20
    assert ctl.step(ServerSample(ready=False), 905).weight == 1.0


def test_publish_threshold_suppresses_small_moves():
    ctl = WeightController(capacity_score=10.0, now=0.0)
    assert ctl.decide(0.0).publish  # the first weight is always published
    # 120 ms for 15 s: the weight slips ~1%, under the 10% threshold.
    decisions = run(ctl, ServerSample(p99_ms=120.0), 0, 15)
    assert [d.publish for d in decisions] == [False] * 3
    assert decisions[-1].weight < 10.0 and "within 10% of published" in decisions[-1].reason
    assert ctl.published == 10.0


def test_a_big_move_publishes_at_once():
    ctl = WeightController(capacity_score=10.0, now=0.0)
    ctl.decide(0.0)
    decisions = run(ctl, ServerSample(p99_ms=400.0), 0, 30)
    first = next(d for d in decisions if d.publish)
    assert first.reason.startswith("moved 10 -> ") and first.weight < 9.0


def test_max_interval_forces_a_publish_of_a_small_drift():
    ctl = WeightController(WeightConfig(max_interval_s=60.0), capacity_score=10.0, now=0.0)
    ctl.decide(0.0)
    run(ctl, ServerSample(p99_ms=120.0), 0, 15)  # a small drift, then steady
    decisions = run(ctl, ServerSample(p99_ms=85.0), 15, 60)
    published = [(i, d) for i, d in enumerate(decisions) if d.publish]
    assert len(published) == 1
    i, d = published[0]
    assert 15 + POLL * (i + 1) == 60.0 and d.reason.startswith("max interval 60s")
    # Nothing changes afterwards: nothing to write, however long.
    assert not any(d.publish for d in run(ctl, ServerSample(p99_ms=85.0), 75, 600))


def test_slow_start_ramp_after_registration():
    ctl = WeightController(WeightConfig(ramp_s=60.0, floor_fraction=0.05), capacity_score=10.0, now=0.0)
    ctl.registered(0.0)
    d = ctl.decide(0.0)
    assert d.publish and d.weight == 0.5  # starts at the floor
    assert ctl.weight(30.0) == round_weight(10 * (0.05 + 0.95 * 0.5))
    decisions = run(ctl, HEALTHY, 0, 90)
    assert ctl.weight(60.0) == 10.0
    pubs = [d for d in decisions if d.publish]
    assert pubs[-1].weight == 10.0 and len(pubs) <= 12  # one per poll at most, in 10% steps
    # Re-registration (a new ZooKeeper session) starts the ramp over and publishes at once.
    ctl.registered(100.0)
    d = ctl.decide(100.0)
    assert d.publish and d.weight == 0.5 and d.reason.startswith("registered")


def test_queue_growth_and_errors_lower_health():
    ctl = WeightController(WeightConfig(smoothing_tau_s=0), capacity_score=10.0, now=0.0)
    ctl.observe(ServerSample(queue_rows=0, requests=0, errors=0), 5.0)
    raw = ctl.observe(ServerSample(queue_rows=5000, requests=1000, errors=0), 10.0)  # +1000 rows/s
    assert raw.queue == 0.5 and raw.errors == 1.0 and ctl.weight(10.0) == 5.0
    raw = ctl.observe(ServerSample(queue_rows=100, requests=2000, errors=255), 15.0)  # 25.5% errors
    assert raw.queue == 1.0 and raw.errors == pytest.approx(0.5)
    raw = ctl.observe(ServerSample(queue_rows=100, requests=10, errors=0), 20.0)  # counters reset: ignored
    assert raw.errors == 1.0


def test_a_queue_that_fluctuates_without_growing_keeps_the_weight():
    ctl = WeightController(capacity_score=10.0, now=0.0)
    for t in range(1, 121):  # 1 s polls: 0, 800, 0, 800 rows queued
        ctl.observe(ServerSample(p99_ms=40.0, queue_rows=800 * (t % 2)), float(t))
    assert ctl.weight(120.0) >= 9.5
    for t in range(121, 181):  # then a real backlog: +500 rows every second for a minute
        ctl.observe(ServerSample(p99_ms=40.0, queue_rows=500 * (t - 120)), float(t))
    assert ctl.weight(180.0) < 7.5


def test_not_ready_drops_to_the_floor():
    ctl = WeightController(WeightConfig(smoothing_tau_s=0), capacity_score=10.0, now=0.0)
    assert ctl.step(ServerSample(ready=False), 5.0).weight == 0.5


# -- the closed loop ---------------------------------------------------------------------------


def simulate(*, true_capacity: tuple[float, float], scores: tuple[float, float], demand: float,
             minutes: float = 30.0, noise: float = 0.0, seed: int = 7,
             config: WeightConfig | None = None) -> tuple[list, list]:
    """Two pods behind client-side balancing. Traffic splits in proportion to the
    published weights; each pod's p99 grows with its utilisation (M/M/1-like:
    30 ms / (1 - utilisation), capped at 98% busy). Returns, per poll, the
    published weights, and the list of (time, pod) publishes."""
    rng = random.Random(seed)
    ctls = [WeightController(config, capacity_score=s, now=0.0) for s in scores]
    published = []
    for c in ctls:
        c.registered(0.0)
        published.append(c.decide(0.0).weight)
    history, publishes = [], []
    t = 0.0
    while t < minutes * 60:
        t += POLL
        total = sum(published)
        for i, c in enumerate(ctls):
            busy = min(0.98, published[i] / total * demand / true_capacity[i])
            p99 = 30.0 / (1.0 - busy) * (1.0 + rng.uniform(-noise, noise))
            d = c.step(ServerSample(p99_ms=p99, queue_rows=0), t)
            if d.publish:
                published[i] = d.weight
                publishes.append((t, i))
        history.append((t, tuple(published)))
    return history, publishes


@pytest.mark.parametrize("true_capacity,scores,demand,noise", [
    ((1000.0, 3000.0), (10.0, 10.0), 2400.0, 0.0),   # declared alike, 3x apart in truth
    ((1000.0, 3000.0), (10.0, 10.0), 2400.0, 0.1),   # the same with 10% noise on every p99
    ((500.0, 4000.0), (16.0, 16.0), 2800.0, 0.1),
    ((1000.0, 3000.0), (8.0, 32.0), 3400.0, 0.1),    # overloaded: both shed to the floor, shares stand
])
def test_two_pods_settle_instead_of_oscillating(true_capacity, scores, demand, noise):
    history, publishes = simulate(true_capacity=true_capacity, scores=scores, demand=demand, noise=noise)
    steady = [w for t, w in history if t > 20 * 60]  # the last 10 simulated minutes
    for pod in (0, 1):
        values = [w[pod] for w in steady]
        assert max(values) / min(values) - 1 <= 0.02, f"pod {pod} still moves: {sorted(set(values))}"
    late = [p for p in publishes if p[0] > 20 * 60]
    assert len(late) / 10 <= 0.5  # publishes per simulated minute, both pods together
    assert len(publishes) <= 80  # including the slow start and the search


def test_the_loop_test_detects_hunting():
    """Without the latency band the integrator never rests and the weights hunt:
    the same measurements as above fail, so the settling test has teeth."""
    history, publishes = simulate(true_capacity=(1000.0, 3000.0), scores=(10.0, 10.0), demand=2400.0,
                                  noise=0.1, config=WeightConfig(latency_band=0.0))
    values = [w[0] for t, w in history if t > 20 * 60]
    assert max(values) / min(values) - 1 > 0.05
    assert len([p for p in publishes if p[0] > 20 * 60]) / 10 > 0.5


def test_settled_split_keeps_the_slow_pod_at_its_latency_target():
    history, _ = simulate(true_capacity=(1000.0, 3000.0), scores=(10.0, 10.0), demand=2400.0)
    w0, w1 = history[-1][1]
    busy0 = w0 / (w0 + w1) * 2400 / 1000
    assert 70.0 <= 30.0 / (1 - busy0) <= 100.0  # inside the band: [70%, 100%] of the 100 ms target
    assert w1 == 10.0  # the fast pod is healthy and keeps its full weight


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 60.0), st.one_of(st.none(), st.floats(0, 1e6)),
                          st.one_of(st.none(), st.floats(0, 1e6)), st.booleans()), max_size=40),
       st.floats(0.1, 1e5))
def test_weight_always_within_floor_and_max(steps, score):
    cfg = WeightConfig()
    ctl = WeightController(cfg, capacity_score=score, now=0.0)
    t = 0.0
    for dt, p99, queue, ready in steps:
        t += dt
        w = ctl.step(ServerSample(p99_ms=p99, queue_rows=queue, ready=ready), t).weight
        assert w > 0 and round_weight(cfg.floor_fraction * score) <= w <= round_weight(cfg.max_fraction * score)


# -- status and config ------------------------------------------------------------------------


def test_sample_from_serving_status():
    status = {"phase": "serving", "ready": True, "draining": False, "port": 8500, "in_flight": 3,
              "models": {"ctr": {"queue_rows": 40, "latency_ms": {"p50": 2.1, "p99": 6.0, "ewma": 2.4}},
                         "lr": {"queue_rows": 2, "latency_ms": {"p99": 9.5}}}}

    def sample(doc, **counts):
        return ServerReading(StatusDoc.from_json(doc), **counts).sample()

    assert sample(status, requests=10, errors=1) == ServerSample(
        ready=True, p99_ms=9.5, ewma_ms=2.4, queue_rows=42.0, requests=10, errors=1)
    assert sample({**status, "draining": True}).ready is False
    assert ServerReading(None).sample() == ServerSample(ready=False)
    assert sample({"ready": True}) == ServerSample()


@pytest.mark.parametrize("bad", [
    {"latency_target_ms": 0}, {"latency_signal": "p50"}, {"latency_band": 1.0}, {"floor_fraction": 0},
    {"max_fraction": 0.01}, {"error_rate_bad": 0.005}, {"publish_threshold": -0.1}, {"max_interval_s": 0},
    {"ramp_s": float("inf")}, {"latency_busy_gate": 1.0}, {"latency_busy_gate": -0.1},
])
def test_weight_config_validation(bad):
    with pytest.raises(ConfigError):
        WeightConfig(**bad)
