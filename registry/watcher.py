"""MembershipWatcher: immutable snapshots of one service's members, kept live.

    watcher = MembershipWatcher(client, "ctr", config=WatcherConfig(snapshot_file=path))
    watcher.start()
    snap = watcher.snapshot            # never blocks, never does I/O
    watcher.subscribe(on_snapshot)     # called on the watcher's thread

How it stays correct with one-shot watches:

- the service node may not exist: an ``exists`` watch waits for it, then the
  children are listed (a plain kazoo ``ChildrenWatch`` stops for good when
  its node is deleted; this one re-arms);
- every child's data is read with a watch, pipelined (``get_async``), and
  re-read when it fires; children are re-listed when the list changes;
- after every (re)connection everything is read again, so a session expiry
  (which drops all watches) or a missed event cannot leave it wrong; after
  a reconnect the re-read waits a random fraction of
  ``WatcherConfig.resync_jitter_s``, so that thousands of clients that
  reconnect together after a leader election do not re-read together;
- bad nodes are skipped and counted (``snapshot.rejected``), never raised;
- while ZooKeeper is unreachable the last good snapshot stays, marked stale;
- each good snapshot is written atomically to ``snapshot_file``; at start,
  when ZooKeeper is unreachable, the watcher serves that file's members;
- when ZooKeeper lost its data and refuses the client's session, the shared
  :class:`~registry.session.SessionMonitor` restarts the client with a fresh
  session (``WatcherConfig.recovery``); meanwhile the last good snapshot
  stays, marked stale, and after the restart everything is read again.

Fleet scale (``watch_filter``): a client that routes over a subset keeps
data watches on that subset only (plus the children watch). Every other
member is still in the snapshot: read without a watch when it appears,
refreshed now and then without one (:class:`~registry.watchset.RefreshConfig`);
the filter is asked again whenever a member joins, leaves or changes. The
bookkeeping and its costs are in :mod:`registry.watchset`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import WatchedEvent

from ._loop import WatchLoop
from .errors import RecordError
from .membership import MembershipReducer, MembershipSnapshot, Observation, Protection, ReducerState
from .records import InstanceRecord, decode_member
from .session import RecoveryConfig, SessionMonitor, SessionStatus
from .snapshot_file import load_snapshot_file, write_snapshot_file
from .watchset import RefreshConfig, WatchBook, WatcherStats, WatchFilter
from .zk import RegistryPaths

__all__ = ["MembershipWatcher", "WatchFilter", "WatcherConfig", "WatcherStats", "load_snapshot_file",
           "write_snapshot_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WatcherConfig:
    """``recovery``: when the client's session monitor restarts a client that
    ZooKeeper refuses (see :mod:`registry.session`; None: never).
    ``refresh``: how often members outside the watch filter are read again.
    ``resync_jitter_s`` (1 s): after a reconnect, the full re-read waits a
    uniform random part of this. ZooKeeper drops a connection's watches with
    it and kazoo re-sets none, so every client re-reads what it watches; 1 s
    spreads 10,000 clients' re-reads over a second (a leader election already
    took longer) and stays well inside the 2 s a membership change may take.
    ``relist_delay_s`` (0.5 s): a children notification is answered with a
    ``getChildren`` after a uniform random part of this; changes made meanwhile
    notify nobody (the children watch is not re-armed yet) and arrive in that
    one list; and a client lists at most once per ``relist_delay_s``. A rolling
    restart of 1,000 pods in a minute is 33 list changes a second: at once,
    10,000 clients would list 1,000 names 330,000 times a second; this way at
    most twice a second each (the re-armed watch fires again at once in a
    storm: waiting only U(0, 0.5 s) it was 4 times a second, and listing is
    most of what a change costs a client). A member joining or leaving reaches
    the client at most 0.5 s later for it when all is calm, 1 s in a storm."""

    protection: Protection = field(default_factory=Protection)
    snapshot_file: Path | None = None
    read_timeout_s: float = 10.0
    recovery: RecoveryConfig | None = field(default_factory=RecoveryConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    resync_jitter_s: float = 1.0
    relist_delay_s: float = 0.5

    def __post_init__(self) -> None:
        if self.snapshot_file is not None:
            object.__setattr__(self, "snapshot_file", Path(self.snapshot_file))
        for name in ("resync_jitter_s", "relist_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"WatcherConfig.{name}: expected seconds >= 0, got {getattr(self, name)!r}")


class MembershipWatcher(WatchLoop[MembershipSnapshot]):
    def __init__(self, client: KazooClient, service: str, *, paths: RegistryPaths | None = None,
                 config: WatcherConfig | None = None, clock: Callable[[], float] = time.time,
                 watch_filter: WatchFilter | None = None, rng: random.Random | None = None) -> None:
        """``watch_filter(records)``: the ids (of ``records``, every known member) to keep data
        watches on; None watches every member. It runs on the watcher's thread: keep it pure and quick."""
        self.config = config or WatcherConfig()
        super().__init__(client, name=f"wei-watcher-{service}", clock=clock,
                         resync_jitter_s=self.config.resync_jitter_s, rng=rng)
        self.service = service
        self._filter = watch_filter
        self._book = WatchBook(self.config.refresh, rng=self._rng)
        if watch_filter is not None:
            self._book.choose(frozenset(), ())  # nothing judged yet: read unknown members without a watch
        self.stats = WatcherStats()
        self._paths = paths or RegistryPaths()
        self._path = self._paths.service(service)
        self._reducer = MembershipReducer(service, self.config.protection)
        self._state: ReducerState = self._reducer.initial()
        self._members: dict[str, InstanceRecord] = {}
        self._rejected: dict[str, str] = {}
        self._filtered: dict[str, InstanceRecord] | None = None  # the members the filter last judged
        self._relist_at: float | None = None  # a children notification waits for its getChildren until then
        self._listed_at = float("-inf")  # the last getChildren
        self._monitor: SessionMonitor | None = None
        self.rejected_total = 0

    # -- public ------------------------------------------------------------------

    def _current(self) -> MembershipSnapshot:
        return self._state.snapshot

    def _describe(self, snap: MembershipSnapshot) -> str:
        return f"snapshot v{snap.version} with {sorted(snap.instances)} ({snap.reason})"

    def start(self, *, timeout: float | None = 10.0) -> MembershipWatcher:
        """Start watching; wait up to ``timeout`` for the first snapshot (from ZooKeeper or file).

        Without one in time it logs a warning and keeps trying in the background:
        ``snapshot.source`` stays ``"empty"`` until data arrives.
        """
        if self._monitor is None and self.config.recovery is not None:
            self._monitor = SessionMonitor.acquire(self._client, self.config.recovery)
        self._start_loop()
        if timeout is not None:
            try:
                self.wait_for(lambda s: s.source != "empty", timeout=timeout)
            except TimeoutError:
                log.warning("watcher %s: no membership yet after %ss; still trying", self.service, timeout)
        return self

    def close(self) -> None:
        self._stop_loop()
        if self._monitor is not None:
            self._monitor.release()
            self._monitor = None
        with self._cond:
            self._cond.notify_all()

    @property
    def registry_state(self) -> SessionStatus | None:
        """The client's registry state (connected, suspended, lost, reconnecting-fresh); None without recovery."""
        m = self._monitor
        return m.status if m is not None else None

    def __enter__(self) -> MembershipWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def updates(self, timeout: float | None = None) -> Iterator[MembershipSnapshot]:
        """Yield the current snapshot, then each new version; stops after ``timeout`` idle or close."""
        version = -1
        while not self._stopped.is_set():
            with self._cond:
                ok = self._cond.wait_for(
                    lambda: self._state.snapshot.version != version or self._stopped.is_set(), timeout)
                snap = self._state.snapshot
            if not ok or self._stopped.is_set():
                return
            version = snap.version
            yield snap

    def staleness(self) -> float:
        return self.snapshot.staleness(self._clock())

    def set_watch_filter(self, watch_filter: WatchFilter | None) -> None:
        """Use another filter (or the same one again, after what it reads changed); applied on the
        watcher's thread: newly wanted members are armed, the others are not re-armed once they fire."""
        self._filter = watch_filter
        self._queue.put(("refilter", watch_filter))

    @property
    def watched(self) -> frozenset[str]:
        """Members that carry a data watch of ours now (a dropped one counts until it fires)."""
        return frozenset(self._book.armed)

    # -- worker hooks ------------------------------------------------------------

    def _boot(self) -> None:
        if self._client.connected or self.config.snapshot_file is None:
            return
        snap = load_snapshot_file(self.config.snapshot_file, self.service, now=self._clock())
        if snap is not None:
            log.warning("watcher %s: ZooKeeper unreachable at start; serving %d members from %s",
                        self.service, len(snap), self.config.snapshot_file)
            self._publish(self._reducer.initial(snap))

    def _connected(self) -> None:
        self._book.reset()
        self._relist_at = None
        children = self._list_children()
        if self._filter is None:
            self._members.clear()
            self._rejected.clear()
        else:  # unwatched members keep their records and their refresh times; the rest is read again
            listed = set(children)
            for gone in (self._members.keys() | self._rejected.keys()) - listed:
                self._forget(gone)
            children = [c for c in children if c not in self._members or self._book.wants(c)]
        self._fetch(children)
        self._refilter()
        self._reduce("resync")

    def _disconnected(self, state: str) -> None:
        self._publish(self._reducer.mark_stale(self._state, self._clock(), f"ZooKeeper {state.lower()}"))

    def _events(self, events: list[WatchedEvent]) -> None:
        relist = False
        refetch: set[str] = set()
        for e in events:
            if e.path == self._path:
                relist = relist or e.type in ("CHILD", "CREATED", "DELETED")
            elif e.path.startswith(self._path + "/"):
                child = e.path[len(self._path) + 1:]
                self.stats.data_events += 1
                self.stats.dropped_fires += self._book.fired(child)
                if e.type == "DELETED":
                    self._forget(child)
                    refetch.discard(child)
                else:
                    refetch.add(child)
        if relist:
            self.stats.child_events += 1
            if self.config.relist_delay_s <= 0:
                refetch |= self._relist()
            elif self._relist_at is None:
                delay = self.config.relist_delay_s
                self._relist_at = max(self._clock() + self._rng.uniform(0.0, delay), self._listed_at + delay)
        self._fetch(sorted(refetch))
        self._refilter()
        self._reduce("watch")

    def _relist(self) -> set[str]:
        """List the children again (re-arming their watch); forget the gone, return the new."""
        children = set(self._list_children())
        for gone in (self._members.keys() | self._rejected.keys()) - children:
            self._forget(gone)
        return children - self._members.keys() - self._rejected.keys()

    def _other(self, kind: str, items: list[object]) -> None:
        if kind == "refilter":
            self._filtered = None  # judge again, now or at the next resync
            if self._client.connected:
                self._refilter()
                self._reduce("watch filter changed")

    def _tick(self, now: float) -> None:
        if self._relist_at is not None and now >= self._relist_at and self._client.connected:
            self._relist_at = None
            self._fetch(sorted(self._relist()))
            self._refilter()
            self._reduce("watch")
        due = self._book.due(now) if self._refreshing() else []
        if due:
            self.stats.refreshes += len(due)
            self._fetch(due)
            self._refilter()
            self._reduce("refresh")
        nxt = self._reducer.tick(self._state, now)
        if nxt is not self._state:
            self._publish(nxt)

    def _deadline(self) -> float | None:
        refresh = self._book.next_due() if self._refreshing() else None
        return min((d for d in (self._state.hold_deadline, refresh, self._relist_at) if d is not None), default=None)

    def _refreshing(self) -> bool:
        """Refresh only while all is well: not while a resync or an error's back-off is pending."""
        return self._client.connected and not self._need_resync and self._retry_at is None

    # -- the watch filter ----------------------------------------------------------

    def _refilter(self) -> None:
        """Ask the filter again if a member joined, left or changed; arm what it newly wants."""
        if self._filter is None:
            self._book.choose(None, self._members)
        elif self._filtered is None or self._members != self._filtered:
            self._filtered = dict(self._members)
            self.stats.filter_runs += 1
            try:
                self._book.choose(self._filter(MappingProxyType(self._filtered)), self._members)
            except Exception:  # keep the last choice: watching everyone is what the filter is there to avoid
                log.exception("watcher %s: watch filter failed; keeping the last choice", self.service)
        arm = self._book.to_arm(self._members)
        if arm:
            self._fetch(arm)

    # -- ZooKeeper reads ---------------------------------------------------------

    def _list_children(self) -> list[str]:
        self.stats.relists += 1
        self._listed_at = self._clock()
        try:
            return self._client.get_children(self._path, watch=self._on_watch)
        except NoNodeError:
            # Wait for the node to appear; if it appeared in between, list again.
            if self._client.exists(self._path, watch=self._on_watch) is None:
                return []
            return self._client.get_children(self._path, watch=self._on_watch)

    def _fetch(self, children: list[str]) -> None:
        """Read ``children`` pipelined, each with a watch if the book says so."""
        pending = []
        for c in children:
            watched = self._book.watch_on_read(c, known=c in self._members)
            pending.append((c, watched, self._client.get_async(
                f"{self._path}/{c}", watch=self._on_watch if watched else None)))
        now = self._clock()
        for child, watched, result in pending:
            if watched:
                self.stats.watched_reads += 1
            else:
                self.stats.unwatched_reads += 1
            try:
                data, _ = result.get(timeout=self.config.read_timeout_s)
            except NoNodeError:
                self._forget(child)
                continue
            self._book.read(child, watched=watched, now=now)
            try:
                rec = decode_member(data, service=self.service, node=child)
            except RecordError as e:
                self._members.pop(child, None)
                if self._rejected.get(child) != str(e):
                    self.rejected_total += 1
                    log.warning("watcher %s: skipping node %s: %s", self.service, child, e)
                self._rejected[child] = str(e)
                continue
            self._rejected.pop(child, None)
            self._members[child] = rec

    def _forget(self, child: str) -> None:
        self._members.pop(child, None)
        self._rejected.pop(child, None)
        self._book.forget(child)

    # -- publishing ----------------------------------------------------------------

    def _reduce(self, reason: str) -> None:
        obs = Observation(instances=dict(self._members), rejected=dict(self._rejected))
        self._publish(self._reducer.observe(self._state, obs, self._clock(), reason))

    def _publish(self, state: ReducerState) -> None:
        old = self._state.snapshot
        with self._cond:
            self._state = state
            self._cond.notify_all()
        snap = state.snapshot
        if snap.version == old.version:
            return
        log.debug("watcher %s: v%d %s", self.service, snap.version, snap.reason)
        if self.config.snapshot_file is not None and snap.source == "zookeeper" and not snap.stale:
            try:
                write_snapshot_file(self.config.snapshot_file, snap)
            except OSError as e:
                log.warning("watcher %s: cannot write %s: %s", self.service, self.config.snapshot_file, e)
        self._notify(snap)

    def __repr__(self) -> str:
        s = self.snapshot
        return (f"<MembershipWatcher {self.service} v{s.version} members={len(s)} watched={len(self._book.armed)} "
                f"held={len(s.held)} rejected={len(s.rejected)} stale={s.stale}>")
