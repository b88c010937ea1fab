"""The drain's last wait -- is the server idle yet? -- as a pure decision: readings and the time go in.

While the agent shuts down (:meth:`server_agent.agent.Agent._wait_idle`), it reads the server's
in-flight count every few tens of milliseconds and asks :meth:`IdleWait.step` what to do; the
clock is the caller's, so the rule is table-tested without sleeping. The verdicts:

============================================  ========  ====================================================
what the reading says                         verdict   why
============================================  ========  ====================================================
0 in flight                                   IDLE      nothing left to finish
unknown, the reader counts unknown as idle    IDLE      wei-serve drains itself on SIGTERM
unknown, and the server's port refuses        IDLE      a dead server finishes nothing (killed, crashed)
an exact count > 0, or unknown                WAIT      until ``deadline`` (``--in-flight-timeout-s``)
an *estimate* > 0 that moved                  WAIT      work is completing: the counters say so
an estimate > 0 that, with every request      IDLE      a residue the server never lowers (see below)
counter, has not moved for ``quiet_s``
anything at ``deadline``                      TIMEOUT   the agent deregisters anyway and says so
============================================  ========  ====================================================

**Estimates.** Some servers' in-flight figure is an upper bound that may never come down: an
MLServer whose exposition lacks ``grpc_server_handling_seconds`` is read as gRPC ModelInfer calls
started minus those *handled*, and MLServer counts only OK calls handled, so every refused call stays
"in flight" for good (:mod:`server_agent.oip_metrics`). Such a count is constant while the server is
idle, whereas real work moves a counter when it completes. So an estimate that, with every request
counter, has not moved for ``quiet_s`` is taken as idle.

The trade-off: a single call that runs longer than ``quiet_s`` while nothing else moves looks the
same as a residue, and the wait can end before it does (a known count would have waited). The pod
is already out of every client's rotation by then, and the server's own SIGTERM handling lets such
a call finish (MLServer's gRPC server stops with a 5 s grace); what is cut short is only the
agent's wait before it deletes the registry node. 1 s (:data:`QUIET_S`) is twenty polls, and
longer than most model calls. An exact count (MLServer with its handling histogram, Triton,
wei-serve) is never second-guessed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["POLL_S", "QUIET_S", "UNKNOWN_POLL_S", "Decision", "IdleWait", "InFlight", "Verdict"]

QUIET_S = 1.0
"""How long an in-flight *estimate* and every request counter must stand still to be taken as idle."""
POLL_S = 0.05
"""The wait between readings of a count: one scrape, so the drain ends within ~50 ms of the last call."""
UNKNOWN_POLL_S = 0.5
"""The wait between readings while nothing answers (each costs a timed-out scrape)."""


@dataclass(frozen=True, slots=True)
class InFlight:
    """One reading of what the server still has. ``count``: requests in flight (None: nothing says).
    ``estimate``: the count is an upper bound that may never return to 0 (see the module docstring).
    ``progress``: the server's request counters, which move when a call starts or ends."""

    count: int | None
    estimate: bool = False
    progress: tuple[tuple[str, float], ...] = ()
    gone: bool = False  # the server's port refuses connections: a dead process finishes nothing

    @property
    def still(self) -> tuple[int | None, tuple[tuple[str, float], ...]]:
        """What must not move for a quiet window to run on."""
        return self.count, self.progress


class Verdict(enum.Enum):
    WAIT = "wait"
    IDLE = "idle"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Decision:
    """``verdict``; ``reason`` (IDLE, TIMEOUT) for the log; ``retry_in_s`` (WAIT): when to read again."""

    verdict: Verdict
    reason: str = ""
    retry_in_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleWait:
    """The wait's state between readings: ``wait, decision = wait.step(reading, now)``; on WAIT, read
    again ``decision.retry_in_s`` later.

    ``deadline``: when to give up (TIMEOUT). ``idle_when_unknown``: an unknown count ends the wait
    (else it waits for the deadline). ``quiet_s``: see the module docstring."""

    deadline: float
    idle_when_unknown: bool = False
    quiet_s: float = QUIET_S
    last: InFlight | None = None
    still_since: float | None = None

    def __post_init__(self) -> None:
        if not self.quiet_s > 0:
            raise ValueError(f"quiet_s must be > 0, got {self.quiet_s!r}")

    def step(self, seen: InFlight, now: float) -> tuple[IdleWait, Decision]:
        n = seen.count
        if n is not None and n <= 0:
            return self, Decision(Verdict.IDLE, "server idle: no request in flight")
        if n is None and seen.gone:
            return self, Decision(Verdict.IDLE, "server gone: its port refuses connections, nothing is left to finish")
        if n is None and self.idle_when_unknown:
            return self, Decision(Verdict.IDLE, "server idle: nothing says what is in flight (counted idle)")
        since = now
        if seen.estimate and n is not None and self.last is not None and self.last.still == seen.still:
            since = self.still_since if self.still_since is not None else now
        nxt = replace(self, last=seen, still_since=since)
        if seen.estimate and n is not None and now - since >= self.quiet_s:
            return nxt, Decision(Verdict.IDLE, f"server idle: the in-flight estimate ({n}) and every request counter "
                                               f"have not moved for {now - since:.1f}s: a residue, not work")
        if now >= self.deadline:
            shown = "unknown" if n is None else f"{n}{' (an estimate)' if seen.estimate else ''}"
            return nxt, Decision(Verdict.TIMEOUT, f"{shown} requests in flight at the in-flight timeout; "
                                                  f"deregistering anyway")
        return nxt, Decision(Verdict.WAIT, retry_in_s=POLL_S if n is not None else min(UNKNOWN_POLL_S,
                                                                                         self.deadline - now))
