"""One caller's bad data fails that caller only (issue 10, part 2).

A batch that fails is cut in halves and re-run until each failure is one
request's own: the core's decisions with a fake clock (a table, then a
property), the threaded batcher with a Python model, then a real TF
SavedModel with an embedding lookup behind a real gRPC server, called by
concurrent callers batched together.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving_helpers import running, server_config, x

from serving.backends.python import PythonBackend
from serving.backends.signature import Signature, spec
from serving.batching import Batcher
from serving.batching.core import BatcherCore
from serving.batching.runner import DirectRunner
from serving.config import BatchingConfig
from serving.errors import BackendError, DeadlineExpired, InvalidInput


def core(**kw) -> BatcherCore:
    kw.setdefault("num_batch_threads", 1)
    return BatcherCore(config=BatchingConfig(**kw))


# -- the core: what a failed batch becomes -------------------------------------------

def test_a_failed_batch_of_several_requests_is_cut_in_halves_to_re_run():
    c = core(max_batch_size=8)
    ts = [c.submit(rows, now=0.0) for rows in (1, 2, 3, 1, 1)]
    batch = c.poll(0.0).batch
    verdict = c.isolate(batch, now=1.0)
    assert verdict.culprit is None and verdict.expired == ()
    first, second = verdict.retry
    assert [s.ticket for s in first.slices] == ts[:3] and [s.ticket for s in second.slices] == ts[3:]
    assert [s.offset for s in first.slices] == [0, 1, 3] and [s.offset for s in second.slices] == [0, 1]
    assert (first.rows, second.rows, first.retry, first.formed_at) == (6, 2, True, 1.0)
    assert first.id != batch.id != second.id and not any(t.expired for t in ts)


def test_a_failed_batch_of_one_request_convicts_it_and_drops_its_queued_rows():
    c = core(max_batch_size=4, split_requests=True)
    big = c.submit(6, now=0.0)
    other = c.submit(1, now=0.0)
    first = c.poll(0.0).batch                        # big's rows 0..4 alone
    verdict = c.isolate(first, now=0.0)
    assert verdict.culprit is big and verdict.retry == () and big.expired
    assert [s.ticket for s in c.poll(0.0).batch.slices] == [other]  # big's rest never runs
    assert c.queued_rows == 0


def test_a_request_whose_deadline_passed_is_not_re_run():
    c = core(max_batch_size=8)
    late = c.submit(1, now=0.0, deadline=0.5)
    a, b = c.submit(1, now=0.0), c.submit(1, now=0.0)
    verdict = c.isolate(c.poll(0.0).batch, now=1.0)
    assert verdict.expired == (late,) and late.expired
    assert [[s.ticket for s in h.slices] for h in verdict.retry] == [[a], [b]]


def test_a_request_already_failed_elsewhere_is_not_re_run_and_one_left_runs_alone():
    c = core(max_batch_size=4, split_requests=True)
    a = c.submit(3, now=0.0)
    b = c.submit(3, now=0.0)
    first, second = c.poll(0.0).batch, c.poll(0.0).batch    # [a, b 0..1], [b 1..3]
    assert c.isolate(second, now=0.0).culprit is b          # b's other rows failed alone
    verdict = c.isolate(first, now=0.0)                    # so the batch that failed with it:
    assert verdict.culprit is None                         # nobody convicted on shared rows
    assert [[s.ticket for s in h.slices] for h in verdict.retry] == [[a]]


def test_retries_are_padded_to_allowed_sizes_and_do_not_steer_the_slo_controller():
    c = core(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    for rows in (3, 2, 1):
        c.submit(rows, now=0.0)
    first, second = c.isolate(c.poll(0.0).batch, now=0.0).retry
    assert (first.rows, first.padded_rows, second.rows, second.padded_rows) == (5, 8, 1, 2)
    slo = core(max_batch_size=64, slo_p99_ms=10.0)
    for _ in range(4):
        slo.submit(1, now=0.0)
    size = slo.batch_limit
    halves = slo.isolate(slo.poll(0.0).batch, now=0.0).retry
    slo.complete(halves[0], now=0.001)                    # fast, but a retry: no evidence
    assert slo.batch_limit == size


def _bisect(c: BatcherCore, culprits: set[int]) -> tuple[set[int], set[int], list[int]]:
    """Run the queue through the core as the shell does; a batch fails iff it holds a culprit."""
    convicted, answered, runs = set(), set(), []
    while (batch := c.poll(0.0).batch) is not None:
        failures = []
        runs.append(len(batch.slices))
        if any(s.ticket.id in culprits for s in batch.slices):
            failures.append(batch)
        else:
            answered.update(t.id for t in c.complete(batch, 0.0))
        while failures:
            verdict = c.isolate(failures.pop(), now=0.0)
            if verdict.culprit is not None:
                convicted.add(verdict.culprit.id)
            for part in verdict.retry:
                runs.append(len(part.slices))
                if any(s.ticket.id in culprits for s in part.slices):
                    failures.append(part)
                else:
                    answered.update(t.id for t in c.complete(part, 0.0))
    return convicted, answered, runs


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.integers(1, 3), min_size=1, max_size=24), data=st.data())
def test_bisection_convicts_exactly_the_culprits_and_answers_everyone_else(rows, data):
    culprits = set(data.draw(st.sets(st.integers(0, len(rows) - 1), max_size=len(rows))))
    c = core(max_batch_size=sum(rows))                    # one batch holds them all
    for n in rows:
        c.submit(n, now=0.0)
    convicted, answered, runs = _bisect(c, culprits)
    assert convicted == culprits
    assert answered == set(range(len(rows))) - culprits
    assert len(runs) <= 2 * len(rows) - 1                 # never twice the unbatched cost
    if len(culprits) == 1 and len(rows) > 1:              # one culprit: ~2 log2(n) re-runs
        assert len(runs) <= 1 + 2 * math.ceil(math.log2(len(rows)))


# -- the threaded batcher with a Python model ---------------------------------------

class Picky:
    """y = 2x + 1; refuses a negative value (as an embedding refuses an id out of range),
    naming it; calls whose first value is 42 wait on the gate."""

    signature = Signature(inputs={"x": spec("<f4", [None, 3])}, outputs={"y": spec("<f4", [None, 3])})
    input_errors = (ValueError,)

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict(self, inputs):
        xs = inputs["x"]
        self.calls.append(len(xs))
        if xs[0, 0] == 42:
            self.entered.set()
            assert self.gate.wait(10)
        if (xs < 0).any():
            raise ValueError(f"value {xs[xs < 0][0]:g} is out of range")
        return {"y": xs * 2 + 1}

    def close(self):
        pass


@pytest.fixture
def held_batcher():
    """A batcher whose one batch thread is held by a first call until the test lets it go."""
    made = []

    def make(model, **kw):
        kw.setdefault("num_batch_threads", 1)
        b = Batcher(PythonBackend(model, path="picky"), BatchingConfig(**kw))
        made.append(b)
        held = b.submit({"x": x(1, start=42)}, 1)
        assert model.entered.wait(5)
        return b, held

    yield make
    for b in made:
        b.close(5)


def test_only_the_culprit_of_a_batch_fails_and_the_others_get_their_results(held_batcher):
    model = Picky()
    b, held = held_batcher(model, max_batch_size=8)
    inputs = [x(1, start=10 * i) for i in range(8)]
    inputs[5] = np.full((1, 3), -7.0, np.float32)
    futures = [b.submit({"x": v}, 1) for v in inputs]      # queued together: one batch
    model.gate.set()
    held.result(5)
    for i, fut in enumerate(futures):
        if i == 5:
            with pytest.raises(InvalidInput, match="rejected the input: ValueError: value -7 "):
                fut.result(5)
        else:
            np.testing.assert_array_equal(fut.result(5)["y"], inputs[i] * 2 + 1)
    assert model.calls == [1, 8, 4, 4, 2, 2, 1, 1]        # the batch, then the halves
    assert b.run({"x": x(2)}, 2)["y"].shape == (2, 3)


def test_a_request_split_over_batches_fails_whole_and_its_rest_never_runs(held_batcher):
    model = Picky()
    b, held = held_batcher(model, max_batch_size=4,
                           split_requests=True)
    a = b.submit({"x": x(2, start=100)}, 2)
    bad = x(6, start=200)
    bad[1, 0] = -3.0                                   # in its first part, beside a's rows
    culprit = b.submit({"x": bad}, 6)
    d = b.submit({"x": x(2, start=300)}, 2)
    model.gate.set()
    held.result(5)
    np.testing.assert_array_equal(a.result(5)["y"], x(2, start=100) * 2 + 1)
    np.testing.assert_array_equal(d.result(5)["y"], x(2, start=300) * 2 + 1)
    with pytest.raises(InvalidInput, match="value -3 "):
        culprit.result(5)
    assert model.calls == [1, 4, 2, 2, 2]      # [a, culprit 0..2] failed; a; culprit; d
    assert b.queue_depth() == 0


def test_a_model_error_not_declared_the_inputs_fault_is_internal_and_isolated_too(held_batcher):
    model = Picky()
    model.input_errors = ()
    b, held = held_batcher(model, max_batch_size=8)
    good = b.submit({"x": x(1, start=5)}, 1)
    bad = b.submit({"x": np.full((1, 3), -1.0, np.float32)}, 1)
    model.gate.set()
    held.result(5)
    np.testing.assert_array_equal(good.result(5)["y"], x(1, start=5) * 2 + 1)
    with pytest.raises(BackendError, match="model raised ValueError: value -1 ") as err:
        bad.result(5)
    assert err.value.code == grpc.StatusCode.INTERNAL


def test_a_request_whose_deadline_passed_while_its_batch_failed_is_not_re_run():
    model = Picky()
    now = [0.0]
    real_predict = model.predict

    def slow_predict(inputs):                 # the failing batch takes 10 s of fake time
        try:
            return real_predict(inputs)
        except ValueError:
            now[0] += 10.0
            raise

    model.predict = slow_predict
    b = Batcher(PythonBackend(model, path="picky"), BatchingConfig(max_batch_size=8),
                clock=lambda: now[0])
    try:
        held = b.submit({"x": x(1, start=42)}, 1)
        assert model.entered.wait(5)
        late = b.submit({"x": x(1, start=1)}, 1, deadline=5.0)
        bad = b.submit({"x": np.full((1, 3), -1.0, np.float32)}, 1)
        model.gate.set()
        held.result(5)
        with pytest.raises(DeadlineExpired, match="re-run"):
            late.result(5)
        with pytest.raises(InvalidInput, match="value -1 "):
            bad.result(5)
        assert model.calls == [1, 2, 1]       # late never ran again; bad ran alone
    finally:
        b.close(5)


def test_direct_runner_classifies_a_declared_input_error_as_invalid_argument():
    model = Picky()
    model.gate.set()
    r = DirectRunner(PythonBackend(model, path="picky"))
    with pytest.raises(InvalidInput) as err:
        r.run({"x": np.full((2, 3), -2.0, np.float32)}, 2)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_python_model_must_declare_input_errors_as_exception_types():
    model = Picky()
    model.input_errors = ("ValueError",)
    with pytest.raises(Exception, match="input_errors must be a tuple of exception types"):
        PythonBackend(model, path="picky")


# -- a real TF embedding lookup behind a real gRPC server ----------------------------

VOCAB = 10


@pytest.fixture(scope="module")
def embedding_repo(tmp_path_factory):
    """emb/1: score = sum of the looked-up rows of ids[?, 3] in a VOCAB x 2 table; ids out
    of [0, VOCAB) make tf.gather raise InvalidArgumentError on CPU."""
    tf = pytest.importorskip("tensorflow", reason="the TF extra is not installed")
    root = tmp_path_factory.mktemp("emb_models")

    class Emb(tf.Module):
        def __init__(self):
            self.table = tf.Variable(np.arange(VOCAB * 2, dtype=np.float32).reshape(VOCAB, 2))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int64, name="ids")])
        def serve(self, ids):
            return {"score": tf.reduce_sum(tf.gather(self.table, ids), axis=[1, 2])}

    module = Emb()
    tf.saved_model.save(module, str(root / "emb" / "1"),
                        signatures={"serving_default": module.serve})
    return root


def expected_score(ids: np.ndarray) -> np.ndarray:
    return (4 * ids + 1).sum(axis=1).astype(np.float32)    # row i of the table: 2i, 2i + 1


def _call_together(client, calls: list[np.ndarray]) -> list[object]:
    """Every call at once (the batch forms when all rows are queued); result or RpcError."""
    def one(ids):
        try:
            return client.predict(model="emb", inputs={"ids": ids}).outputs("emb")["score"]
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


@pytest.mark.parametrize("bad", [{3: 7777}, {1: 7777, 6: 8888}], ids=["one", "two"])
def test_tf_embedding_out_of_range_fails_only_its_caller_with_invalid_argument(
        embedding_repo, client_for, bad):
    rng = np.random.default_rng(7)
    calls = [rng.integers(0, VOCAB, size=(1 + i % 3, 3), dtype=np.int64) for i in range(8)]
    for i, value in bad.items():
        calls[i][-1, 1] = value
    rows = sum(len(c) for c in calls)
    # the batch forms only when every call's rows are queued: all eight run in one batch
    cfg = server_config(embedding_repo, max_batch_size=rows, batch_timeout_micros=60_000_000,
                        num_batch_threads=1)
    cfg = replace(cfg, defaults=replace(cfg.defaults, warmup=False))
    with running(cfg) as server:
        results = _call_together(client_for(server), calls)
        for i, (ids, got) in enumerate(zip(calls, results, strict=True)):
            if i in bad:
                assert isinstance(got, grpc.RpcError), f"call {i} should have failed: {got}"
                assert got.code() == grpc.StatusCode.INVALID_ARGUMENT, got.details()
                assert f"= {bad[i]} is not in [0, {VOCAB})" in got.details()
                others = set(bad.values()) - {bad[i]}
                assert not any(str(v) in got.details() for v in others), got.details()
            else:
                assert not isinstance(got, grpc.RpcError), f"innocent call {i}: {got.details()}"
                np.testing.assert_array_equal(got, expected_score(ids))
        assert server.status().models["emb"].batching.batches >= 2    # it was re-run
