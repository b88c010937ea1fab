"""The registry's state, and recovery from a ZooKeeper that lost its data.

A ZooKeeper ensemble redeployed without its volumes answers on the same
addresses with an empty tree and a zxid that starts over. The server then
refuses every client that has seen a newer zxid (its guard against going back
in time): kazoo retries forever, stays SUSPENDED, never hears that its
session expired, and so nothing that waits for a new session (the
publisher's re-registration, the watcher's resync) ever runs.

:class:`SessionMonitor` watches one client and tells that case apart:

====================  =======================================================
``connecting``        never connected yet
``connected``         the session is live
``suspended``         the connection dropped; the session (and our ephemeral
                      nodes) may still live
``lost``              the session expired; kazoo is making a new one
``reconnecting-fresh`` ZooKeeper accepts new sessions but refused ours: the
                      client was restarted with a fresh session
====================  =======================================================

Once the client has been disconnected for ``stuck_after_s``, the monitor asks
ZooKeeper for a new session of its own (a short-lived probe client). If that
works while ours still cannot connect, ours is refused: the monitor restarts
it (``stop()``, then ``start_async()``: kazoo resets the session and the
last zxid seen, so the client comes back as a fresh one, and every component
that holds it carries on with it). Its listeners see LOST then CONNECTED as
after any session expiry: the publisher writes its node again, the watcher
reads everything again. If the probe fails too, ZooKeeper is down for
everyone: the monitor waits and probes again with back-off.

Every wait (``stuck_after_s``, each probe interval) is stretched by a random
factor in [1, 1 + ``jitter``]: a ZooKeeper that lost its data strands every
client at the same moment, and without jitter all of them would probe (one
session each) and restart (a full re-read each) in the same instant.

A client is watched by one monitor however many components use it
(:meth:`SessionMonitor.acquire` / :meth:`~SessionMonitor.release`); the first
caller's :class:`RecoveryConfig` applies. A client someone stopped on purpose
(kazoo state CLOSED) is never restarted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.retry import KazooRetry

from ._loop import WatchLoop

__all__ = ["RecoveryConfig", "RegistryState", "SessionMonitor", "SessionStatus", "probe_new_session"]

log = logging.getLogger(__name__)


class RegistryState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    SUSPENDED = "suspended"
    LOST = "lost"
    RECONNECTING_FRESH = "reconnecting-fresh"


@dataclass(frozen=True, kw_only=True)
class RecoveryConfig:
    """When to suspect that ZooKeeper refuses our session, and how to check.

    ``stuck_after_s`` (10 s, our default session timeout): a session that could
    not be resumed for that long has been expired by the server in every case
    but a whole-ensemble outage, so a fresh session loses nothing; and it is
    far above kazoo's reconnect back-off (2 s with :func:`registry.zk.connect`),
    so a client that is merely between two attempts is never taken for a
    refused one. ``probe_timeout_s`` (5 s): how long the probe client may take
    to get a session (a healthy ensemble answers in milliseconds; an election
    takes a few seconds). ``max_probe_interval_s`` (15 s): probes double from
    ``stuck_after_s`` up to this while ZooKeeper stays down, so a refused
    client is restarted at most this long after the ensemble answers again; a
    probe of a down ensemble costs one refused connection, one of an
    answering ensemble a session, opened and closed at once. ``jitter`` (0.5):
    each of those waits is drawn in [w, 1.5 w], so the clients stranded
    together by one event probe and restart spread over 5 s, not at once.
    """

    stuck_after_s: float = 10.0
    probe_timeout_s: float = 5.0
    max_probe_interval_s: float = 15.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for name in ("stuck_after_s", "probe_timeout_s", "max_probe_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"RecoveryConfig.{name}: expected positive seconds, got {value!r}")
        if self.max_probe_interval_s < self.stuck_after_s:
            raise ValueError("RecoveryConfig.max_probe_interval_s: expected >= stuck_after_s, "
                             f"got {self.max_probe_interval_s!r} < {self.stuck_after_s!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ValueError(f"RecoveryConfig.jitter: expected a fraction in [0, 1], got {self.jitter!r}")


@dataclass(frozen=True, kw_only=True)
class SessionStatus:
    """What the registry connection is doing now; ``since`` is on the monitor's clock."""

    state: RegistryState
    since: float
    detail: str = ""
    fresh_restarts: int = 0  # times the client was restarted because ZooKeeper refused its session
    probes: int = 0

    @property
    def connected(self) -> bool:
        return self.state is RegistryState.CONNECTED

    def __str__(self) -> str:
        return f"{self.state}" + (f" ({self.detail})" if self.detail else "")


def _connect_string(client: KazooClient) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in client.hosts)


def probe_new_session(client: KazooClient, timeout: float) -> bool:
    """True if the client's ensemble gives a brand-new client a session within ``timeout``."""
    probe = KazooClient(hosts=_connect_string(client), timeout=10.0,
                        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_jitter=0.5, max_delay=1.0))
    try:
        probe.start(timeout=timeout)  # on a timeout kazoo stops and closes the probe itself
    except KazooTimeoutError:
        return False
    probe.stop()
    probe.close()
    return True


_shared: dict[int, SessionMonitor] = {}
_shared_lock = threading.Lock()


class SessionMonitor(WatchLoop[SessionStatus]):
    """Tracks one client's :class:`SessionStatus` and restarts it when ZooKeeper refuses its session."""

    def __init__(self, client: KazooClient, *, config: RecoveryConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 probe: Callable[[KazooClient, float], bool] = probe_new_session,
                 rng: random.Random | None = None) -> None:
        super().__init__(client, name="wei-zk-session", clock=clock, rng=rng)
        self.config = config or RecoveryConfig()
        self._probe = probe
        self._users = 0
        now = clock()
        self._status = SessionStatus(state=RegistryState.CONNECTING, since=now, detail="not connected yet")
        self._down_since: float | None = now
        self._next_probe: float | None = None
        self._probe_interval = self.config.stuck_after_s

    # -- sharing -----------------------------------------------------------------------

    @classmethod
    def acquire(cls, client: KazooClient, config: RecoveryConfig | None = None) -> SessionMonitor:
        """The started monitor of ``client`` (one per client); :meth:`release` it when done."""
        with _shared_lock:
            monitor = _shared.get(id(client))
            if monitor is None or monitor._stopped.is_set():
                monitor = _shared[id(client)] = cls(client, config=config)
                monitor.start()
            monitor._users += 1
            return monitor

    def release(self) -> None:
        with _shared_lock:
            self._users -= 1
            if self._users > 0:
                return
            if _shared.get(id(self._client)) is self:
                del _shared[id(self._client)]
        self.close()

    def start(self) -> SessionMonitor:
        self._start_loop()
        return self

    def close(self) -> None:
        self._stop_loop()

    # -- reading -------------------------------------------------------------------------

    def _current(self) -> SessionStatus:
        return self._status

    @property
    def status(self) -> SessionStatus:
        return self._status

    # -- worker hooks (the monitor's thread) ---------------------------------------------

    def _boot(self) -> None:
        if not self._client.connected:  # acquired while already down: the clock starts now
            self._next_probe = self._clock() + self._wait(self.config.stuck_after_s)

    def _connected(self) -> None:
        fresh = self._status.state is RegistryState.RECONNECTING_FRESH
        self._down_since = self._next_probe = None
        self._probe_interval = self.config.stuck_after_s
        session = self._client.client_id[0] if self._client.client_id else 0
        self._set(RegistryState.CONNECTED, f"session {session:#x}"
                  + (" (fresh, after ZooKeeper refused the old one)" if fresh else ""))

    def _disconnected(self, state: str) -> None:
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            self._next_probe = now + self._wait(self.config.stuck_after_s)
        if self._status.state is RegistryState.RECONNECTING_FRESH:
            return  # our own restart's LOST: keep saying why
        if state == KazooState.LOST and self._client.client_state == KeeperState.CLOSED:
            self._set(RegistryState.LOST, "the client was stopped")
        elif state == KazooState.LOST:
            self._set(RegistryState.LOST, "session expired; reconnecting with a new one")
        else:
            self._set(RegistryState.SUSPENDED, "connection lost; the session may still live")

    def _deadline(self) -> float | None:
        return None if self._client.connected else self._next_probe

    def _tick(self, now: float) -> None:
        if self._client.connected or self._next_probe is None or now < self._next_probe:
            return
        if self._client.client_state != KeeperState.CONNECTING:
            self._next_probe = None  # stopped on purpose (CLOSED): not ours to restart
            return
        down_for = now - (self._down_since or now)
        accepted = self._probe(self._client, self.config.probe_timeout_s)
        self._status = replace(self._status, probes=self._status.probes + 1)
        if self._client.connected:
            return  # ours came back while we probed
        if not accepted:
            self._probe_interval = min(self._probe_interval * 2, self.config.max_probe_interval_s)
            self._next_probe = self._clock() + self._wait(self._probe_interval)
            self._set(self._status.state, f"ZooKeeper unreachable for {down_for:.0f}s")
            return
        self._restart(down_for)

    def _restart(self, down_for: float) -> None:
        client = self._client
        session = client.client_id[0] if client.client_id else 0
        log.error("ZooKeeper at %s gives new sessions but has refused ours (session %#x, last zxid seen %#x) "
                  "for %.0fs: the ensemble lost its data (redeployed without its volumes?). Restarting the "
                  "client with a fresh session; registrations will be written again.",
                  _connect_string(client), session, client.last_zxid or 0, down_for)
        self._set(RegistryState.RECONNECTING_FRESH,
                  f"ZooKeeper refused session {session:#x} for {down_for:.0f}s (lost its data?)",
                  restarts=1)
        self._next_probe = self._clock() + self._wait(self.config.stuck_after_s)  # and again if even that fails
        client.stop()
        client.start_async()

    def _wait(self, seconds: float) -> float:
        return seconds * self._rng.uniform(1.0, 1.0 + self.config.jitter)

    def _set(self, state: RegistryState, detail: str, *, restarts: int = 0) -> None:
        s = self._status
        since = s.since if state is s.state else self._clock()
        status = replace(s, state=state, since=since, detail=detail, fresh_restarts=s.fresh_restarts + restarts)
        if status == s:
            return
        if state is not s.state:
            log.info("registry %s: %s", _connect_string(self._client), status)
        with self._cond:
            self._status = status
            self._cond.notify_all()
        self._notify(status)

    def __repr__(self) -> str:
        return f"<SessionMonitor {_connect_string(self._client)} {self._status}>"
