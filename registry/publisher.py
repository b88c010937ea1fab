"""Publisher: keeps one instance's ephemeral node in ZooKeeper equal to what we want.

The caller states intent (:meth:`register`, :meth:`update`, :meth:`drain`,
:meth:`deregister`); one worker thread owns every ZooKeeper write and
reconciles until the node matches, whatever happens to the session:

- SUSPENDED: the server still holds the node; nothing to do, writes wait.
- LOST (session expired): the node is gone, or will be once the server
  notices; as soon as a new session exists the worker creates it again.
- A node with our path but another ``ephemeralOwner`` that names our
  endpoint is the old session's node lingering for up to the session timeout:
  it is deleted and re-created under our session, never left to a
  NodeExistsError. One that names *another* endpoint belongs to another live
  instance using the same id: it is never touched. The conflict is logged
  once, shown in :attr:`Publisher.conflict` and :attr:`Publisher.problem`,
  and the worker retries with back-off (and at once when that node goes).
- ZooKeeper that lost its data refuses our session for good: the shared
  :class:`~registry.session.SessionMonitor` restarts the client with a fresh
  session and the node is written again (``PublisherConfig.recovery``).

The kazoo listener and the watch on our own node only set an event: nothing
blocks inside kazoo's callbacks. ``drain`` is a ``setData`` (no
delete/re-create gap a client could see as the pod vanishing).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, KazooException, NoAuthError, NodeExistsError, NoNodeError, ZookeeperError
from kazoo.security import ACL

from . import publishing as _p
from .errors import NotRegistered, PublisherClosed
from .publishing import FAILURES_BEFORE_PROBLEM, InstanceIdConflict, PublisherConfig, PublisherStats
from .records import InstanceRecord, State, encode_instance
from .session import SessionMonitor
from .zk import RegistryPaths

__all__ = ["InstanceIdConflict", "Publisher", "PublisherConfig", "PublisherStats"]

log = logging.getLogger(__name__)


class Publisher:
    """Publishes one :class:`InstanceRecord` as an ephemeral node."""

    def __init__(
        self,
        client: KazooClient,
        record: InstanceRecord,
        *,
        paths: RegistryPaths | None = None,
        config: PublisherConfig | None = None,
        acl: list[ACL] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._paths = paths or RegistryPaths()
        self._config = config or PublisherConfig()
        self._acl = acl
        self._clock = clock
        self._path = self._paths.instance(record.service, record.id)
        self._record = record  # latest intent, even after deregister
        self._desired: InstanceRecord | None = None
        self._gen = 0  # bumped on each intent change
        self._synced: tuple[int, int] | None = None  # (session id, gen) known written
        self._written: tuple[InstanceRecord, int, float] | None = None  # last write: record, gen, monotonic time
        self._hold = 0.0  # seconds the worker holds a minor change back (min_write_interval_s)
        self._verify = True
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor: SessionMonitor | None = None
        self._conflict: InstanceIdConflict | None = None
        self.stats = PublisherStats()

    # -- intent ----------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def record(self) -> InstanceRecord:
        """What we want published (the last registered or updated record)."""
        return self._record

    def register(self, *, timeout: float | None = 10.0) -> bool:
        """Create the node (now and after every session loss). True once written."""
        now_ms = self._now_ms()
        rec = self._record
        if rec.registration_time_ms == 0:
            rec = rec.with_changes(registration_time_ms=now_ms)
        self._set_desired(rec.with_changes(updated_ms=now_ms))
        self._start()
        return self.wait_synced(timeout) if timeout is not None else False

    def update(self, *, timeout: float | None = None, **changes: Any) -> InstanceRecord:
        """Change fields (weight, state, models, ...); validated here, written by the worker."""
        with self._cond:
            if self._desired is None:
                raise NotRegistered(f"{self._path} is not registered; call register() first")
            rec = self._desired.with_changes(updated_ms=self._now_ms(), **changes)
        self._set_desired(rec)
        if timeout is not None:
            self.wait_synced(timeout)
        return rec

    def drain(self, *, weight: float = 0.0, timeout: float | None = None) -> InstanceRecord:
        """``enabled: false``, state DRAINING: clients stop picking it, the node stays."""
        return self.update(enabled=False, state=State.DRAINING, weight=weight, timeout=timeout)

    def enable(self, *, weight: float, state: State = State.SERVING, timeout: float | None = None) -> InstanceRecord:
        return self.update(enabled=True, state=state, weight=weight, timeout=timeout)

    def deregister(self, *, timeout: float | None = 10.0) -> bool:
        """Leave: drain (if still routable), then delete our node. True once it is gone.

        A watcher that reads the drained state before the deletion drops the
        member at once; one that only sees the deletion treats it as a possible
        mass loss (see ``registry.membership``). For a guaranteed clean exit,
        :meth:`drain`, wait until clients have seen it, then deregister (the
        agent's preStop path does this).
        """
        self._set_desired(None)
        if self._thread is None:
            return True
        return self.wait_synced(timeout) if timeout is not None else False

    def close(self, *, deregister: bool = True, timeout: float = 10.0) -> None:
        """Stop the worker; by default delete the node first. Idempotent."""
        if self._closed:
            return
        if deregister and self._desired is not None:
            self.deregister(timeout=timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stopping.set()
        self._wake.set()
        self._client.remove_listener(self._on_state)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._monitor is not None:
            self._monitor.release()
            self._monitor = None

    def __enter__(self) -> Publisher:
        self.register()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation -----------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True when ZooKeeper holds exactly our intent under the current session."""
        with self._cond:
            return self._is_synced()

    @property
    def conflict(self) -> str | None:
        """Why our node cannot be written: another live instance holds our id (None when clear)."""
        c = self._conflict
        return None if c is None else str(c)

    @property
    def problem(self) -> str | None:
        """An id conflict, or the last error once writes keep failing; None while all is well."""
        if self._conflict is not None:
            return str(self._conflict)
        if self.stats.consecutive_failures >= FAILURES_BEFORE_PROBLEM:
            return f"{self.stats.consecutive_failures} writes failed in a row: {self.stats.last_error}"
        return None

    @property
    def session(self) -> SessionMonitor | None:
        """The client's session monitor (registry state), once registered with ``recovery`` on."""
        return self._monitor

    def wait_synced(self, timeout: float | None = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._is_synced() or self._closed, timeout)

    def _is_synced(self) -> bool:
        if self._synced is None or self._synced[1] != self._gen:
            return False
        if self._desired is None:
            return True  # deleted: no session involved
        return self._client.connected and self._synced[0] == self._client.client_id[0]

    # -- worker ----------------------------------------------------------------

    def _set_desired(self, rec: InstanceRecord | None) -> None:
        with self._cond:
            if self._closed:
                raise PublisherClosed(f"publisher for {self._path} is closed")
            if rec is not None:
                self._record = rec
            self._desired = rec
            self._gen += 1
        self._wake.set()

    def _start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._client.add_listener(self._on_state)
            if self._config.recovery is not None:
                self._monitor = SessionMonitor.acquire(self._client, self._config.recovery)
            self._thread = threading.Thread(
                target=self._run, name=f"wei-publisher-{self._record.id}", daemon=True
            )
            self._thread.start()

    def _on_state(self, state: str) -> None:
        # Runs in kazoo's thread: record and wake, never block.
        if state == KazooState.LOST:
            self._verify = True
        self._wake.set()

    def _on_node_event(self, event: object) -> None:
        self._verify = True
        self._wake.set()

    def _run(self) -> None:
        delay = self._config.retry_delay_s
        while True:
            self._wake.wait(timeout=min(self._config.verify_interval_s, self._hold or math.inf))
            self._wake.clear()
            with self._cond:
                if self._closed:
                    return
            if not self._client.connected:
                continue  # the listener wakes us on CONNECTED
            try:
                self._reconcile()
                delay = self._config.retry_delay_s
                self.stats.consecutive_failures = 0
                self._clear_conflict()
            except Exception as e:  # the worker must outlive any single failure
                self.stats.failures += 1
                self.stats.consecutive_failures += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
                if isinstance(e, NoAuthError):
                    self.stats.last_error += (f" (our credential may not write {self._path}: an admin gives the "
                                              "service's writer its node first, registry.zk.provision_service)")
                if isinstance(e, InstanceIdConflict):
                    self._on_conflict(e)
                else:
                    expected = isinstance(e, KazooException | ZookeeperError | OSError)
                    log.log(logging.WARNING if expected else logging.ERROR, "publisher %s: %s; retrying in %.2fs",
                            self._path, self.stats.last_error, delay, exc_info=not expected)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._config.max_retry_delay_s)
                self._wake.set()

    def _reconcile(self) -> None:
        with self._cond:
            desired, gen, verify = self._desired, self._gen, self._verify
            self._verify = False
        session_id = self._client.client_id[0]
        if self._synced == (session_id, gen) and not verify:
            return
        w, ours = self._written, self._synced is not None and self._synced[0] == session_id and not verify
        self._hold = _p.hold_s(w[0], desired, time.monotonic() - w[2], self._config.min_write_interval_s) if (
            ours and desired is not None and w is not None) else 0.0
        if self._hold > 0:
            return  # a weight change alone, too soon after the last write: the worker wakes when it is due
        try:
            if desired is None:
                self._delete_own(session_id)
            else:
                self._write(desired, session_id, believed_ours=self._synced is not None
                            and self._synced[0] == session_id and not verify)
        except BaseException:
            with self._cond:
                self._verify = True
            raise
        if desired is not None and (self._written is None or self._written[1] != gen):
            self.stats.coalesced += max(0, gen - (self._written[1] if self._written else gen) - 1)
            self._written = (desired, gen, time.monotonic())
        with self._cond:
            self._synced = (session_id, gen)
            self._cond.notify_all()

    def _write(self, desired: InstanceRecord, session_id: int, *, believed_ours: bool) -> None:
        data = encode_instance(desired)
        c = self._client
        if believed_ours:
            try:
                c.set(self._path, data)
                self.stats.sets += 1
                return
            except NoNodeError:
                pass
        # Verify: read (re-arming the watch on our node) and write only what differs.
        # Our own set fires that watch too; the read then finds equal data and stops.
        try:
            current, stat = c.get(self._path, watch=self._on_node_event)
        except NoNodeError:
            current, stat = None, None
        if stat is not None and stat.ephemeralOwner != session_id:
            self._replace_stale(stat.ephemeralOwner, current)
            stat = None
        if stat is None:
            try:
                c.create(self._path, data, acl=self._acl, ephemeral=True, makepath=True)
            except NodeExistsError:
                self._verify = True
                raise
            self.stats.creates += 1
            c.exists(self._path, watch=self._on_node_event)
        elif current != data:
            c.set(self._path, data, version=stat.version)
            self.stats.sets += 1

    def _replace_stale(self, owner: int, data: bytes | None) -> None:
        """Delete a node of another session, unless it is another live instance's (then raise).

        A node that names our endpoint is our own from an older session (or a
        crashed predecessor at the same address); one that decodes to no record
        serves no reader. The node exists, so its session is live: one that names
        another endpoint is a second instance with our id, and is left alone.
        """
        theirs = rec.endpoint if (rec := _p.decode_or_none(data)) is not None else None
        if theirs is not None and theirs != self._record.endpoint:
            raise InstanceIdConflict(self._path, owner, theirs, self._record.endpoint)
        try:
            self._client.delete(self._path)
            self.stats.deletes += 1
            self.stats.stale_replaced += 1
            log.info("publisher %s: replaced stale node of session %#x", self._path, owner)
        except NoNodeError:
            pass

    def _on_conflict(self, e: InstanceIdConflict) -> None:
        with self._cond:
            self._verify = True
            new = self._conflict is None or self._conflict.owner != e.owner
            self._conflict = e
        if new:
            self.stats.conflicts += 1
            log.error("publisher %s", e)

    def _clear_conflict(self) -> None:
        if self._conflict is not None:
            log.warning("publisher %s: the other instance's node is gone; ours is written", self._path)
            self._conflict = None

    def _delete_own(self, session_id: int) -> None:
        """Delete our node, and a lingering node of an older session of ours.

        A routable node is drained first (one setData): watchers then see a
        deliberate departure and drop it at once, instead of holding it as a
        possible mass loss.
        """
        try:
            data, stat = self._client.get(self._path)
        except NoNodeError:
            return
        if stat.ephemeralOwner == session_id or _p.names_endpoint(data, self._record.endpoint):
            current = _p.decode_or_none(data)
            try:
                if current is not None and current.routable:
                    drained = current.with_changes(enabled=False, state=State.DRAINING, weight=0.0,
                                                   updated_ms=self._now_ms())
                    stat = self._client.set(self._path, encode_instance(drained), version=stat.version)
                    self.stats.sets += 1
                self._client.delete(self._path, version=stat.version)
                self.stats.deletes += 1
            except NoNodeError:
                pass
            except BadVersionError:
                self._verify = True
                raise

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def __repr__(self) -> str:
        d = self._desired
        state = "deregistered" if d is None else f"{d.state.value} weight={d.weight:g} enabled={d.enabled}"
        return f"<Publisher {self._path} {state} synced={self.synced} writes={self.stats.writes}>"
