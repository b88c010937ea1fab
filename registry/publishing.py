"""The publisher's parts: its config, its counters, and the error for an instance id used twice.

See :mod:`registry.publisher`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import RecordError, RegistryError
from .records import InstanceRecord, decode_instance
from .session import RecoveryConfig

__all__ = ["FAILURES_BEFORE_PROBLEM", "InstanceIdConflict", "PublisherConfig", "PublisherStats", "decode_or_none",
           "hold_s", "names_endpoint"]


@dataclass(frozen=True, kw_only=True)
class PublisherConfig:
    """``verify_interval_s``: how often the worker re-reads its node even without
    events (a safety net; the exists-watch on the node catches deletions at once).
    ``retry_delay_s`` / ``max_retry_delay_s``: back-off after a failed write
    (and while another live instance holds our id). ``recovery``: when and how
    the client's :class:`~registry.session.SessionMonitor` restarts a client
    that ZooKeeper refuses (None: never; see :mod:`registry.session`).

    ``min_write_interval_s`` (0: off): a change of weight or capacity alone
    waits until this long after our last write, and the changes made
    meanwhile go out as one write (the latest intent). Every such write
    notifies each client that watches the node, so this bounds what one pod
    costs the ensemble whatever its controller does; a change clients must
    act on (enabled, state, models, address; registering, deregistering) is
    written at once. The agent sets it from its slow start (see
    ``server_agent.agent``); 0 by default, so a plain publisher writes each
    update as it comes."""

    verify_interval_s: float = 60.0
    retry_delay_s: float = 0.1
    max_retry_delay_s: float = 5.0
    recovery: RecoveryConfig | None = field(default_factory=RecoveryConfig)
    min_write_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.verify_interval_s <= 0 or self.retry_delay_s <= 0:
            raise ValueError("intervals must be positive")
        if self.min_write_interval_s < 0:
            raise ValueError(f"min_write_interval_s must be >= 0, got {self.min_write_interval_s!r}")
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
    coalesced: int = 0  # intents never written alone: a later one replaced them within min_write_interval_s
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


_MINOR = frozenset({"weight", "capacity", "updated_ms"})


def hold_s(written: InstanceRecord | None, desired: InstanceRecord, since_write_s: float, interval_s: float) -> float:
    """How long to hold ``desired`` back: a weight/capacity change alone, until ``interval_s`` after the last write."""
    if written is None or interval_s <= 0 or since_write_s >= interval_s:
        return 0.0
    changed = {f.name for f in fields(desired) if getattr(desired, f.name) != getattr(written, f.name)}
    return interval_s - since_write_s if changed <= _MINOR else 0.0


def decode_or_none(data: bytes | None) -> InstanceRecord | None:
    """The record in a node's data, or None when it holds none we can read."""
    try:
        return decode_instance(data)
    except RecordError:
        return None


def names_endpoint(data: bytes | None, endpoint: str) -> bool:
    """Whether a node's data is a record that names ``endpoint``."""
    rec = decode_or_none(data)
    return rec is not None and rec.endpoint == endpoint


FAILURES_BEFORE_PROBLEM = 3
"""Consecutive failed writes before :attr:`Publisher.problem` reports one (one is a blip, retried in 0.1 s)."""
