"""The batcher core with a fake clock: every decision checked exactly, no threads."""

from __future__ import annotations

import pytest

from serving.batching.core import BatcherCore
from serving.batching.slo import AimdController
from serving.config import BatchingConfig
from serving.errors import ConfigError, Overloaded


def core(**kw) -> BatcherCore:
    kw.setdefault("num_batch_threads", 1)
    return BatcherCore(config=BatchingConfig(**kw))


def test_no_timeout_dispatches_whatever_is_queued_at_once():
    c = core(max_batch_size=8)
    c.submit(3, now=0.0)
    c.submit(2, now=0.0)
    p = c.poll(0.0)
    assert p.batch.rows == 5 and [s.rows for s in p.batch.slices] == [3, 2]
    assert [s.offset for s in p.batch.slices] == [0, 3]
    assert c.poll(0.0).batch is None and c.poll(0.0).wake_at is None


def test_timeout_waits_for_a_full_batch_or_the_oldest_request_to_age():
    c = core(max_batch_size=4, batch_timeout_micros=1000)
    c.submit(1, now=10.0)
    p = c.poll(10.0005)
    assert p.batch is None and p.wake_at == pytest.approx(10.001)
    c.submit(3, now=10.0006)
    assert c.poll(10.0006).batch.rows == 4          # full: no need to wait
    c.submit(1, now=11.0)
    assert c.poll(11.0009).batch is None
    assert c.poll(11.0011).batch.rows == 1           # aged out


def test_large_request_is_split_and_reported_once_all_rows_are_done():
    c = core(max_batch_size=4, split_requests=True)     # TF Serving's splitting
    big = c.submit(10, now=0.0)
    batches = [c.poll(0.0).batch for _ in range(3)]
    assert [b.rows for b in batches] == [4, 4, 2]
    assert [(s.start, s.stop) for b in batches for s in b.slices] == [(0, 4), (4, 8), (8, 10)]
    assert c.complete(batches[1], 1.0) == ()
    assert c.complete(batches[0], 1.0) == ()
    assert c.complete(batches[2], 1.0) == (big,)


def test_a_request_fills_the_room_left_and_continues_in_the_next_batch():
    c = core(max_batch_size=4, split_requests=True)
    a, b = c.submit(3, now=0.0), c.submit(3, now=0.0)
    first, second = c.poll(0.0).batch, c.poll(0.0).batch
    assert [(s.ticket, s.start, s.stop) for s in first.slices] == [(a, 0, 3), (b, 0, 1)]
    assert [(s.ticket, s.start, s.stop) for s in second.slices] == [(b, 1, 3)]
    assert c.complete(first, 1.0) == (a,)
    assert c.complete(second, 1.0) == (b,)


def test_queue_bound_fails_fast_and_frees_up_after_dispatch():
    c = core(max_batch_size=4, max_enqueued_batches=2, split_requests=True)
    c.submit(8, now=0.0)
    with pytest.raises(Overloaded, match="queue full: 8 rows queued \\+ 1 requested > 8"):
        c.submit(1, now=0.0)
    c.poll(0.0)
    c.submit(4, now=0.0)
    assert c.queued_rows == 8


def test_expired_request_never_reaches_a_batch():
    c = core(max_batch_size=4, batch_timeout_micros=10_000)
    late = c.submit(1, now=0.0, deadline=0.005)
    ok = c.submit(1, now=0.001, deadline=1.0)
    p = c.poll(0.004)
    assert p.batch is None and p.wake_at == pytest.approx(0.005)   # the deadline wakes us
    p = c.poll(0.012)
    assert p.expired == (late,) and late.expired
    assert [s.ticket for s in p.batch.slices] == [ok]
    assert c.queued_rows == 0


def test_partly_run_request_that_expires_is_dropped_and_not_reported_done():
    c = core(max_batch_size=2, split_requests=True)
    t = c.submit(4, now=0.0, deadline=1.0)
    first = c.poll(0.0).batch
    p = c.poll(2.0)
    assert p.expired == (t,) and p.batch is None and c.queued_rows == 0
    assert c.complete(first, 2.0) == ()


def test_padding_to_allowed_batch_sizes():
    c = core(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    c.submit(3, now=0.0)
    b = c.poll(0.0).batch
    assert (b.rows, b.padded_rows, b.fill) == (3, 4, 3 / 8)


def test_failed_batch_fails_its_requests_and_drops_their_queued_rows():
    c = core(max_batch_size=2)
    t = c.submit(3, now=0.0)
    other = c.submit(1, now=0.0)
    first = c.poll(0.0).batch
    assert c.fail(first) == (t,)
    assert [s.ticket for s in c.poll(0.0).batch.slices] == [other]


def test_drain_all_returns_everything_queued():
    c = core()
    ts = [c.submit(1, now=0.0) for _ in range(3)]
    assert c.drain_all() == tuple(ts) and c.queued_rows == 0


@pytest.mark.parametrize("kw, match", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_batch_size": 8, "allowed_batch_sizes": (2, 4)}, "must equal"),
    ({"max_batch_size": 8, "allowed_batch_sizes": (4, 2, 8)}, "increasing"),
    ({"batch_timeout_micros": -1}, "batch_timeout_micros"),
    ({"slo_decrease_factor": 1.5}, "slo_decrease_factor"),
])
def test_batching_config_is_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        BatchingConfig(**kw)


def test_aimd_increases_on_full_batches_under_target_and_backs_off_over_it():
    a = AimdController(target_s=0.010, max_size=20, step=4, factor=0.5)
    assert a.size == 4
    assert a.observe(rows=4, latency_s=0.005) == 8
    assert a.observe(rows=3, latency_s=0.005) == 8          # not full: no evidence
    assert [a.observe(rows=a.size, latency_s=0.001) for _ in range(4)] == [12, 16, 20, 20]
    assert a.observe(rows=20, latency_s=0.050) == 10
    assert a.observe(rows=10, latency_s=0.050) == 5
    for _ in range(5):
        a.observe(rows=1, latency_s=1.0)
    assert a.size == 1


def test_slo_mode_limits_batches_to_the_controller_size():
    c = core(max_batch_size=64, slo_p99_ms=10.0, slo_additive_step=2)
    for _ in range(10):
        c.submit(1, now=0.0)
    b = c.poll(0.0).batch
    assert b.rows == 2 and b.limit == 2
    c.complete(b, 0.001)                      # met the target with a full batch
    assert c.batch_limit == 4
    b = c.poll(0.050).batch                   # queue wait does not count ...
    c.complete(b, 0.052)
    assert c.batch_limit == 6
    b = c.poll(0.052).batch
    c.complete(b, 0.100)                      # ... processing time over the target does
    assert c.batch_limit == 5


# --------------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

OPS = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 40), st.none() | st.floats(0.0, 5.0)),
    st.tuples(st.just("poll"), st.floats(0.0, 1.0)),
    st.tuples(st.just("complete"), st.integers(0, 5)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPS, st.integers(1, 16), st.sampled_from([0, 1000, 100_000]))
def test_every_row_runs_at_most_once_and_requests_finish_exactly_when_done(ops, mbs, timeout):
    c = core(max_batch_size=mbs, batch_timeout_micros=timeout, max_enqueued_batches=4,
             split_requests=True)     # the default mode: test_srv_batcher_lone.py
    now = 0.0
    running, tickets, seen = [], [], {}
    finished, expired = set(), set()
    for op in ops:
        if op[0] == "submit":
            rows = op[1]
            deadline = None if op[2] is None else now + op[2]
            try:
                tickets.append(c.submit(rows, now, deadline))
            except Overloaded:
                assert c.queued_rows + rows > 4 * mbs
        elif op[0] == "poll":
            now += op[1]
            p = c.poll(now)
            expired.update(t.id for t in p.expired)
            for t in p.expired:
                assert t.deadline is not None and t.deadline <= now
            if p.batch:
                b = p.batch
                assert 0 < b.rows <= mbs and b.rows == sum(s.rows for s in b.slices)
                assert [s.offset for s in b.slices] == \
                    [sum(x.rows for x in b.slices[:i]) for i in range(len(b.slices))]
                for s in b.slices:
                    assert s.ticket.id not in expired
                    for r in range(s.start, s.stop):
                        assert (s.ticket.id, r) not in seen      # no row twice
                        seen[s.ticket.id, r] = b.id
                running.append(b)
        elif running:
            b = running.pop(op[1] % len(running))
            for t in c.complete(b, now):
                assert t.id not in finished and t.id not in expired
                assert all((t.id, r) in seen for r in range(t.rows))
                finished.add(t.id)
        assert c.queued_rows == sum(t.rows - t.taken for t in tickets
                                    if t.id not in expired and t.taken < t.rows)
    for b in running:
        for t in c.complete(b, now):
            finished.add(t.id)
    # everything fully dispatched and completed is reported, unless it expired
    for t in tickets:
        if t.taken == t.rows and t.id not in expired:
            assert t.id in finished
