"""RollingStats: counters that only grow, a window that ages out (fake clock)."""

from __future__ import annotations

import pytest

from serving.batching.stats import RollingStats


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_an_idle_runners_latency_ages_out_of_the_window():
    clock = Clock()
    st = RollingStats(clock=clock, window_s=10.0, slots=10)
    for ms in range(1, 101):
        st.record_request(ms / 1000)
    w = st.window()
    assert w.requests == 100 and w.p50_ms == pytest.approx(50.5) and w.p99_ms == pytest.approx(99.01)
    clock.t += 5.0
    assert st.window().p99_ms == pytest.approx(99.01)  # still inside the window
    clock.t += 6.0
    w = st.window()
    assert w.requests == 0 and w.p50_ms is None and w.p99_ms is None  # unknown, not a stale 99 ms
    assert st.requests == 100  # the counters remain
    st.record_request(0.002)
    assert st.window().p99_ms == pytest.approx(2.0)


def test_capacity_is_throughput_over_busy_fraction_times_threads():
    clock = Clock()
    st = RollingStats(threads=2, clock=clock, window_s=10.0)
    clock.t += 10.0  # older than its window: the span is the whole window
    for _ in range(40):  # 40 batches of 100 rows, 0.1 s of model time each: 4 s busy over 2 threads
        st.record_batch(100, 0.5, 0.001, 0.1)
    w = st.window()
    assert w.span_s == pytest.approx(10.0, abs=1.0)
    assert w.rows == 4000 and w.busy_s == pytest.approx(4.0) and w.mean_batch_rows == 100
    assert w.busy_fraction == pytest.approx(4.0 / (w.span_s * 2))
    assert w.capacity_rows_per_s == pytest.approx(2000.0)  # 1,000 rows per busy second x 2 threads
    assert (st.rows, st.busy_s, st.batches) == (4000, pytest.approx(4.0), 40)


def test_a_young_runner_counts_its_own_age_and_too_little_work_says_nothing():
    clock = Clock()
    st = RollingStats(clock=clock, window_s=10.0)
    clock.t += 2.0
    st.record_batch(10, 1.0, 0.0, 0.01)
    w = st.window()
    assert w.span_s == pytest.approx(2.0) and w.rows_per_s == pytest.approx(5.0)
    assert w.capacity_rows_per_s is None  # 10 ms of model time: too little to tell


def test_reset_forgets_warm_up_and_recent_is_cached_briefly():
    clock = Clock()
    st = RollingStats(clock=clock)
    st.record_batch(8, 1.0, 0.0, 1.0)
    st.record_request(0.5)
    st.reset()
    assert (st.rows, st.requests, st.busy_s) == (0, 0, 0.0) and st.window().rows == 0
    first = st.recent()
    st.record_batch(8, 1.0, 0.0, 1.0)
    assert st.recent() is first  # within 50 ms: the cached figures
    clock.t += 0.06
    assert st.recent().rows == 8 and st.recent().p99_ms is None  # no percentiles on the hot path


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="threads >= 1"):
        RollingStats(threads=0)


def test_a_busy_runners_capacity_follows_a_change_of_speed_within_about_a_second():
    clock = Clock()
    st = RollingStats(clock=clock, window_s=10.0, slots=20)
    for _ in range(100):  # 10 s at 1,000 rows per busy second, 90 % busy
        st.record_batch(90, 1.0, 0.0, 0.09)
        clock.t += 0.1
    assert st.window().capacity_rows_per_s == pytest.approx(1000.0)
    for _ in range(10):   # the device slows 4x: fully busy, 250 rows per busy second
        st.record_batch(25, 1.0, 0.0, 0.1)
        clock.t += 0.1
    w = st.window()
    assert w.capacity_rows_per_s == pytest.approx(250.0, rel=0.05)  # the newest second, not the 10 s mix
    assert w.rows / w.busy_s > 700  # what the whole window would have said


def test_a_lightly_loaded_runners_capacity_is_read_over_the_whole_window():
    clock = Clock()
    st = RollingStats(clock=clock, window_s=10.0, slots=20)
    for i in range(20):   # one 20 ms batch every half second: 0.4 s of model time in 10 s
        clock.t += 0.5
        st.record_batch(20 if i < 10 else 40, 1.0, 0.0, 0.02)
    assert st.window().capacity_rows_per_s == pytest.approx(1500.0)  # all of it: (200 + 400) rows / 0.4 s


def test_errors_are_counted_per_second_and_age_out():
    clock = Clock()
    st = RollingStats(clock=clock, window_s=10.0)
    clock.t += 10.0
    for _ in range(30):
        st.record_error()
    assert st.window().errors == 30 and st.window().errors_per_s == pytest.approx(3.0, rel=0.1)
    clock.t += 11.0
    assert st.window().errors == 0
