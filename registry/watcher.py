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
  (which drops all watches) or a missed event cannot leave it wrong;
- bad nodes are skipped and counted (``snapshot.rejected``), never raised;
- while ZooKeeper is unreachable the last good snapshot stays, marked stale;
- each good snapshot is written atomically to ``snapshot_file``; at start,
  when ZooKeeper is unreachable, the watcher serves that file's members;
- when ZooKeeper lost its data and refuses the client's session, the shared
  :class:`~registry.session.SessionMonitor` restarts the client with a fresh
  session (``WatcherConfig.recovery``); meanwhile the last good snapshot
  stays, marked stale, and after the restart everything is read again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
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
from .records import InstanceRecord, decode_member, instance_from_json, instance_to_json
from .session import RecoveryConfig, SessionMonitor, SessionStatus
from .zk import RegistryPaths

__all__ = ["MembershipWatcher", "WatcherConfig", "load_snapshot_file", "write_snapshot_file"]

log = logging.getLogger(__name__)
FILE_FORMAT = "weiserving.membership/1"


@dataclass(frozen=True, kw_only=True)
class WatcherConfig:
    """``recovery``: when the client's session monitor restarts a client that
    ZooKeeper refuses (see :mod:`registry.session`; None: never)."""

    protection: Protection = field(default_factory=Protection)
    snapshot_file: Path | None = None
    read_timeout_s: float = 10.0
    recovery: RecoveryConfig | None = field(default_factory=RecoveryConfig)

    def __post_init__(self) -> None:
        if self.snapshot_file is not None:
            object.__setattr__(self, "snapshot_file", Path(self.snapshot_file))


class MembershipWatcher(WatchLoop[MembershipSnapshot]):
    def __init__(self, client: KazooClient, service: str, *, paths: RegistryPaths | None = None,
                 config: WatcherConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(client, name=f"wei-watcher-{service}", clock=clock)
        self.service = service
        self.config = config or WatcherConfig()
        self._paths = paths or RegistryPaths()
        self._path = self._paths.service(service)
        self._reducer = MembershipReducer(service, self.config.protection)
        self._state: ReducerState = self._reducer.initial()
        self._members: dict[str, InstanceRecord] = {}
        self._rejected: dict[str, str] = {}
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
        children = self._list_children()
        self._members.clear()
        self._rejected.clear()
        self._fetch(children)
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
                if e.type == "DELETED":
                    self._forget(child)
                    refetch.discard(child)
                else:
                    refetch.add(child)
        if relist:
            children = set(self._list_children())
            for gone in (self._members.keys() | self._rejected.keys()) - children:
                self._forget(gone)
            refetch |= children - self._members.keys() - self._rejected.keys()
        self._fetch(sorted(refetch))
        self._reduce("watch")

    def _tick(self, now: float) -> None:
        nxt = self._reducer.tick(self._state, now)
        if nxt is not self._state:
            self._publish(nxt)

    def _deadline(self) -> float | None:
        return self._state.hold_deadline

    # -- ZooKeeper reads ---------------------------------------------------------

    def _list_children(self) -> list[str]:
        try:
            return self._client.get_children(self._path, watch=self._on_watch)
        except NoNodeError:
            # Wait for the node to appear; if it appeared in between, list again.
            if self._client.exists(self._path, watch=self._on_watch) is None:
                return []
            return self._client.get_children(self._path, watch=self._on_watch)

    def _fetch(self, children: list[str]) -> None:
        pending = [(c, self._client.get_async(f"{self._path}/{c}", watch=self._on_watch)) for c in children]
        for child, result in pending:
            try:
                data, _ = result.get(timeout=self.config.read_timeout_s)
            except NoNodeError:
                self._forget(child)
                continue
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
        return (f"<MembershipWatcher {self.service} v{s.version} members={len(s)} "
                f"held={len(s.held)} rejected={len(s.rejected)} stale={s.stale}>")


def write_snapshot_file(path: Path, snap: MembershipSnapshot) -> None:
    """Atomically replace ``path`` with the snapshot (temp file, fsync, rename)."""
    doc = {
        "format": FILE_FORMAT,
        "service": snap.service,
        "version": snap.version,
        "synced_at": snap.synced_at,
        "instances": [instance_to_json(r) for r in snap.instances.values() if r.id not in snap.held],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_snapshot_file(path: Path, service: str, *, now: float) -> MembershipSnapshot | None:
    """The snapshot saved in ``path``, stale since it was synced; None if absent or unusable."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("snapshot file %s unreadable: %s", path, e)
        return None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT or doc.get("service") != service:
        log.warning("snapshot file %s is not a %s snapshot of %r", path, FILE_FORMAT, service)
        return None
    members: dict[str, InstanceRecord] = {}
    rejected: dict[str, str] = {}
    for i, obj in enumerate(doc.get("instances") or []):
        try:
            rec = instance_from_json(obj)
            members[rec.id] = rec
        except RecordError as e:
            rejected[f"#{i}"] = str(e)
    synced_at = doc.get("synced_at")
    synced_at = float(synced_at) if isinstance(synced_at, int | float) else now
    return MembershipSnapshot(
        service=service,
        version=1,
        instances=MappingProxyType(dict(sorted(members.items()))),
        rejected=MappingProxyType(rejected),
        synced_at=synced_at,
        stale_since=synced_at,
        source="file",
        reason=f"loaded {len(members)} members from {path} (ZooKeeper unreachable)",
    )

