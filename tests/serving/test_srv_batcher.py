"""The threaded batcher around a real (Python) backend: results land on the right request."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_helpers import x as _x

from serving.backends.signature import Signature, spec
from serving.batching import Batcher, DirectRunner
from serving.config import BatchingConfig
from serving.errors import BackendError, DeadlineExpired, Draining


class Affine:
    """y = 2x + 1 per row; records the batch sizes it saw; can be gated."""

    signature = Signature(inputs={"x": spec("<f4", [None, 3])}, outputs={"y": spec("<f4", [None, 3])})

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.gate = gate
        self.fail = fail

    def predict(self, inputs):
        self.batches.append(len(inputs["x"]))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2 + 1}

    def close(self):
        pass




def test_concurrent_requests_are_batched_and_each_gets_its_own_rows():
    gate = threading.Event()
    model = Affine(gate)
    b = Batcher(model, BatchingConfig(max_batch_size=64, num_batch_threads=1))
    try:
        first = b.submit({"x": _x(1)}, 1)
        assert model.entered.wait(5)
        # while the only batch thread is busy, 20 requests queue up
        futs = [b.submit({"x": _x(r, 100 * i)}, r) for i, r in enumerate([1, 2, 3] * 6 + [5, 7])]
        gate.set()
        first.result(5)
        for i, (fut, r) in enumerate(zip(futs, [1, 2, 3] * 6 + [5, 7], strict=True)):
            np.testing.assert_array_equal(fut.result(5)["y"], _x(r, 100 * i) * 2 + 1)
        assert model.batches[0] == 1 and sum(model.batches) == 1 + 18 * 2 + 12
        assert max(model.batches[1:]) > 1 and len(model.batches) < 21
    finally:
        b.close()


def test_request_larger_than_max_batch_size_is_split_and_reassembled():
    model = Affine()
    b = Batcher(model, BatchingConfig(max_batch_size=4, num_batch_threads=2,
                                      allowed_batch_sizes=(2, 4)))
    try:
        out = b.submit({"x": _x(11)}, 11).result(5)["y"]
        np.testing.assert_array_equal(out, _x(11) * 2 + 1)
        assert sorted(model.batches) == [4, 4, 4]      # 4 + 4 + 3 padded to 4
    finally:
        b.close()


def test_many_threads_many_requests_stay_correct():
    model = Affine()
    b = Batcher(model, BatchingConfig(max_batch_size=16, num_batch_threads=2))
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: (i, b.submit({"x": _x(1 + i % 9, i)},
                                                            1 + i % 9).result(10)), range(200)))
        for i, out in results:
            np.testing.assert_array_equal(out["y"], _x(1 + i % 9, i) * 2 + 1)
    finally:
        b.close()


def test_request_that_expires_in_the_queue_never_reaches_the_model():
    gate = threading.Event()
    model = Affine(gate)
    now = [0.0]
    b = Batcher(model, BatchingConfig(max_batch_size=8, num_batch_threads=1),
                clock=lambda: now[0])
    try:
        first = b.submit({"x": _x(1)}, 1)
        assert model.entered.wait(5)
        late = b.submit({"x": _x(2)}, 2, deadline=1.0)
        now[0] = 2.0                       # the deadline passes while the thread is busy
        gate.set()
        first.result(5)
        with pytest.raises(DeadlineExpired, match="never reached the model"):
            late.result(5)
        b.submit({"x": _x(3)}, 3).result(5)
        assert model.batches == [1, 3]
    finally:
        b.close()


def test_model_error_fails_the_batch_and_the_batcher_keeps_working():
    model = Affine(fail=True)
    b = Batcher(model, BatchingConfig(max_batch_size=8, num_batch_threads=1))
    try:
        with pytest.raises(BackendError, match="RuntimeError: boom"):
            b.submit({"x": _x(1)}, 1).result(5)
        model.fail = False
        assert b.submit({"x": _x(1)}, 1).result(5)["y"].shape == (1, 3)
    finally:
        b.close()


def test_close_fails_queued_requests_and_refuses_new_ones():
    gate = threading.Event()
    model = Affine(gate)
    b = Batcher(model, BatchingConfig(max_batch_size=1, num_batch_threads=1))
    running = b.submit({"x": _x(1)}, 1)
    assert model.entered.wait(5)
    queued = b.submit({"x": _x(1)}, 1)
    closer = threading.Thread(target=b.close)
    closer.start()
    with pytest.raises(Draining):
        queued.result(5)
    gate.set()
    closer.join(5)
    assert running.result(5)["y"].shape == (1, 3)     # in-flight batch finished
    with pytest.raises(Draining):
        b.submit({"x": _x(1)}, 1)


def test_direct_runner_runs_each_request_alone():
    model = Affine()
    r = DirectRunner(model)
    np.testing.assert_array_equal(r.submit({"x": _x(2)}, 2).result()["y"], _x(2) * 2 + 1)
    assert model.batches == [2]
