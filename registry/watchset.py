"""Which members a watcher keeps a ZooKeeper data watch on, and when it reads the others again.

No I/O here: :class:`~registry.watcher.MembershipWatcher` tells the book what
it read (with or without a watch), which watches fired, and what the watch
filter wants; the book answers which members to arm and which unwatched ones
are due for a refresh.

Why a filter: a data watch per member per client costs the ensemble one
watch each, and every write to a member notifies every client that watches
it, which then reads the node again. A client that routes over a subset of
k members out of N needs fresh records only for those k; the others must
still be *known* (a pod hosting a version the subset lacks stays reachable),
so they are read once without a watch when they appear in the children list
and then refreshed now and then without one (:class:`RefreshConfig`).

A data watch cannot be taken back with the client we use (kazoo 2.11 has no
``removeWatches``): a member that leaves the filter keeps its armed watch
until it next fires; it is then read without a watch and never re-armed.
That costs one notification and one read per dropped watch, once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from .records import InstanceRecord

__all__ = ["RefreshConfig", "WatchBook", "WatchFilter", "WatcherStats"]

WatchFilter = Callable[[Mapping[str, InstanceRecord]], Collection[str]]
"""Given every known record (instance id -> record), the ids to keep data watches on."""


@dataclass(frozen=True, kw_only=True)
class RefreshConfig:
    """How often a member outside the watch filter is read again (without a watch).

    The cost is what sets the period: C clients, each refreshing N - k
    unwatched members every P seconds, send C (N - k) / P reads per second.
    At 10,000 clients over 1,000 pods with subsets of 20, a 45 s period would
    be 220,000 reads/s, more than the whole fleet's weight writes cost with a
    watch on every member. So the period is ``period_s`` (60 s) or longer:
    each client refreshes at most ``max_reads_per_s`` (1) members a second,
    10,000 reads/s for 10,000 clients (1,000 pods: a record is about 16 min
    old at most, x ``1 + jitter``). What such a record may miss is only a
    change of a member that stays: a new member is read when the children
    list shows it, a departed one dropped when it vanishes from that list,
    and the members a client routes over are watched. ``jitter`` (0.5):
    each read draws its next one uniformly in [P, 1.5 P], so refreshes spread
    out instead of arriving in waves.
    """

    period_s: float = 60.0
    max_reads_per_s: float = 1.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not self.period_s > 0 or not self.max_reads_per_s > 0:
            raise ValueError(f"RefreshConfig: period_s and max_reads_per_s must be positive, got {self!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RefreshConfig.jitter: expected a fraction in [0, 1], got {self.jitter!r}")

    def period(self, unwatched: int) -> float:
        """Seconds between two reads of one unwatched member when ``unwatched`` members are refreshed."""
        return max(self.period_s, unwatched / self.max_reads_per_s)


@dataclass
class WatcherStats:
    """What a watcher cost ZooKeeper so far (counted at the client)."""

    child_events: int = 0  # children-watch notifications
    data_events: int = 0  # data-watch notifications (changed or deleted)
    dropped_fires: int = 0  # of which: a watch the filter no longer wants, fired once more
    relists: int = 0  # getChildren
    watched_reads: int = 0  # getData that set a watch
    unwatched_reads: int = 0  # getData without a watch (new members, dropped watches)
    refreshes: int = 0  # of which: periodic refreshes of unwatched members
    filter_runs: int = 0

    @property
    def notifications(self) -> int:
        return self.child_events + self.data_events

    @property
    def reads(self) -> int:
        return self.relists + self.watched_reads + self.unwatched_reads


class WatchBook:
    """Armed data watches, the filter's choice, and the unwatched members' refresh times."""

    def __init__(self, config: RefreshConfig | None = None, *, rng: random.Random | None = None) -> None:
        self.config = config or RefreshConfig()
        self._rng = rng or random.Random()
        self.armed: set[str] = set()  # a data watch is set on the server (until it fires)
        self.wanted: frozenset[str] | None = None  # None: every member is watched
        self._due: dict[str, float] = {}  # unwatched member -> when to read it again
        self._next: float | None = None  # min(_due.values()), kept so the loop's every turn is O(1)
        self._next_known = True

    def wants(self, member: str) -> bool:
        return self.wanted is None or member in self.wanted

    def watch_on_read(self, member: str, known: bool) -> bool:
        """Whether a read of ``member`` should set a watch.

        A member the filter has not judged yet (its record unknown) is read
        without one: the filter needs its record first, and a watch set by
        mistake cannot be taken back.
        """
        return self.wanted is None or (known and member in self.wanted)

    def choose(self, wanted: Iterable[str] | None, known: Collection[str]) -> frozenset[str] | None:
        """Take the filter's answer (restricted to known members; None: all) and return it."""
        self.wanted = None if wanted is None else frozenset(wanted) & frozenset(known)
        return self.wanted

    def read(self, member: str, *, watched: bool, now: float) -> None:
        """``member`` was just read (with a watch or not)."""
        if watched:
            self.armed.add(member)
            self._undue(member)
        elif member not in self.armed:
            self._schedule(member, now)

    def fired(self, member: str) -> bool:
        """A data watch on ``member`` fired (it is one-shot): True if the filter no longer wants it."""
        self.armed.discard(member)
        return not self.wants(member)

    def forget(self, member: str) -> None:
        self.armed.discard(member)
        self._undue(member)

    def reset(self) -> None:
        """The connection was lost: the server dropped every watch of ours (kazoo re-sets none)."""
        self.armed.clear()

    def to_arm(self, known: Collection[str]) -> list[str]:
        """Known members the filter wants that carry no watch yet (O(subset) with a filter:
        every client runs this on every membership change)."""
        if self.wanted is None:
            return sorted(m for m in known if m not in self.armed)
        return sorted(m for m in self.wanted - self.armed if m in known)

    def due(self, now: float) -> list[str]:
        """Unwatched members whose refresh time has come."""
        nxt = self.next_due()
        if nxt is None or nxt > now:
            return []
        return sorted(m for m, t in self._due.items() if t <= now and m not in self.armed)

    def next_due(self) -> float | None:
        if not self._next_known:
            self._next = min(self._due.values(), default=None)
            self._next_known = True
        return self._next

    def _schedule(self, member: str, now: float) -> None:
        period = self.config.period(len(self._due) + (member not in self._due))
        self._undue(member)
        at = self._due[member] = now + period * self._rng.uniform(1.0, 1.0 + self.config.jitter)
        if self._next_known and (self._next is None or at < self._next):
            self._next = at

    def _undue(self, member: str) -> None:
        at = self._due.pop(member, None)
        if at is not None and at == self._next:
            self._next_known = False

    def __repr__(self) -> str:
        wanted = "all" if self.wanted is None else len(self.wanted)
        return f"<WatchBook armed={len(self.armed)} wanted={wanted} unwatched={len(self._due)}>"
