"""SLO mode: choose the batch size online with AIMD, as Clipper does.

After each batch the controller compares the batch's processing latency
(from dispatch to completion) with the target p99. Over the target: multiply
the size by ``factor`` (Clipper backs off by 10%). Under it, and the batch
was full (so the limit was what bound it): add ``step`` rows. Batches that
were not full carry no evidence about a larger size, so they leave it alone;
without this rule an idle server would drift to the maximum and overshoot
the first burst.

Queue wait is deliberately left out of the signal, as in Clipper: under
overload the queue grows, and shrinking batches because of it would lower
throughput and grow the queue further (a death spiral). Queue wait is
bounded by ``batch_timeout_micros``, by ``max_enqueued_batches`` (which
fails fast) and by request deadlines, and is exported as a metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class AimdController:
    target_s: float
    max_size: int
    step: int = 4
    factor: float = 0.9
    size: int = field(default=0)
    increases: int = 0
    decreases: int = 0

    def __post_init__(self) -> None:
        if self.target_s <= 0 or self.max_size < 1 or self.step < 1 or not 0 < self.factor < 1:
            raise ValueError(f"invalid AIMD parameters: {self!r}")
        if self.size <= 0:
            self.size = min(self.step, self.max_size)

    def observe(self, *, rows: int, latency_s: float) -> int:
        """Feed one completed batch (rows, processing latency); returns the new size limit."""
        if latency_s > self.target_s:
            self.size = max(1, math.floor(self.size * self.factor))
            self.decreases += 1
        elif rows >= self.size:
            self.size = min(self.max_size, self.size + self.step)
            self.increases += 1
        return self.size
