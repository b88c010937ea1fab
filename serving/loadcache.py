"""The per-response load report, built once per few milliseconds instead of once per call.

:func:`serving.reports.build_report` costs about a third of a small call's
own Python time on the server (the figures of every runner used, then the
ORCA protobuf, encoded in Python). Most of it moves slowly: the windows are
recomputed every 50 ms anyway, the CPU figure every second, an EWMA by a
fraction of a percent per call. So the encoded report is kept per set of
model versions used and rebuilt once it is ``max_age_s`` old (or the
snapshot changes), and the two figures that move with every call,
``in_flight`` and ``queue_depth``, are encoded exactly for each response and
appended: a protobuf map keeps the last entry it reads for a key (the
protobuf rule, and :func:`protocol.wire.decode_load_report`'s), so the
appended entries override the older ones in the cached part.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

from protocol.wire import LOAD_REPORT_KEY, LOAD_REPORT_MIRROR_KEY, LoadReport, encode_load_report
from serving.reports import CpuMeter, build_report
from serving.repository import LoadedModels, LoadedVersion

Metadata = tuple[tuple[str, bytes], ...]
MAX_ENTRIES = 64      # distinct sets of versions kept; a reload replaces them all


class ReportCache:
    def __init__(self, snapshot: Callable[[], LoadedModels], *, max_age_s: float = 0.01,
                 cpu: CpuMeter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot = snapshot
        self._max_age = max_age_s
        self._cpu = cpu or CpuMeter()
        self._clock = clock
        self._built: dict[tuple[int, ...], tuple[float, bytes]] = {}

    def __repr__(self) -> str:
        return f"ReportCache(entries={len(self._built)}, max_age_s={self._max_age})"

    def metadata(self, used: Sequence[LoadedVersion], in_flight: int) -> Metadata:
        """Trailing metadata for a call that used ``used`` (all models when empty)."""
        snap = self._snapshot()
        key = (id(snap), *map(id, used))
        now = self._clock()
        hit = self._built.get(key)
        if hit is None or now - hit[0] > self._max_age:
            slow = build_report(snap, used, in_flight, self._cpu.read())[0][1]
            if len(self._built) >= MAX_ENTRIES:
                self._built.clear()
            self._built[key] = (now, slow)
        else:
            slow = hit[1]
        queued = sum(lv.runner.queue_depth() for vs in snap.values() for lv in vs.values())
        data = slow + _entry("in_flight", in_flight) + _entry("queue_depth", queued)
        return ((LOAD_REPORT_KEY, data), (LOAD_REPORT_MIRROR_KEY, data))


@functools.lru_cache(maxsize=4096)
def _entry(name: str, value: int) -> bytes:
    """One named metric as an encoded report of its own (small counts recur: kept)."""
    return encode_load_report(LoadReport(named_metrics={name: float(value)}))
