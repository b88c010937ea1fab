"""The in-band load report a server attaches to every response (ORCA shape).

Named metrics (see :mod:`protocol.wire`): ``in_flight`` (server-wide calls
in progress), ``queue_depth`` (rows waiting in all batch queues),
``batch_fill`` and ``ewma_latency_ms`` (of the models this call used, or of
all models when it used none). ``cpu_utilization`` is this process's CPU
time over the last second divided by the CPUs it may use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from protocol.wire import LoadReport, load_report_metadata
from serving.repository import LoadedModels, LoadedVersion


class CpuMeter:
    """Process CPU utilisation, recomputed at most once per ``interval_s``."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval = interval_s
        self._cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._last_wall = time.monotonic()
        self._last_cpu = time.process_time()
        self.value = 0.0

    def read(self) -> float:
        now = time.monotonic()
        if now - self._last_wall >= self._interval and self._lock.acquire(blocking=False):
            try:
                cpu = time.process_time()
                self.value = min(1.0, (cpu - self._last_cpu) / (now - self._last_wall)
                                 / self._cpus)
                self._last_wall, self._last_cpu = now, cpu
            finally:
                self._lock.release()
        return self.value


def build_report(snapshot: LoadedModels, used: Iterable[LoadedVersion], in_flight: int,
                 cpu: float) -> tuple[tuple[str, bytes], ...]:
    versions = [lv for vs in snapshot.values() for lv in vs.values()]
    used = list(used) or versions
    n = max(1, len(used))
    return load_report_metadata(LoadReport(cpu_utilization=cpu, named_metrics={
        "in_flight": float(in_flight),
        "queue_depth": float(sum(lv.runner.queue_depth() for lv in versions)),
        "batch_fill": sum(lv.runner.stats.batch_fill for lv in used) / n,
        "ewma_latency_ms": 1000 * sum(lv.runner.stats.ewma_latency_s for lv in used) / n,
    }))
