"""A status sample: what the weight controller reads from the model server, parsed leniently.

:func:`sample_from_status` reads the JSON of ``serving``'s ``GET /status``
(see :mod:`serving.status`). A production model server of another team need
only answer the same shape; any field missing or malformed is None (unknown),
never an error, so a partial status still drives the weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["StatusSample", "sample_from_status"]


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusSample:
    """``p99_ms`` / ``ewma_ms``: the worst model's latency; ``queue_rows``: rows
    queued over all models; ``requests`` / ``errors``: cumulative counters (the
    rate comes from the difference between samples; None when the server does
    not report them -- ``serving`` exposes them on /metrics, not /status)."""

    ready: bool = True
    p99_ms: float | None = None
    ewma_ms: float | None = None
    queue_rows: float | None = None
    requests: int | None = None
    errors: int | None = None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _max(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def sample_from_status(obj: Any, *, requests: int | None = None, errors: int | None = None) -> StatusSample:
    """Parse a ``/status`` document; ``requests`` / ``errors`` come from elsewhere (/metrics)."""
    if not isinstance(obj, Mapping):
        return StatusSample(ready=False, requests=requests, errors=errors)
    models = obj.get("models")
    models = models if isinstance(models, Mapping) else {}
    p99: list[float | None] = []
    ewma: list[float | None] = []
    queue: list[float | None] = []
    for m in models.values():
        if not isinstance(m, Mapping):
            continue
        lat = m.get("latency_ms")
        lat = lat if isinstance(lat, Mapping) else {}
        p99.append(_num(lat.get("p99")))
        ewma.append(_num(lat.get("ewma")))
        queue.append(_num(m.get("queue_rows")))
    known_queue = [q for q in queue if q is not None]
    ready = obj.get("ready") is True and obj.get("draining") is not True
    return StatusSample(ready=ready, p99_ms=_max(p99), ewma_ms=_max(ewma),
                        queue_rows=sum(known_queue) if known_queue else None,
                        requests=requests, errors=errors)
