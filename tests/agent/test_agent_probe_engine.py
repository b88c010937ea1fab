"""The probe engine as tables: results and times in, states and due times out (no I/O, no clock)."""

from __future__ import annotations

import pytest

from server_agent.errors import ConfigError
from server_agent.probes import ProbeEngine, ProbeKind, ProbeMachine, ProbeResult, ProbeSpec, ProbeState

OK = ProbeResult.success()
FAIL = ProbeResult.failure("boom")
S, F, U = ProbeState.SUCCESS, ProbeState.FAILURE, ProbeState.UNKNOWN
STARTUP, READINESS, LIVENESS = ProbeKind.STARTUP, ProbeKind.READINESS, ProbeKind.LIVENESS


# (name, kind, spec, [(ok, state after, consecutive successes, consecutive failures)])
THRESHOLD_TABLE = [
    ("defaults: one success is enough", READINESS, ProbeSpec(),
     [(True, S, 1, 0), (True, S, 2, 0)]),
    ("defaults: three failures to fail", READINESS, ProbeSpec(),
     [(False, U, 0, 1), (False, U, 0, 2), (False, F, 0, 3), (False, F, 0, 4)]),
    ("a success resets the failure run", LIVENESS, ProbeSpec(),
     [(True, S, 1, 0), (False, S, 0, 1), (False, S, 0, 2), (True, S, 1, 0), (False, S, 0, 1),
      (False, S, 0, 2), (False, F, 0, 3)]),
    ("readiness success_threshold 2", READINESS, ProbeSpec(success_threshold=2),
     [(True, U, 1, 0), (False, U, 0, 1), (True, U, 1, 0), (True, S, 2, 0)]),
    ("recovery from failure needs success_threshold successes", READINESS,
     ProbeSpec(success_threshold=3, failure_threshold=1),
     [(False, F, 0, 1), (True, F, 1, 0), (True, F, 2, 0), (True, S, 3, 0), (False, F, 0, 1)]),
    ("failure_threshold 1", LIVENESS, ProbeSpec(failure_threshold=1),
     [(False, F, 0, 1), (True, S, 1, 0)]),
]


@pytest.mark.parametrize("name,kind,spec,steps", THRESHOLD_TABLE, ids=[r[0] for r in THRESHOLD_TABLE])
def test_thresholds(name, kind, spec, steps):
    m = ProbeMachine(kind, spec, started_at=0.0)
    assert m.status.state is U
    for i, (ok, state, succ, fail) in enumerate(steps):
        st = m.observe(OK if ok else FAIL, now=float(i))
        assert (st.state, st.consecutive_successes, st.consecutive_failures) == (state, succ, fail), f"step {i}"
        assert st.results == i + 1
    assert m.status.last_reason == ("" if steps[-1][0] else "boom")


# (name, spec, [(result time, expected next due after it)]); started at t=100
SCHEDULE_TABLE = [
    ("defaults: due at start, then every 10 s", ProbeSpec(), [(100.0, 110.0), (110.0, 120.0), (120.5, 130.0)]),
    ("initial delay", ProbeSpec(initial_delay_seconds=15, period_seconds=5), [(115.0, 120.0), (120.2, 125.0)]),
    ("a slow probe skips the ticks it missed", ProbeSpec(period_seconds=10),
     [(100.0, 110.0), (135.0, 140.0), (140.0, 150.0)]),
    ("a result exactly on a tick goes to the next tick", ProbeSpec(period_seconds=2), [(100.0, 102.0), (104.0, 106.0)]),
    ("an early (manual) result keeps the schedule", ProbeSpec(initial_delay_seconds=30), [(105.0, 130.0)]),
]


@pytest.mark.parametrize("name,spec,steps", SCHEDULE_TABLE, ids=[r[0] for r in SCHEDULE_TABLE])
def test_schedule(name, spec, steps):
    m = ProbeMachine(READINESS, spec, started_at=100.0)
    assert m.next_due(100.0) == 100.0 + spec.initial_delay_seconds
    for now, due in steps:
        m.observe(OK, now)
        assert m.next_due(now) == due


def test_startup_holds_readiness_and_liveness_back():
    eng = ProbeEngine(started_at=0.0, startup=ProbeSpec(period_seconds=2, failure_threshold=30),
                      readiness=ProbeSpec(period_seconds=5), liveness=ProbeSpec(period_seconds=10))
    assert eng.due(0.0) == (STARTUP,)
    assert (eng.started, eng.ready, eng.alive) == (False, False, True)
    eng.observe(STARTUP, FAIL, 0.0)
    assert eng.due(1.0) == () and eng.next_due(1.0) == 2.0
    # A readiness result while held is ignored, as kubelet never runs it.
    st = eng.observe(READINESS, OK, 1.0)
    assert st.results == 0 and eng.ignored == 1 and not eng.ready
    eng.observe(STARTUP, OK, 2.0)
    assert eng.started and not eng.ready  # readiness not yet probed
    assert eng.due(2.0) == (READINESS, LIVENESS)  # released at once
    eng.observe(READINESS, OK, 2.0)
    eng.observe(LIVENESS, OK, 2.0)
    assert eng.ready and eng.alive and eng.snapshot().routable
    assert eng.next_due(2.0) == 7.0
    assert eng.due(12.0) == (READINESS, LIVENESS)  # startup never again


def test_release_waits_for_a_later_initial_delay():
    eng = ProbeEngine(started_at=0.0, startup=ProbeSpec(period_seconds=1),
                      readiness=ProbeSpec(initial_delay_seconds=5))
    eng.observe(STARTUP, OK, 1.0)
    assert eng.due(1.0) == () and eng.next_due(1.0) == 5.0


def test_startup_failure_is_reported_and_can_still_recover():
    eng = ProbeEngine(started_at=0.0, startup=ProbeSpec(period_seconds=1, failure_threshold=2),
                      readiness=ProbeSpec())
    eng.observe(STARTUP, FAIL, 0.0)
    assert not eng.startup_failed
    eng.observe(STARTUP, FAIL, 1.0)
    assert eng.startup_failed and not eng.started
    eng.observe(STARTUP, OK, 2.0)
    assert eng.started and not eng.startup_failed


def test_liveness_unknown_counts_alive_and_failure_is_not():
    eng = ProbeEngine(started_at=0.0, liveness=ProbeSpec(failure_threshold=2), readiness=ProbeSpec())
    assert eng.alive and eng.status(LIVENESS).state is U
    for t in (0.0, 10.0):
        eng.observe(LIVENESS, FAIL, t)
    assert not eng.alive
    snap = eng.snapshot()
    assert snap.started and not snap.alive and not snap.routable
    eng.observe(LIVENESS, OK, 20.0)
    assert eng.alive and eng.status(LIVENESS).changed_at == 20.0


def test_no_probes_means_started_ready_alive_and_nothing_due():
    eng = ProbeEngine(started_at=0.0)
    assert eng.snapshot().routable and eng.due(0.0) == () and eng.next_due(0.0) is None


def test_restart_starts_everything_over():
    eng = ProbeEngine(started_at=0.0, startup=ProbeSpec(), readiness=ProbeSpec())
    eng.observe(STARTUP, OK, 0.0)
    eng.observe(READINESS, OK, 0.0)
    assert eng.ready
    eng.restart(50.0)
    assert not eng.started and not eng.ready and eng.due(50.0) == (STARTUP,)


@pytest.mark.parametrize("kind", [STARTUP, LIVENESS])
def test_success_threshold_above_one_only_for_readiness(kind):
    with pytest.raises(ConfigError, match="success_threshold"):
        ProbeEngine(started_at=0.0, **{str(kind): ProbeSpec(success_threshold=2)})
    ProbeEngine(started_at=0.0, readiness=ProbeSpec(success_threshold=2))


@pytest.mark.parametrize("bad", [
    {"period_seconds": 0}, {"timeout_seconds": -1}, {"initial_delay_seconds": -1},
    {"success_threshold": 0}, {"failure_threshold": 0}, {"failure_threshold": 1.5},
    {"period_seconds": float("nan")}, {"success_threshold": True},
])
def test_probe_spec_validation(bad):
    with pytest.raises(ConfigError):
        ProbeSpec(**bad)


def test_observing_an_unconfigured_probe_is_a_config_error():
    with pytest.raises(ConfigError, match="configured probes"):
        ProbeEngine(started_at=0.0, readiness=ProbeSpec()).observe(LIVENESS, OK, 0.0)


def test_driven_by_a_fake_clock_loop():
    """A thin loop like the shell's, over a scripted server: slow to start, then
    flapping once. Checks when, on the fake clock, each verdict changes."""
    def server_ok(kind: ProbeKind, now: float) -> bool:
        if kind is STARTUP:
            return now >= 7.0  # the model loads for 7 s
        return not (40.0 <= now < 95.0)  # an outage from 40 s to 95 s

    eng = ProbeEngine(started_at=0.0, startup=ProbeSpec(period_seconds=2, failure_threshold=30),
                      readiness=ProbeSpec(period_seconds=5, failure_threshold=3, success_threshold=2),
                      liveness=ProbeSpec(period_seconds=10, failure_threshold=5))
    changes: list[tuple[float, bool, bool, bool]] = []
    last = None
    now = 0.0
    while now <= 120.0:
        for kind in eng.due(now):
            eng.observe(kind, ProbeResult(server_ok(kind, now)), now)
        snap = eng.snapshot()
        if (snap.started, snap.ready, snap.alive) != last:
            last = (snap.started, snap.ready, snap.alive)
            changes.append((now, *last))
        now = eng.next_due(now)
    # startup fails at 0, 2, 4, 6 and passes at 8, releasing the others at once;
    # readiness (every 5 s, 2 successes to pass) then ticks 8, 13, ... and
    # liveness (every 10 s, 5 failures to fail) 8, 18, ...
    assert changes == [
        (0.0, False, False, True),
        (8.0, True, False, True),    # started; readiness has 1 of 2 successes
        (13.0, True, True, True),    # ready
        (53.0, True, False, True),   # readiness failed at 43, 48, 53
        (88.0, True, False, False),  # liveness failed at 48, 58, 68, 78, 88
        (98.0, True, False, True),   # liveness passes again at once
        (103.0, True, True, True),   # readiness needs 98 and 103
    ]
