"""Rolling figures a runner reports: EWMA latency, recent percentiles, batch fill."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np


class RollingStats:
    """Thread-safe; ``alpha`` weighs the newest sample of each EWMA (0.1 ~ last 10-20)."""

    def __init__(self, *, window: int = 2048, alpha: float = 0.1) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self._alpha = alpha
        self.ewma_latency_s = 0.0
        self.batch_fill = 0.0
        self.queue_delay_s = 0.0
        self.batches = 0
        self.rows = 0
        self.requests = 0

    def record_request(self, latency_s: float) -> None:
        with self._lock:
            self.requests += 1
            self._latencies.append(latency_s)
            a = self._alpha if self.requests > 1 else 1.0
            self.ewma_latency_s += a * (latency_s - self.ewma_latency_s)

    def record_batch(self, rows: int, fill: float, queue_delay_s: float) -> None:
        with self._lock:
            self.batches += 1
            self.rows += rows
            a = self._alpha if self.batches > 1 else 1.0
            self.batch_fill += a * (fill - self.batch_fill)
            self.queue_delay_s += a * (queue_delay_s - self.queue_delay_s)

    def percentiles_ms(self) -> dict[str, float]:
        with self._lock:
            data = np.fromiter(self._latencies, dtype=np.float64)
        if data.size == 0:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
        p50, p90, p99 = np.percentile(data, [50, 90, 99]) * 1000
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}
