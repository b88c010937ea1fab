"""The per-response load report: rebuilt every few ms, in_flight and queue_depth exact per call."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from protocol import wire
from serving.loadcache import ReportCache
from serving.reports import CpuMeter


class Runner:
    def __init__(self, clock) -> None:
        from serving.batching.stats import RollingStats
        self.stats = RollingStats(clock=clock)
        self.queued = 0

    def queue_depth(self) -> int:
        return self.queued


class Version:
    def __init__(self, model: str, clock) -> None:
        self.model = model
        self.runner = Runner(clock)


def test_the_slow_part_is_reused_and_the_fast_figures_are_exact():
    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    lv = Version("m", clock)
    snap = MappingProxyType({"m": MappingProxyType({1: lv})})
    cache = ReportCache(lambda: snap, max_age_s=0.01, cpu=CpuMeter(), clock=clock)

    lv.runner.stats.record_request(0.010)
    first = wire.load_report_from_metadata(cache.metadata([lv], in_flight=3))
    assert first.named_metrics["in_flight"] == 3.0 and first.named_metrics["ewma_latency_ms"] == 10.0

    lv.runner.stats.record_request(0.110)              # the EWMA moves ...
    lv.runner.queued = 7
    now[0] += 0.005
    md = cache.metadata([lv], in_flight=1)
    again = wire.load_report_from_metadata(md)
    assert again.named_metrics["ewma_latency_ms"] == 10.0      # ... the cached part has not yet
    assert (again.named_metrics["in_flight"], again.named_metrics["queue_depth"]) == (1.0, 7.0)
    assert [k for k, _ in md] == [wire.LOAD_REPORT_KEY, wire.LOAD_REPORT_MIRROR_KEY]

    now[0] += 0.010                                    # older than max_age_s: rebuilt
    fresh = wire.load_report_from_metadata(cache.metadata([lv], in_flight=1))
    assert fresh.named_metrics["ewma_latency_ms"] > 10.0
    assert set(fresh.named_metrics) == {"in_flight", "queue_depth", "batch_fill", "ewma_latency_ms",
                                        "rows_per_s", "capacity_rows_per_s", "queue_delay_ms"}


def test_a_new_snapshot_is_a_new_report():
    now = [0.0]
    a, b = Version("a", lambda: now[0]), Version("b", lambda: now[0])
    snaps = [MappingProxyType({"a": MappingProxyType({1: a})})]
    cache = ReportCache(lambda: snaps[0], clock=lambda: now[0])
    assert wire.load_report_from_metadata(cache.metadata([], in_flight=0)).named_metrics[
        "ewma_latency_ms"] == 0.0
    b.runner.stats.record_request(0.020)
    snaps[0] = MappingProxyType({"a": MappingProxyType({1: a}), "b": MappingProxyType({1: b})})
    report = wire.load_report_from_metadata(cache.metadata([], in_flight=0))
    assert report.named_metrics["ewma_latency_ms"] == 10.0      # mean over both models, not cached


def test_errors_per_second_are_orca_eps():
    now = [100.0]
    lv = Version("m", lambda: now[0])
    snap = MappingProxyType({"m": MappingProxyType({1: lv})})
    cache = ReportCache(lambda: snap, max_age_s=0.01, cpu=CpuMeter(), clock=lambda: now[0])
    assert wire.load_report_from_metadata(cache.metadata([lv], in_flight=0)).eps == 0.0
    now[0] += 20.0                                     # a runner older than its window
    for _ in range(50):
        lv.runner.stats.record_error()
    report = wire.load_report_from_metadata(cache.metadata([lv], in_flight=0))
    assert report.eps == pytest.approx(5.0, rel=0.06)  # 50 in the window (9.5-10 s: half-second slices)
