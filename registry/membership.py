"""Membership snapshots and the pure reducer that protects them from mass loss.

No I/O here: the watcher feeds observations (what ZooKeeper holds now) and
the current time; :class:`MembershipReducer` returns the next state and the
snapshot to publish.

Mass-loss protection (as Eureka's self-preservation and Dubbo's empty
protection): when an observation would drop more than
``max_loss_fraction`` of the routable members at once, the dropped members
are *retained* for ``hold_s`` seconds (marked in ``MembershipSnapshot.held``) while
every other change applies. If they come back (a session expiry followed by
re-registration, a ZooKeeper hiccup) nothing was lost; if the loss persists
past the window, it is accepted. Only members that were routable count:
instances that drained first (``enabled: false``) leave at once, so a
graceful scale-down is never held back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .records import InstanceRecord

__all__ = ["MembershipReducer", "Observation", "Protection", "ReducerState", "MembershipSnapshot"]

_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class MembershipSnapshot:
    """An immutable view of one service's members.

    ``version`` grows by one with each published change; ``synced_at`` is the
    wall-clock time of the last successful read from ZooKeeper (or from the
    snapshot file); ``stale_since`` is set while ZooKeeper is unreachable
    (the members are the last good ones); ``held`` are members retained by
    mass-loss protection; ``rejected`` maps node names that were skipped to
    why; ``reason`` says why this version exists.
    """

    service: str
    version: int = 0
    instances: Mapping[str, InstanceRecord] = field(default_factory=lambda: _EMPTY)
    held: frozenset[str] = frozenset()
    rejected: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    synced_at: float | None = None
    stale_since: float | None = None
    source: str = "empty"  # "zookeeper" | "file" | "empty"
    reason: str = "no data yet"

    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self):
        return iter(self.instances.values())

    def get(self, instance_id: str) -> InstanceRecord | None:
        return self.instances.get(instance_id)

    def routable(self, model: str | None = None, version: int | None = None) -> tuple[InstanceRecord, ...]:
        """Enabled, non-draining members with weight > 0 (hosting ``model``/``version`` if given)."""
        return tuple(
            r for r in self.instances.values()
            if r.routable and (model is None or r.hosts_model(model, version))
        )

    @property
    def stale(self) -> bool:
        return self.stale_since is not None

    def staleness(self, now: float) -> float:
        """Seconds this snapshot has been possibly out of date (0 while live)."""
        return 0.0 if self.stale_since is None else max(0.0, now - self.stale_since)

    def same_content(self, other: MembershipSnapshot) -> bool:
        return (
            dict(self.instances) == dict(other.instances)
            and self.held == other.held
            and dict(self.rejected) == dict(other.rejected)
            and self.stale_since == other.stale_since
            and self.source == other.source
        )


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What ZooKeeper holds right now: parsed members and rejected node names."""

    instances: Mapping[str, InstanceRecord] = field(default_factory=dict)
    rejected: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Protection:
    """``max_loss_fraction``: a drop of more than this share of routable members
    is held. ``hold_s``: how long it is held unless it persists. 0.5 and 30 s:
    an expired session re-registers within a second or two, a ZooKeeper leader
    election takes seconds, while a real mass failure should not route to dead
    pods for long (clients also eject endpoints that stop answering)."""

    max_loss_fraction: float = 0.5
    hold_s: float = 30.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_loss_fraction < 1.0:
            raise ValueError(f"max_loss_fraction must be in [0, 1), got {self.max_loss_fraction}")
        if self.hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {self.hold_s}")


@dataclass(frozen=True, kw_only=True)
class ReducerState:
    """``held``: id -> (when it vanished, its last record), retained by protection.
    ``recent_losses``: (when, id) of losses accepted within the window; they count
    towards the loss fraction so that a mass loss spread over several watch
    batches is caught like one that arrives at once."""

    snapshot: MembershipSnapshot
    observed: Observation = field(default_factory=Observation)
    held: Mapping[str, tuple[float, InstanceRecord]] = field(default_factory=dict)
    recent_losses: tuple[tuple[float, str], ...] = ()
    hold_deadline: float | None = None  # when the oldest held loss is accepted unless it ends


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" (+{len(ids) - 5})" if len(ids) > 5 else "")


def _describe(old: Mapping[str, InstanceRecord], new: Mapping[str, InstanceRecord]) -> str:
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    # ``is not`` first: a member not read again is the same object, and a record's __eq__ compares
    # every field (0.7 ms per 1,000 members, paid by every client on every change).
    changed = sorted(k for k in new.keys() & old.keys() if new[k] is not old[k] and new[k] != old[k])
    parts = []
    for label, ids in (("added", added), ("removed", removed), ("updated", changed)):
        if ids:
            shown = ", ".join(ids[:5]) + (f" (+{len(ids) - 5})" if len(ids) > 5 else "")
            parts.append(f"{label} {shown}")
    return "; ".join(parts) or "no member changed"


class MembershipReducer:
    """Pure: (state, observation or tick, now) -> next state."""

    def __init__(self, service: str, protection: Protection | None = None) -> None:
        self.service = service
        self.protection = protection or Protection()

    def initial(self, snapshot: MembershipSnapshot | None = None) -> ReducerState:
        snap = snapshot or MembershipSnapshot(service=self.service)
        return ReducerState(snapshot=snap, observed=Observation(instances=dict(snap.instances)))

    def observe(self, state: ReducerState, obs: Observation, now: float, reason: str = "") -> ReducerState:
        """A fresh read of ZooKeeper: apply it, holding back a mass loss.

        The loss fraction counts every routable member lost within the last
        ``hold_s`` (accepted, held, or lost now) against the routable members
        there were: once it exceeds ``max_loss_fraction``, members that vanish
        are held, as Eureka stops expiring leases once too many have expired.
        """
        p = self.protection
        recent = tuple((t, i) for t, i in state.recent_losses if now - t < p.hold_s and i not in obs.instances)
        held = {i: v for i, v in state.held.items() if i not in obs.instances}  # returned ones stop being held
        released = sorted(i for i, (t, _) in held.items() if now - t >= p.hold_s)
        for i in released:
            del held[i]
        prev_live = {k: r for k, r in state.snapshot.instances.items() if k not in state.held}
        newly_lost = {k: r for k, r in prev_live.items() if k not in obs.instances and r.routable}
        newly_held: list[str] = []
        if newly_lost:
            lost_total = len(recent) + len(held) + len(newly_lost)
            base = sum(1 for r in obs.instances.values() if r.routable) + lost_total
            if p.enabled and lost_total / base > p.max_loss_fraction:
                held.update({k: (now, r) for k, r in newly_lost.items()})
                newly_held = sorted(newly_lost)
            else:
                recent += tuple((now, k) for k in sorted(newly_lost))
        merged = dict(obs.instances)
        merged.update({i: r for i, (_, r) in held.items()})
        parts = [_describe(state.snapshot.instances, merged)]
        if newly_held:
            parts.append(f"lost {_ids(newly_held)}: held by mass-loss protection for {p.hold_s:g}s")
        if released:
            parts.append(f"protection expired for {_ids(released)}")
        if len(parts) > 1 and parts[0] == "no member changed":
            parts.pop(0)
        detail = "; ".join(parts)
        snap = self._next(state.snapshot, merged, frozenset(held), obs.rejected, now,
                          f"{reason}: {detail}" if reason else detail)
        return self._state(snap, obs, held, recent)

    def tick(self, state: ReducerState, now: float) -> ReducerState:
        """Time passed: accept held losses whose window is over."""
        released = sorted(i for i, (t, _) in state.held.items() if now - t >= self.protection.hold_s)
        if not released:
            return state
        held = {i: v for i, v in state.held.items() if i not in released}
        merged = dict(state.observed.instances)
        merged.update({i: r for i, (_, r) in held.items()})
        snap = self._next(
            state.snapshot, merged, frozenset(held), state.observed.rejected, now,
            f"mass-loss protection expired after {self.protection.hold_s:g}s: removed {_ids(released)}",
            synced=False,
        )
        return self._state(snap, state.observed, held, state.recent_losses)

    def _state(self, snap: MembershipSnapshot, obs: Observation, held: dict[str, tuple[float, InstanceRecord]],
               recent: tuple[tuple[float, str], ...]) -> ReducerState:
        deadline = min((t for t, _ in held.values()), default=None)
        return ReducerState(snapshot=snap, observed=obs, held=MappingProxyType(held), recent_losses=recent,
                            hold_deadline=None if deadline is None else deadline + self.protection.hold_s)

    def mark_stale(self, state: ReducerState, now: float, why: str) -> ReducerState:
        snap = state.snapshot
        if snap.stale_since is not None:
            return state
        return replace(state, snapshot=replace(
            snap, version=snap.version + 1, stale_since=now, reason=f"{why}; serving last good snapshot"))

    # -- helpers -----------------------------------------------------------------

    def _next(self, prev: MembershipSnapshot, members: dict[str, InstanceRecord], held: frozenset[str],
              rejected: Mapping[str, str], now: float, reason: str, *, synced: bool = True) -> MembershipSnapshot:
        candidate = MembershipSnapshot(
            service=self.service,
            version=prev.version,
            instances=MappingProxyType(dict(sorted(members.items()))),
            held=held,
            rejected=MappingProxyType(dict(rejected)),
            synced_at=now if synced else prev.synced_at,
            stale_since=None,
            source="zookeeper",
            reason=reason,
        )
        if candidate.same_content(prev):
            return replace(prev, synced_at=candidate.synced_at)
        return replace(candidate, version=prev.version + 1)


def snapshot_from_records(service: str, records: Iterable[InstanceRecord], **kw: object) -> MembershipSnapshot:
    return MembershipSnapshot(service=service,
                    instances=MappingProxyType({r.id: r for r in sorted(records, key=lambda r: r.id)}),
                    **kw)  # type: ignore[arg-type]
