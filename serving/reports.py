"""What the server reports about its load: the in-band ORCA report and the status document.

Both are built here from the same figures of the same runners: the load
report travels on every response to the clients (fast, small), the
:class:`~protocol.status.StatusDoc` answers the agent's ``GET /status``
(slow, complete).

Load report named metrics (see :mod:`protocol.wire`): ``in_flight`` (server-wide calls
in progress), ``queue_depth`` (rows waiting in all batch queues),
``batch_fill`` and ``ewma_latency_ms`` (of the models this call used, or of
all models when it used none). ``cpu_utilization`` is this process's CPU
time over the last second divided by the CPUs it may use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping

from protocol.status import Batching, CapacityHint, Latency, ModelStatus, StatusDoc, VersionStatus
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


def build_status(snapshot: LoadedModels, *, phase: str, ready: bool, draining: bool, port: int, in_flight: int,
                 failures: Mapping[tuple[str, int], str]) -> StatusDoc:
    """The status document (see :mod:`protocol.status`); latencies are the newest version's."""
    models = {}
    for model, versions in snapshot.items():
        latest = versions[max(versions)]
        st = latest.runner.stats
        pct = st.percentiles_ms()
        models[model] = ModelStatus(
            versions={v: VersionStatus(state=str(lv.state), in_flight=lv.in_flight,
                                       queue_rows=lv.runner.queue_depth())
                      for v, lv in versions.items()},
            ready=True,
            in_flight=sum(lv.in_flight for lv in versions.values()),
            queue_rows=sum(lv.runner.queue_depth() for lv in versions.values()),
            latency_ms=Latency(p50=pct["p50"], p90=pct["p90"], p99=pct["p99"], ewma=1000 * st.ewma_latency_s),
            batching=Batching(batch_fill=st.batch_fill, batches=st.batches, rows=st.rows,
                              batch_size_limit=latest.runner.batch_limit(),
                              queue_delay_ms=1000 * st.queue_delay_s),
            capacity=capacity_hint(latest),
        )
    return StatusDoc(phase=phase, ready=ready, draining=draining, port=port, in_flight=in_flight, models=models,
                     load_failures={f"{m}/{v}": why for (m, v), why in failures.items()})


def capacity_hint(lv: LoadedVersion) -> CapacityHint:
    """Rows per second one version sustains at the recent batch size (0 when unknown).

    Estimated from the runner's figures: batch threads x mean rows per batch /
    EWMA latency. A hint for the agent's weight, not a promise.
    """
    st = lv.runner.stats
    threads = lv.config.batching.num_batch_threads if lv.config.batching.enabled else 1
    limit = float(lv.runner.batch_limit())
    if st.batches == 0 or st.ewma_latency_s <= 0:
        return CapacityHint(rows_per_s=0.0, max_batch_size=limit)
    return CapacityHint(rows_per_s=threads * (st.rows / st.batches) / st.ewma_latency_s, max_batch_size=limit)
