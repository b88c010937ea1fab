"""Admission on a real server: refusals are immediate, carry a retry-after, and respect priority."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from serving_helpers import running, server_config, write_python_model, x

from protocol import wire
from protocol.wire import PredictRequest


def body(rows: int) -> bytes:
    return wire.encode_request(PredictRequest(model="aff", inputs={"x": x(rows)}))


def md(priority: str | None):
    return None if priority is None else ((wire.PRIORITY_KEY, priority),)


def retry_after_ms(err: grpc.RpcError) -> int | None:
    found = [v for k, v in err.trailing_metadata() or () if k == wire.RETRY_AFTER_KEY]
    return int(found[0]) if found else None


@pytest.fixture
def repo(tmp_path):
    write_python_model(tmp_path, "aff", 1, scale=2.0)
    return tmp_path


@pytest.fixture
def held(repo, client_for):
    """A server whose one batch thread is held, 20 rows queued, and a measured pace of 100
    rows/s in 100 ms batches: a default call may wait 300 ms (3 batch times), a sheddable one 150."""
    def make(**batching):
        ctx = running(server_config(repo, num_batch_threads=1, **batching))
        server = ctx.__enter__()
        c = client_for(server)
        lv = server.manager.snapshot["aff"][1]
        for _ in range(100):
            lv.runner.stats.record_batch(10, 1.0, 0.0, 0.1)
        model = lv.backend._model
        model.gate.clear()
        model.entered.clear()
        calls = [c._predict.future(body(1))]
        assert model.entered.wait(10)
        calls.append(c._predict.future(body(20)))
        while lv.runner.queue_depth() < 20:
            threading.Event().wait(0.001)   # until the server has queued it (no timing)
        return server, c, model, calls, ctx
    made = []

    def factory(**batching):
        made.append(make(**batching))
        return made[-1][:4]
    yield factory
    for _server, _c, model, _calls, ctx in made:
        model.gate.set()
        ctx.__exit__(None, None, None)


def test_overload_refusals_are_immediate_name_the_figures_and_say_when_to_return(held):
    server, c, model, calls = held()
    with pytest.raises(grpc.RpcError) as err:
        c._predict(body(1), timeout=30, metadata=md("sheddable"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "150 ms a sheddable call may wait" in err.value.details()
    assert retry_after_ms(err.value) >= 10
    calls.append(c._predict.future(body(1)))                              # default: 205 ms < 300 ms
    calls.append(c._predict.future(body(1), metadata=md("critical")))    # critical: up to 1.2 s
    while server.manager.snapshot["aff"][1].runner.queue_depth() < 22:
        threading.Event().wait(0.001)
    model.gate.set()
    for call in calls:
        assert wire.decode_response(call.result(10)).outputs()["y"].shape[1] == 3
    assert server.manager.snapshot["aff"][1].runner.stats.window().errors == 1


def test_a_call_that_cannot_meet_its_deadline_is_refused_at_once(held):
    server, c, model, calls = held(max_queue_delay_ms=0)                  # no wait bound: deadlines only
    calls += [c._predict.future(body(90)) for _ in range(2)]              # 1.8 s of work queued
    while server.manager.snapshot["aff"][1].runner.queue_depth() < 200:
        threading.Event().wait(0.001)
    with pytest.raises(grpc.RpcError) as late:                            # 1.8 s queued > 1 s left
        c._predict(body(1), timeout=1.0)
    assert late.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "after its deadline" in late.value.details() and retry_after_ms(late.value) >= 800
    calls.append(c._predict.future(body(1), timeout=30))                  # time enough: queued
    model.gate.set()
    for call in calls:
        call.result(30)


def test_without_admission_the_same_calls_are_queued(held):
    server, c, model, calls = held(admission=False)
    calls.append(c._predict.future(body(1), metadata=md("sheddable")))
    while server.manager.snapshot["aff"][1].runner.queue_depth() < 21:
        threading.Event().wait(0.001)
    model.gate.set()
    for call in calls:
        call.result(10)


def test_a_fixed_wait_bound_from_the_config(held):
    server, c, model, calls = held(max_queue_delay_ms=5)
    with pytest.raises(grpc.RpcError) as err:
        c._predict(body(1), timeout=30)
    assert "over the 5 ms a default call may wait" in err.value.details()


def test_a_bad_priority_is_the_callers_mistake(repo, client_for):
    with running(server_config(repo)) as server:
        c = client_for(server)
        with pytest.raises(grpc.RpcError) as err:
            c._predict(body(1), timeout=30, metadata=md("urgent"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "wei-priority: expected one of sheddable, default, critical, got 'urgent'" in err.value.details()
        assert retry_after_ms(err.value) is None


def test_the_cli_sets_the_bound_and_turns_admission_off():
    from serving.cli import build_config, parser
    args = parser().parse_args(["--models", str(Path(__file__).parent), "--max-queue-delay-ms", "250",
                                "--no-admission"])
    b = build_config(args).defaults.batching
    assert (b.max_queue_delay_ms, b.admission) == (250.0, False)
