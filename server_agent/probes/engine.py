"""The probe engine: Kubernetes' probe semantics as a pure state machine.

Results and the current time go in; states and the next due time come out.
Nothing here sleeps, reads a clock or touches a socket: a thin loop asks
:meth:`ProbeEngine.due`, runs those handlers, feeds each result to
:meth:`ProbeEngine.observe` and sleeps until :meth:`ProbeEngine.next_due`.

A probe stays due until its result is observed: a serial loop needs nothing
more; a loop that runs probes concurrently remembers which it has in flight.
The shell passes ``engine.spec(kind).timeout_seconds`` to the handler.

Rules, as kubelet applies them:

- A probe's state moves only after ``failure_threshold`` consecutive failures
  (to FAILURE) or ``success_threshold`` consecutive successes (to SUCCESS);
  before the first such run it is UNKNOWN. Readiness counts as not ready and
  liveness as alive while UNKNOWN (kubelet's initial results).
- Probes run first ``initial_delay_seconds`` after the container started, then
  on a fixed grid every ``period_seconds``; a probe slower than its period
  skips the ticks it missed (a ticker, not a sleep after each probe).
- The startup probe holds readiness and liveness back until it succeeds, then
  stops; the held probes are due at once (kubelet triggers readiness
  immediately once the container is started), or at their own initial delay
  if that is later. Without a startup probe the container is started at once.
- Liveness and startup must have ``success_threshold`` 1 (the API server
  rejects anything else); readiness may require several successes.

Departure: kubelet restarts a container whose liveness or startup probe
fails and then holds the probe until the new container exists. The agent
restarts nothing; it keeps probing (a recovered server becomes alive again)
and the shell reports FAILURE upwards. :meth:`ProbeEngine.restart` starts
everything over when the shell learns the server process restarted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from ..config import ProbeSpec
from ..errors import ConfigError
from .result import ProbeResult

__all__ = ["EngineStatus", "ProbeEngine", "ProbeKind", "ProbeMachine", "ProbeState", "ProbeStatus"]


class ProbeKind(StrEnum):
    STARTUP = "startup"
    READINESS = "readiness"
    LIVENESS = "liveness"


class ProbeState(StrEnum):
    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    kind: ProbeKind
    state: ProbeState
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    last_reason: str = ""
    last_latency: float = 0.0
    last_result_at: float | None = None
    results: int = 0
    changed_at: float | None = None  # when ``state`` last changed


class ProbeMachine:
    """One probe's counts, state and schedule. Invariant: at most one of the two
    consecutive counts is non-zero (a result of the other kind resets it)."""

    def __init__(self, kind: ProbeKind, spec: ProbeSpec, *, started_at: float) -> None:
        if kind is not ProbeKind.READINESS and spec.success_threshold != 1:
            raise ConfigError(f"{kind}Probe.success_threshold", "1 (only readiness may need more)",
                              spec.success_threshold)
        self.kind = kind
        self.spec = spec
        self._first_due = started_at + spec.initial_delay_seconds
        self._next = self._first_due
        self._status = ProbeStatus(kind, ProbeState.UNKNOWN)

    @property
    def status(self) -> ProbeStatus:
        return self._status

    def next_due(self, now: float) -> float:
        """When the next attempt should start; ``<= now`` means it is due (overdue ones stay due)."""
        return self._next

    def release(self, now: float) -> None:
        """A held probe may run: due now, or at its initial delay if that is later."""
        self._next = max(now, self._first_due)

    def observe(self, result: ProbeResult, now: float) -> ProbeStatus:
        s = self._status
        if result.ok:
            succ, fail = s.consecutive_successes + 1, 0
        else:
            succ, fail = 0, s.consecutive_failures + 1
        state = s.state
        if result.ok and succ >= self.spec.success_threshold:
            state = ProbeState.SUCCESS
        elif not result.ok and fail >= self.spec.failure_threshold:
            state = ProbeState.FAILURE
        self._status = ProbeStatus(
            self.kind, state, succ, fail, result.reason, result.latency, now, s.results + 1,
            now if state is not s.state else s.changed_at,
        )
        if now >= self._next:  # the next grid tick strictly after now; missed ticks are skipped
            period = self.spec.period_seconds
            self._next += period * (math.floor((now - self._next) / period) + 1)
        return self._status

    def __repr__(self) -> str:
        s = self._status
        return (f"<ProbeMachine {self.kind} {s.state} ok={s.consecutive_successes} "
                f"fail={s.consecutive_failures} next={self._next:g}>")


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """The verdicts the shell acts on, and each probe's status."""

    started: bool
    ready: bool
    alive: bool
    startup_failed: bool
    probes: tuple[ProbeStatus, ...]

    @property
    def routable(self) -> bool:
        """Started, ready and alive: the instance may take traffic."""
        return self.started and self.ready and self.alive


class ProbeEngine:
    """Startup, readiness and liveness probes of one container; any may be absent."""

    def __init__(
        self,
        *,
        started_at: float,
        startup: ProbeSpec | None = None,
        readiness: ProbeSpec | None = None,
        liveness: ProbeSpec | None = None,
    ) -> None:
        self._specs = {ProbeKind.STARTUP: startup, ProbeKind.READINESS: readiness, ProbeKind.LIVENESS: liveness}
        self.ignored = 0  # results for held probes (a race in the shell, harmless)
        self.restart(started_at)

    def restart(self, now: float) -> None:
        """The probed container (re)started at ``now``: every probe starts over."""
        self._machines = {kind: ProbeMachine(kind, spec, started_at=now)
                          for kind, spec in self._specs.items() if spec is not None}
        self._started = ProbeKind.STARTUP not in self._machines

    # -- decisions -------------------------------------------------------------

    def _active(self) -> list[ProbeMachine]:
        if not self._started:
            return [self._machines[ProbeKind.STARTUP]]
        return [m for k, m in self._machines.items() if k is not ProbeKind.STARTUP]

    def due(self, now: float) -> tuple[ProbeKind, ...]:
        """The probes to run now, in startup, readiness, liveness order."""
        return tuple(m.kind for m in self._active() if m.next_due(now) <= now)

    def next_due(self, now: float) -> float | None:
        """The earliest time a probe is due (maybe already past); None when none will run."""
        times = [m.next_due(now) for m in self._active()]
        return min(times) if times else None

    def spec(self, kind: ProbeKind) -> ProbeSpec:
        """The spec of a configured probe (the shell passes ``timeout_seconds`` to the handler)."""
        return self._machine(kind).spec

    def observe(self, kind: ProbeKind, result: ProbeResult, now: float) -> ProbeStatus:
        """Feed one result. A result for a held probe is ignored (kubelet does not run it)."""
        machine = self._machine(kind)
        if machine not in self._active():
            self.ignored += 1
            return machine.status
        status = machine.observe(result, now)
        if kind is ProbeKind.STARTUP and status.state is ProbeState.SUCCESS:
            self._started = True
            for other in self._active():
                other.release(now)
        return status

    def _machine(self, kind: ProbeKind) -> ProbeMachine:
        try:
            return self._machines[ProbeKind(kind)]
        except (KeyError, ValueError):
            raise ConfigError("probe kind", f"one of the configured probes {sorted(self._machines)}",
                              kind) from None

    # -- views -----------------------------------------------------------------

    def status(self, kind: ProbeKind) -> ProbeStatus:
        return self._machine(kind).status

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ready(self) -> bool:
        if not self._started:
            return False
        m = self._machines.get(ProbeKind.READINESS)
        return m is None or m.status.state is ProbeState.SUCCESS

    @property
    def alive(self) -> bool:
        m = self._machines.get(ProbeKind.LIVENESS)
        return m is None or m.status.state is not ProbeState.FAILURE

    @property
    def startup_failed(self) -> bool:
        m = self._machines.get(ProbeKind.STARTUP)
        return m is not None and m.status.state is ProbeState.FAILURE

    def snapshot(self) -> EngineStatus:
        return EngineStatus(self.started, self.ready, self.alive, self.startup_failed,
                            tuple(m.status for m in self._machines.values()))

    def __repr__(self) -> str:
        return (f"<ProbeEngine started={self.started} ready={self.ready} alive={self.alive} "
                f"probes={[str(k) for k in self._machines]}>")
