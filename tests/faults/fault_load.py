"""Steady load through a real WeiClient, and what callers saw: one :class:`Call` per call.

A few threads each call at a fixed pace (open-loop per thread: a thread that was held by a slow
call catches up, it does not silently lower the rate), so a fault meets traffic all the time. The
pace is modest (60 calls/s in all by default): the machine has two cores and the pods share them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
from fault_cluster import FEATURES, MODEL, wait_until

from weiclient import WeiClient


@dataclass(frozen=True)
class Call:
    started: float   # time.monotonic()
    ended: float
    kind: str        # "ok" or the exception's class name

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class Load:
    def __init__(self, client: WeiClient, *, rate: float = 60.0, threads: int = 4, rows: int = 8,
                 timeout_s: float = 2.0, priority: str = "default") -> None:
        self.client = client
        self.calls: list[Call] = []
        self.errors_seen: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._x = np.ones((rows, FEATURES), np.float32)
        self._timeout_s = timeout_s
        self._priority = priority
        gap = threads / rate
        self._threads = [threading.Thread(target=self._run, args=(gap, i * gap / threads), daemon=True,
                                          name=f"fault-load-{i}") for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, gap: float, offset: float) -> None:
        due = time.monotonic() + offset
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += gap
            t0 = time.monotonic()
            try:
                self.client.predict(MODEL, {"x": self._x}, timeout=self._timeout_s, priority=self._priority)
                kind, text = "ok", ""
            except Exception as e:  # every kind is counted; the case says which it may see
                kind, text = type(e).__name__, f"{type(e).__name__}: {e}"
            with self._lock:
                self.calls.append(Call(t0, time.monotonic(), kind))
                if text and len(self.errors_seen) < 20:
                    self.errors_seen.append(text)

    def since(self, t0: float, t1: float = float("inf")) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if t0 <= c.started < t1]

    def errors(self, t0: float = 0.0, t1: float = float("inf")) -> Counter[str]:
        return Counter(c.kind for c in self.since(t0, t1) if not c.ok)

    def succeeded(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` more calls have succeeded (the load is flowing)."""
        with self._lock:
            start = sum(c.ok for c in self.calls)
        wait_until(lambda: sum(c.ok for c in self.since(0.0)) >= start + n, f"{n} more successful calls", timeout)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
