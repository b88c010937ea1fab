"""What the agent shows of itself: one immutable picture, swapped in by its loop after every step.

The HTTP endpoints (:mod:`server_agent.http`) and tests read it without a lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.session import SessionStatus

from .capacity import CapacityReport
from .estimator import CapacityEstimator
from .lifecycle import Phase
from .probes import EngineStatus, ProbeKind
from .server_io import Reading
from .weight import Health

__all__ = ["AgentView"]


@dataclass(frozen=True, slots=True)
class AgentView:
    """An immutable picture of the agent, swapped in by the loop after every step (HTTP reads it)."""

    phase: Phase
    engine: EngineStatus
    capacity: CapacityReport
    weight: float  # the controller's weight now
    published_weight: float | None
    health: Health  # the latest sample's raw factors
    health_factor: float  # the health the weight is computed with (integrator x smoothed factors)
    ramp: float
    estimator: CapacityEstimator  # read-only here: the loop owns it
    server: Reading | None
    zk_connected: bool
    zk_writes: int
    weight_publishes: int
    probe_results: Mapping[tuple[str, bool], int]
    heartbeat: float
    last_transition: str = ""
    shutdown_requested: bool = False
    forced: bool = False
    drain: str = ""  # how the shutdown's in-flight wait ended: "server idle: ...", "... deregistering anyway"
    record: Mapping[str, Any] = field(default_factory=dict)
    registry: SessionStatus | None = None  # connected / suspended / lost / reconnecting-fresh
    registration_problem: str | None = None  # registered, but the node cannot be written (id conflict, errors)

    def reason(self, kind: ProbeKind) -> str:
        for p in self.engine.probes:
            if p.kind is kind:
                return p.last_reason
        return ""
