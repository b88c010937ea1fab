"""What the server reports about its load: the in-band ORCA report and the status document.

Both are built here from the same figures of the same runners: the load
report travels on every response to the clients (fast, small), the
:class:`~protocol.status.StatusDoc` answers the agent's ``GET /status``
(slow, complete).

Load report (see :mod:`protocol.wire`), over the models this call used (all
models when it used none), from the runners' last 10 s:
``application_utilization`` (mean busy fraction of their batch threads),
``rps_fractional`` (requests per second), ``eps`` (calls failed or refused
per second), ``cpu_utilization`` (this
process's CPU time over the last second divided by the CPUs it may use), and
named metrics ``in_flight`` (server-wide calls in progress), ``queue_depth``
(rows waiting in all batch queues), ``batch_fill``, ``ewma_latency_ms``,
``rows_per_s``, ``capacity_rows_per_s`` (the lowest known among the models
used: a call runs at its slowest model's pace; 0 = unknown; read over the
newest second or so of a busy runner's work, see
:mod:`serving.batching.stats`) and
``queue_delay_ms``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping

from protocol.status import Batching, CapacityHint, Latency, ModelStatus, StatusDoc, VersionStatus, Window, Work
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
    stats = [lv.runner.stats for lv in used]
    windows = [st.recent() for st in stats]
    capacities = [c for w in windows if (c := w.capacity_rows_per_s) is not None]
    return load_report_metadata(LoadReport(
        cpu_utilization=cpu,
        application_utilization=sum(w.busy_fraction for w in windows) / n,
        rps_fractional=sum(w.requests_per_s for w in windows),
        eps=sum(w.errors_per_s for w in windows),
        named_metrics={
            "in_flight": float(in_flight),
            "queue_depth": float(sum(lv.runner.queue_depth() for lv in versions)),
            "batch_fill": sum(st.batch_fill for st in stats) / n,
            "ewma_latency_ms": 1000 * sum(st.ewma_latency_s for st in stats) / n,
            "rows_per_s": sum(w.rows_per_s for w in windows),
            "capacity_rows_per_s": min(capacities) if capacities else 0.0,
            "queue_delay_ms": 1000 * sum(st.queue_delay_s for st in stats) / n,
        }))


def build_status(snapshot: LoadedModels, *, phase: str, ready: bool, draining: bool, port: int, in_flight: int,
                 failures: Mapping[tuple[str, int], str]) -> StatusDoc:
    """The status document (see :mod:`protocol.status`); figures are the newest version's runner's."""
    models = {}
    for model, versions in snapshot.items():
        latest = versions[max(versions)]
        st = latest.runner.stats
        w = st.window()
        models[model] = ModelStatus(
            versions={v: VersionStatus(state=str(lv.state), in_flight=lv.in_flight,
                                       queue_rows=lv.runner.queue_depth())
                      for v, lv in versions.items()},
            ready=True,
            in_flight=sum(lv.in_flight for lv in versions.values()),
            queue_rows=sum(lv.runner.queue_depth() for lv in versions.values()),
            latency_ms=Latency(p50=w.p50_ms, p90=w.p90_ms, p99=w.p99_ms, ewma=1000 * st.ewma_latency_s),
            batching=Batching(batch_fill=st.batch_fill, batches=st.batches, rows=st.rows,
                              batch_size_limit=latest.runner.batch_limit(),
                              queue_delay_ms=1000 * st.queue_delay_s),
            capacity=CapacityHint(rows_per_s=w.capacity_rows_per_s, max_batch_size=float(latest.runner.batch_limit())),
            work=Work(busy_s=st.busy_s, rows=st.rows, requests=st.requests, batches=st.batches,
                      batch_threads=st.threads),
            window=Window(span_s=w.span_s, rows_per_s=w.rows_per_s, requests_per_s=w.requests_per_s,
                          busy_fraction=w.busy_fraction, mean_batch_rows=w.mean_batch_rows),
        )
    return StatusDoc(phase=phase, ready=ready, draining=draining, port=port, in_flight=in_flight, models=models,
                     load_failures={f"{m}/{v}": why for (m, v), why in failures.items()})
