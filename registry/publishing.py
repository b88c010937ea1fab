"""The publisher's parts: its config, its counters, and the error for an instance id used twice.

See :mod:`registry.publisher`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RegistryError
from .session import RecoveryConfig

__all__ = ["FAILURES_BEFORE_PROBLEM", "InstanceIdConflict", "PublisherConfig", "PublisherStats"]


@dataclass(frozen=True, kw_only=True)
class PublisherConfig:
    """``verify_interval_s``: how often the worker re-reads its node even without
    events (a safety net; the exists-watch on the node catches deletions at once).
    ``retry_delay_s`` / ``max_retry_delay_s``: back-off after a failed write
    (and while another live instance holds our id). ``recovery``: when and how
    the client's :class:`~registry.session.SessionMonitor` restarts a client
    that ZooKeeper refuses (None: never; see :mod:`registry.session`)."""

    verify_interval_s: float = 60.0
    retry_delay_s: float = 0.1
    max_retry_delay_s: float = 5.0
    recovery: RecoveryConfig | None = field(default_factory=RecoveryConfig)

    def __post_init__(self) -> None:
        if self.verify_interval_s <= 0 or self.retry_delay_s <= 0:
            raise ValueError("intervals must be positive")
        if self.max_retry_delay_s < self.retry_delay_s:
            raise ValueError("max_retry_delay_s must be >= retry_delay_s")


@dataclass
class PublisherStats:
    creates: int = 0
    sets: int = 0
    deletes: int = 0
    stale_replaced: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    conflicts: int = 0  # times another live instance was found holding our id
    last_error: str = ""

    @property
    def writes(self) -> int:
        return self.creates + self.sets + self.deletes


class InstanceIdConflict(RegistryError):
    """Our path holds a live node of another session that names another endpoint."""

    def __init__(self, path: str, owner: int, theirs: str, ours: str) -> None:
        self.path, self.owner, self.theirs, self.ours = path, owner, theirs, ours
        super().__init__(f"{path} belongs to live session {owner:#x} and names {theirs}, not {ours}: "
                         "is the instance id used twice? Not replacing it; retrying with back-off")


FAILURES_BEFORE_PROBLEM = 3
"""Consecutive failed writes before :attr:`Publisher.problem` reports one (one is a blip, retried in 0.1 s)."""
