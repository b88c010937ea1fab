"""Batching never makes a call slower: whole requests, solo batches, callers that run their own.

The core with a fake clock (tables, then a property), the threaded shell's
``run`` path, and one call through gRPC.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving_helpers import running, server_config, write_python_model, x
from serving_helpers import x as _x

from serving.backends.signature import Signature, spec
from serving.batching import Batcher
from serving.batching.core import BatcherCore
from serving.config import BatchingConfig
from serving.errors import BackendError, DeadlineExpired, Overloaded


def core(**kw) -> BatcherCore:
    kw.setdefault("num_batch_threads", 1)
    return BatcherCore(config=BatchingConfig(**kw))


# Each row: config, requests (rows, all queued at t=0), the slot_free flag of each poll,
# and what each poll forms: the indices of the requests in the batch (whole), or None.
TABLE = {
    "lone large request runs whole": (
        {"max_batch_size": 4}, [10], [True, True], [(0,), None]),
    "lone large request needs no slot": (
        {"max_batch_size": 4}, [10], [False], [(0,)]),
    "a request is never cut to fill a batch": (
        {"max_batch_size": 4}, [3, 3], [True, True], [(0,), (1,)]),
    "whole requests fill a batch while they fit": (
        {"max_batch_size": 8}, [3, 3, 3], [True, True], [(0, 1), (2,)]),
    "solo goes ahead of smaller requests queued before it": (
        {"max_batch_size": 4}, [2, 9, 1], [True, True], [(1,), (0, 2)]),
    "without a slot only solo batches form": (
        {"max_batch_size": 4}, [2, 5, 6], [False, False, False, True], [(1,), (2,), None, (0,)]),
    "exactly max_batch_size is a full batch, not solo": (
        {"max_batch_size": 4}, [4], [False, True], [None, (0,)]),
    "split_requests cuts as TF Serving does": (
        {"max_batch_size": 4, "split_requests": True}, [3, 3], [True, True], [(0, 1), (1,)]),
    "allowed sizes imply cutting": (
        {"max_batch_size": 4, "allowed_batch_sizes": (2, 4)}, [6], [True, True], [(0,), (0,)]),
}


@pytest.mark.parametrize("case", TABLE)
def test_batches_formed(case):
    kw, requests, slots, expected = TABLE[case]
    c = core(**kw)
    tickets = [c.submit(rows, now=0.0) for rows in requests]
    formed = []
    for free in slots:
        b = c.poll(0.0, slot_free=free).batch
        formed.append(None if b is None else tuple(tickets.index(s.ticket) for s in b.slices))
    assert formed == expected


def test_a_solo_batch_is_marked_full_and_complete_reports_its_request():
    c = core(max_batch_size=4)
    t = c.submit(10, now=1.0)
    b = c.poll(1.5, slot_free=False).batch
    assert (b.rows, b.padded_rows, b.solo, b.oversized, b.fill) == (10, 10, True, True, 1.0)
    assert b.queue_delay == pytest.approx(0.5) and c.queued_rows == 0
    assert c.complete(b, 2.0) == (t,)


def test_small_batches_are_not_solo_and_a_timeout_still_applies_to_them():
    c = core(max_batch_size=8, batch_timeout_micros=1000)
    c.submit(3, now=0.0)
    p = c.poll(0.0005)
    assert p.batch is None and p.wake_at == pytest.approx(0.001)
    c.submit(20, now=0.0006)                       # solo: no need to wait for the timeout
    b = c.poll(0.0006).batch
    assert b.solo and b.rows == 20
    b = c.poll(0.0011).batch
    assert not b.solo and b.rows == 3


def test_an_expired_solo_request_never_reaches_a_batch():
    c = core(max_batch_size=4)
    t = c.submit(10, now=0.0, deadline=0.5)
    p = c.poll(1.0, slot_free=False)
    assert p.expired == (t,) and p.batch is None and c.queued_rows == 0


def test_the_queue_bound_still_refuses_what_does_not_fit():
    c = core(max_batch_size=4, max_enqueued_batches=2)
    with pytest.raises(Overloaded, match="queue full"):
        c.submit(9, now=0.0)


def test_a_solo_batch_is_no_evidence_for_the_slo_controller():
    c = core(max_batch_size=64, slo_p99_ms=10.0, slo_additive_step=2)
    c.submit(100, now=0.0)
    b = c.poll(0.0).batch
    c.complete(b, 1.0)                             # far over the target, but not the limit's doing
    assert b.solo and c.batch_limit == 2


OPS = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 30)),
    st.tuples(st.just("poll"), st.booleans(), st.floats(0.0, 0.01)),
    st.tuples(st.just("complete"), st.integers(0, 5)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPS, st.integers(1, 16))
def test_requests_are_never_cut_and_only_solo_batches_pass_the_limit(ops, mbs):
    c = core(max_batch_size=mbs, max_enqueued_batches=4)
    now, running, order = 0.0, [], []
    for op in ops:
        if op[0] == "submit":
            try:
                order.append(c.submit(op[1], now))
            except Overloaded:
                assert c.queued_rows + op[1] > 4 * mbs
        elif op[0] == "poll":
            now += op[2]
            b = c.poll(now, slot_free=op[1]).batch
            if b is None:
                continue
            assert all(s.start == 0 and s.stop == s.ticket.rows for s in b.slices)   # whole
            if b.solo:
                assert len(b.slices) == 1 and b.rows > mbs
            else:
                assert op[1] and b.rows <= mbs             # a slot, and whole requests that fit
                queued = [t for t in order if t.taken == 0 or t in {s.ticket for s in b.slices}]
                small = [t for t in queued if t.rows <= mbs]
                assert [s.ticket for s in b.slices] == small[:len(b.slices)]    # oldest first
            running.append(b)
        elif running:
            b = running.pop(op[1] % len(running))
            assert c.complete(b, now) == tuple(s.ticket for s in b.slices)
        assert c.queued_rows == sum(t.rows for t in order if t.taken == 0)


# --------------------------------------------------------------------------- the shell


class Model:
    """y = 2x + 1; records (rows, thread) per call; calls whose first value is 42 wait on the gate."""

    signature = Signature(inputs={"x": spec("<f4", [None, 3])}, outputs={"y": spec("<f4", [None, 3])})

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail = fail

    def predict(self, inputs):
        self.calls.append((len(inputs["x"]), threading.get_ident()))
        if inputs["x"][0, 0] == 42:
            self.entered.set()
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2 + 1}

    def close(self):
        pass




@pytest.fixture
def batcher():
    made = []

    def make(model, **kw):
        kw.setdefault("num_batch_threads", 1)
        made.append(Batcher(model, BatchingConfig(**kw)))
        return made[-1]
    yield make
    for b in made:
        b.close(5)


def test_an_idle_batcher_runs_the_call_on_the_callers_thread_whole(batcher):
    model = Model()
    b = batcher(model, max_batch_size=8)
    for rows in (3, 50):
        np.testing.assert_array_equal(b.run({"x": _x(rows)}, rows)["y"], _x(rows) * 2 + 1)
    assert model.calls == [(3, threading.get_ident()), (50, threading.get_ident())]
    assert (b.stats.batches, b.stats.requests, b.stats.rows) == (2, 2, 53)
    assert b.stats.busy_s > 0


def test_a_large_call_runs_at_once_while_the_thread_is_busy_and_small_ones_wait(batcher):
    model = Model()
    b = batcher(model, max_batch_size=8)
    held = b.submit({"x": _x(1, start=42)}, 1)     # holds the only slot
    assert model.entered.wait(5)
    small = []
    callers = [threading.Thread(target=lambda i=i: small.append(b.run({"x": _x(2, 100 * i)}, 2)))
               for i in range(1, 4)]
    for t in callers:
        t.start()
    while b.queue_depth() < 6:
        threading.Event().wait(0.001)
    out = b.run({"x": _x(20)}, 20)                 # solo: does not wait for the slot
    np.testing.assert_array_equal(out["y"], _x(20) * 2 + 1)
    assert len(small) == 0 and b.queue_depth() == 6
    model.gate.set()
    held.result(5)
    for t in callers:
        t.join(5)
    assert len(small) == 3
    assert sorted(rows for rows, _ in model.calls) == [1, 6, 20]   # the three small ones: one batch


def test_a_call_that_expires_in_the_queue_raises_and_never_reaches_the_model(batcher):
    model = Model()
    b = batcher(model, max_batch_size=8)
    held = b.submit({"x": _x(1, start=42)}, 1)
    assert model.entered.wait(5)
    with pytest.raises(DeadlineExpired, match="waiting for model"):
        b.run({"x": _x(2)}, 2, deadline=time.monotonic() + 0.05)
    model.gate.set()
    held.result(5)
    b.run({"x": _x(3)}, 3)
    assert [rows for rows, _ in model.calls] == [1, 3]


def test_a_model_error_is_raised_to_the_caller_that_ran_it(batcher):
    b = batcher(Model(fail=True), max_batch_size=8)
    with pytest.raises(BackendError, match="RuntimeError: boom"):
        b.run({"x": _x(2)}, 2)
    with pytest.raises(BackendError, match="RuntimeError: boom"):
        b.run({"x": _x(20)}, 20)


def test_inputs_that_do_not_concatenate_are_run_apart_and_both_answered(batcher):
    model = Model()
    model.signature = Signature(inputs={"x": spec("<f4", [None, None])},
                                outputs={"y": spec("<f4", [None, None])})
    b = batcher(model, max_batch_size=8)
    held = b.submit({"x": _x(1, start=42)}, 1)
    assert model.entered.wait(5)
    a = b.submit({"x": np.zeros((1, 3), np.float32)}, 1)
    c = b.submit({"x": np.zeros((1, 4), np.float32)}, 1)
    model.gate.set()
    held.result(5)
    assert a.result(5)["y"].shape == (1, 3)      # the batch failed (no concatenation):
    assert c.result(5)["y"].shape == (1, 4)      # each request re-run alone, neither at fault
    assert b.run({"x": _x(2)}, 2)["y"].shape == (2, 3)     # the batch thread lives on


def test_close_waits_for_a_batch_a_caller_is_running(batcher):
    model = Model()
    b = batcher(model, max_batch_size=8)
    out = []
    caller = threading.Thread(target=lambda: out.append(b.run({"x": _x(20, start=42)}, 20)))
    caller.start()
    assert model.entered.wait(5)
    closer = threading.Thread(target=b.close, args=(5,))
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()                       # still waiting for the caller's batch
    model.gate.set()
    closer.join(5)
    caller.join(5)
    assert not closer.is_alive() and out[0]["y"].shape == (20, 3)


def test_a_lone_2000_row_call_is_one_model_call_through_grpc(tmp_path, client_for):
    write_python_model(tmp_path, "aff", 1)
    with running(server_config(tmp_path, max_batch_size=256)) as server:
        c = client_for(server)
        resp = c.predict(model="aff", inputs={"x": x(2000)})
        np.testing.assert_array_equal(resp.outputs()["y"], x(2000) * 2 + 1)
        model = server.manager.snapshot["aff"][1].backend._model
        assert [len(call) for call in model.calls[-1:]] == [2000]
        status = server.status().models["aff"]
        assert (status.batching.batches, status.batching.rows) == (1, 2000)
