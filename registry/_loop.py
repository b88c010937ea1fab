"""The thin shell shared by the watchers: one worker thread, kazoo callbacks only enqueue.

kazoo delivers session states to listeners and watch events to callbacks on
its own thread; anything slow there stalls every other callback of that
client. Here both only put an item on a queue. The worker drains the queue
in batches (so a burst of N events costs one reduce, not N), does the
ZooKeeper reads, re-arms the one-shot watches, and publishes.

Subclasses implement :meth:`_current` (the snapshot they publish) and the
worker hooks :meth:`_boot`, :meth:`_connected`, :meth:`_disconnected`,
:meth:`_events` and :meth:`_tick`, which run on the worker thread only. The
shell gives every watcher the same reading side: ``snapshot``, ``subscribe``
and ``wait_for``.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, ZookeeperError
from kazoo.protocol.states import WatchedEvent

log = logging.getLogger(__name__)

_STOP = object()
S = TypeVar("S")
ZK_ERRORS = (KazooException, ZookeeperError, OSError)


class WatchLoop(Generic[S]):
    def __init__(self, client: KazooClient, *, name: str, clock: Callable[[], float] = time.time,
                 retry_delay_s: float = 0.2, max_retry_delay_s: float = 5.0, resync_jitter_s: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self._client = client
        self._rng = rng or random.Random()
        self._resync_jitter_s = resync_jitter_s
        self._resync_after: float | None = None  # after a reconnect: no full re-read before this
        self._clock = clock
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self._delay = retry_delay_s
        self._retry_at: float | None = None
        self._need_resync = False
        self._cond = threading.Condition()  # notified whenever the snapshot changes
        self._subscribers: list[Callable[[S], None]] = []
        self.resyncs = 0
        self.errors = 0
        self.last_error = ""

    # -- the reading side, for any thread ---------------------------------------------

    @property
    def snapshot(self) -> S:
        """The current snapshot: a plain attribute read, no I/O, safe from any thread."""
        return self._current()

    def subscribe(self, fn: Callable[[S], None]) -> Callable[[], None]:
        """Call ``fn(snapshot)`` on each new version (on the watcher thread; keep it quick)."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    def wait_for(self, predicate: Callable[[S], bool], timeout: float | None = 10.0) -> S:
        """Block until the snapshot satisfies ``predicate``; TimeoutError says what was seen."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._current()), timeout):
                raise TimeoutError(f"{self._name}: condition not met within {timeout}s; "
                                   f"last: {self._describe(self._current())}")
            return self._current()

    def _current(self) -> S:
        raise NotImplementedError

    def _describe(self, snap: S) -> str:
        return repr(snap)

    def _notify(self, snap: S) -> None:
        """Hand a new version to the subscribers; one that raises is logged, the rest still run."""
        for fn in list(self._subscribers):
            try:
                fn(snap)
            except Exception:
                log.exception("%s: subscriber %r failed", self._name, fn)

    # -- lifecycle -------------------------------------------------------------

    def _start_loop(self) -> None:
        if self._thread is not None:
            return
        self._client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _stop_loop(self, timeout: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._client.remove_listener(self._on_state)
        self._queue.put(_STOP)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- kazoo callbacks: enqueue only -------------------------------------------

    def _on_state(self, state: str) -> None:
        self._queue.put(("state", state))

    def _on_watch(self, event: WatchedEvent) -> None:
        self._queue.put(("watch", event))

    # -- worker ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._guard(self._boot)
            self._need_resync = True
            self._handle([])
            while not self._stopped.is_set():
                item = self._next_item()
                batch = [] if item is None else [item]
                while True:  # coalesce what is already queued
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if any(i is _STOP for i in batch):
                    return
                self._handle(batch)
        except Exception:  # never die silently: the snapshot would freeze unnoticed
            log.exception("%s: worker crashed", self._name)
            raise

    def _next_item(self) -> Any:
        timeout = self._timeout()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _timeout(self) -> float | None:
        resync = self._resync_after if self._need_resync else None
        deadlines = [d for d in (self._retry_at, resync, self._deadline()) if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self._clock())

    def _handle(self, batch: list[Any]) -> None:
        states = [i[1] for i in batch if i[0] == "state"]
        events = [i[1] for i in batch if i[0] == "watch"]
        now = self._clock()
        if states:
            last = states[-1]
            if last in (KazooState.SUSPENDED, KazooState.LOST):
                self._guard(lambda: self._disconnected(last))
            if KazooState.LOST in states:
                self._need_resync = True
            if last == KazooState.CONNECTED:
                self._need_resync = True
                if self.resyncs and self._resync_jitter_s > 0:  # a reconnect, not the first connection
                    self._resync_after = now + self._rng.uniform(0.0, self._resync_jitter_s)
        if any(e.type == "NONE" or e.path is None for e in events):
            self._need_resync = True  # kazoo reset the watches (session expired)
            events = [e for e in events if e.path is not None]
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._need_resync = True
        waiting = self._resync_after is not None and now < self._resync_after
        if self._need_resync and self._client.connected and not waiting:
            self._need_resync = False
            self._resync_after = None
            if self._guard(self._connected):
                self.resyncs += 1
        elif events and self._client.connected and not self._need_resync:
            self._guard(lambda: self._events(events))
        others: dict[str, list[Any]] = {}
        for kind, item in (i for i in batch if i[0] not in ("state", "watch")):
            others.setdefault(kind, []).append(item)
        for kind, items in others.items():
            self._guard(lambda kind=kind, items=items: self._other(kind, items))
        self._guard(lambda: self._tick(self._clock()))

    def _guard(self, fn: Callable[[], None]) -> bool:
        """Run a step; on a ZooKeeper error schedule a full resync with back-off."""
        try:
            fn()
        except Exception as e:  # a ZooKeeper error is expected; anything else is a bug, logged loudly
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            expected = isinstance(e, ZK_ERRORS)
            log.log(logging.INFO if expected else logging.ERROR, "%s: %s; resync in %.2fs",
                    self._name, self.last_error, self._delay, exc_info=not expected)
            self._need_resync = True
            self._retry_at = self._clock() + self._delay
            self._delay = min(self._delay * 2, self._max_retry_delay_s)
            return False
        self._delay = self._retry_delay_s
        return True

    # -- hooks -------------------------------------------------------------------

    def _boot(self) -> None:
        """First thing on the worker thread."""

    def _connected(self) -> None:
        """(Re)connected or told to resync: read everything again and re-arm watches."""

    def _disconnected(self, state: str) -> None:
        """SUSPENDED or LOST."""

    def _events(self, events: list[WatchedEvent]) -> None:
        """Watch events, in order."""

    def _other(self, kind: str, items: list[Any]) -> None:
        """Items a subclass put on the queue as ``(kind, item)``, grouped by kind, in order."""

    def _tick(self, now: float) -> None:
        """After each batch and at :meth:`_deadline`."""

    def _deadline(self) -> float | None:
        """When :meth:`_tick` must run next even without events."""
        return None
