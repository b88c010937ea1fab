"""The drain's idle decision (server_agent.drain.IdleWait): readings and the time in, a verdict out; no clock."""

from __future__ import annotations

import pytest

from server_agent.drain import POLL_S, UNKNOWN_POLL_S, IdleWait, InFlight, Verdict

WAIT, IDLE, TIMEOUT = Verdict.WAIT, Verdict.IDLE, Verdict.TIMEOUT
RESIDUE = InFlight(3, estimate=True, progress=(("grpc_handled", 2.0), ("grpc_started", 5.0)))
MOVED = InFlight(3, estimate=True, progress=(("grpc_handled", 3.0), ("grpc_started", 6.0)))  # one ended, one began
ONE_MORE = InFlight(4, estimate=True, progress=(("grpc_handled", 2.0), ("grpc_started", 6.0)))


def run(steps, *, deadline=60.0, idle_when_unknown=False, quiet_s=1.0):
    wait, out = IdleWait(deadline=deadline, idle_when_unknown=idle_when_unknown, quiet_s=quiet_s), []
    for now, seen in steps:
        wait, decision = wait.step(seen, now)
        out.append(decision.verdict)
    return out, decision.reason


@pytest.mark.parametrize(("steps", "kw", "expected"), [
    pytest.param([(0.0, InFlight(0))], {}, [IDLE], id="nothing in flight"),
    pytest.param([(0.0, InFlight(0, estimate=True))], {}, [IDLE], id="an estimate of 0"),
    pytest.param([(0.0, InFlight(None))], {"idle_when_unknown": True}, [IDLE], id="unknown, counted idle"),
    pytest.param([(0.0, InFlight(None)), (30.0, InFlight(None)), (60.0, InFlight(None))], {}, [WAIT, WAIT, TIMEOUT],
                 id="unknown waits for the deadline"),
    pytest.param([(0.0, InFlight(2)), (5.0, InFlight(2)), (30.0, InFlight(2)), (60.0, InFlight(2))], {},
                 [WAIT, WAIT, WAIT, TIMEOUT], id="an exact count that stands still is still work"),
    pytest.param([(0.0, InFlight(2)), (5.0, InFlight(1)), (6.0, InFlight(0))], {}, [WAIT, WAIT, IDLE],
                 id="exact, completes"),
    pytest.param([(0.0, RESIDUE), (0.5, RESIDUE), (0.99, RESIDUE), (1.0, RESIDUE)], {}, [WAIT, WAIT, WAIT, IDLE],
                 id="a residue that stands still for the quiet window"),
    pytest.param([(0.0, RESIDUE), (0.6, MOVED), (1.2, MOVED), (1.61, MOVED)], {}, [WAIT, WAIT, WAIT, IDLE],
                 id="counters moved: the window restarts"),
    pytest.param([(0.0, RESIDUE), (0.6, ONE_MORE), (1.2, RESIDUE), (2.0, RESIDUE), (2.2, RESIDUE)], {},
                 [WAIT, WAIT, WAIT, WAIT, IDLE], id="a call came and went: the window restarts twice"),
    pytest.param([(0.0, RESIDUE), (0.5, RESIDUE), (1.0, RESIDUE)], {"quiet_s": 5.0}, [WAIT, WAIT, WAIT],
                 id="a longer window"),
    pytest.param([(0.0, RESIDUE), (0.5, MOVED), (1.0, RESIDUE)], {"deadline": 1.0}, [WAIT, WAIT, TIMEOUT],
                 id="a moving estimate times out"),
    pytest.param([(0.0, InFlight(None)), (0.5, InFlight(None)), (1.5, InFlight(None))], {}, [WAIT, WAIT, WAIT],
                 id="unknown is never quiet"),
])
def test_idle_wait_table(steps, kw, expected):
    assert run(steps, **kw)[0] == expected


def test_the_reasons_say_what_was_seen():
    assert run([(0.0, InFlight(0))])[1] == "server idle: no request in flight"
    _, reason = run([(0.0, RESIDUE), (1.0, RESIDUE)])
    assert reason.startswith("server idle: ") and "estimate (3)" in reason and "not moved for 1.0s" in reason
    _, reason = run([(0.0, InFlight(2)), (60.0, InFlight(2))])
    assert reason == "2 requests in flight at the in-flight timeout; deregistering anyway"
    _, reason = run([(0.0, RESIDUE), (60.0, MOVED)])
    assert reason.startswith("3 (an estimate) requests in flight at the in-flight timeout")
    assert run([(60.0, InFlight(None))])[1].startswith("unknown requests in flight")


def test_a_quiet_window_must_be_positive():
    with pytest.raises(ValueError, match="quiet_s"):
        IdleWait(deadline=1.0, quiet_s=0)


@pytest.mark.parametrize(("seen", "now", "retry_in_s"), [
    (InFlight(2), 0.0, POLL_S), (RESIDUE, 0.0, POLL_S),  # a count: read again soon
    (InFlight(None), 0.0, UNKNOWN_POLL_S), (InFlight(None), 59.8, pytest.approx(0.2)),  # never past the deadline
])
def test_a_wait_says_when_to_read_again(seen, now, retry_in_s):
    _, decision = IdleWait(deadline=60.0).step(seen, now)
    assert decision.verdict is WAIT and decision.retry_in_s == retry_in_s


def test_a_server_whose_port_refuses_is_idle_and_a_merely_silent_one_is_not():
    assert run([(0.0, InFlight(None, gone=True))]) == ([IDLE], "server gone: its port refuses connections, "
                                                               "nothing is left to finish")
    assert run([(0.0, InFlight(None)), (60.0, InFlight(None))])[0] == [WAIT, TIMEOUT]
    assert run([(0.0, InFlight(2, gone=True))])[0] == [WAIT]  # a count was read: the server answered
