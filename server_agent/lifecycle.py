"""The registration lifecycle as a pure state machine: verdicts in, one transition out.

The shell feeds :meth:`Lifecycle.step` the probe engine's verdict (may the
instance take traffic?), whether the slow-start ramp is still running and
whether a shutdown was asked for; it gets back at most one
:class:`Transition` and does the ZooKeeper write it names. Nothing here
touches a clock, a socket or ZooKeeper.

::

    WAITING --routable--> WARMING --ramp done--> SERVING
                             ^  \\                  |
                 routable    |   not routable      | not routable
                             |    v                v
                            DRAINED <--------------+
    any --shutdown--> STOPPING --(shell: drain, wait, deregister)--> STOPPED

- Register only once startup and readiness have passed (``routable``), as
  WARMING with the ramp's low weight; SERVING once the ramp completes.
- Readiness lost: drain (``enabled: false``, weight 0, the node stays, so a
  client sees a deliberate departure rather than a possible mass loss).
- Readiness back: enable again as WARMING and restart the ramp -- the pod was
  out of rotation and its health is unproven under load.
- Shutdown wins over everything and is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Lifecycle", "Move", "Phase", "Transition"]


class Phase(StrEnum):
    WAITING = "waiting"  # not registered: startup or readiness has not passed yet
    WARMING = "warming"  # registered, slow-start ramp running
    SERVING = "serving"  # registered, full weight
    DRAINED = "drained"  # registered, enabled: false, weight 0 (readiness failing)
    STOPPING = "stopping"  # shutdown sequence running
    STOPPED = "stopped"  # deregistered, done

    @property
    def registered(self) -> bool:
        return self in (Phase.WARMING, Phase.SERVING, Phase.DRAINED)

    @property
    def routable(self) -> bool:
        return self in (Phase.WARMING, Phase.SERVING)


class Move(StrEnum):
    REGISTER = "register"  # create the node: WARMING, ramp weight
    PROMOTE = "promote"  # WARMING -> SERVING
    DRAIN = "drain"  # enabled false, weight 0
    ENABLE = "enable"  # enabled true, WARMING, ramp restarted
    SHUTDOWN = "shutdown"  # start the drain -> wait -> deregister sequence


@dataclass(frozen=True, slots=True)
class Transition:
    move: Move
    before: Phase
    after: Phase
    reason: str

    def __str__(self) -> str:
        return f"{self.move}: {self.before} -> {self.after} ({self.reason})"


# (phase, routable) -> (move, next phase) when the ramp and shutdown do not decide.
_TABLE: dict[tuple[Phase, bool], tuple[Move, Phase]] = {
    (Phase.WAITING, True): (Move.REGISTER, Phase.WARMING),
    (Phase.WARMING, False): (Move.DRAIN, Phase.DRAINED),
    (Phase.SERVING, False): (Move.DRAIN, Phase.DRAINED),
    (Phase.DRAINED, True): (Move.ENABLE, Phase.WARMING),
}


class Lifecycle:
    """One instance's registration phase. Invariant: STOPPING and STOPPED are final."""

    def __init__(self) -> None:
        self._phase = Phase.WAITING
        self.transitions = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    def step(self, *, routable: bool, ramping: bool, shutdown: bool = False, why: str = "") -> Transition | None:
        """The transition to make now, already applied to :attr:`phase`; None when nothing changes.

        ``why`` is the probes' reason, carried into the transition for logs.
        """
        before = self._phase
        if before in (Phase.STOPPING, Phase.STOPPED):
            return None
        if shutdown:
            return self._go(Move.SHUTDOWN, Phase.STOPPING, "shutdown requested")
        entry = _TABLE.get((before, routable))
        if entry is not None:
            move, after = entry
            default = "startup and readiness passed" if routable else "readiness failed"
            return self._go(move, after, why or default)
        if before is Phase.WARMING and not ramping:
            return self._go(Move.PROMOTE, Phase.SERVING, "slow-start ramp complete")
        return None

    def stopped(self) -> None:
        """The shell finished the shutdown sequence (deregistered)."""
        self._phase = Phase.STOPPED

    def _go(self, move: Move, after: Phase, reason: str) -> Transition:
        t = Transition(move, self._phase, after, reason)
        self._phase = after
        self.transitions += 1
        return t

    def __repr__(self) -> str:
        return f"<Lifecycle {self._phase} transitions={self.transitions}>"
