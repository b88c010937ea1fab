"""OIP gRPC (inference.GRPCInferenceService): the official tritonclient against a real wei-serve.

Every method, an error case each, raw and typed inputs, a 2,000-row CTR call, and the msgpack path's
behaviour: batching, deadlines, priority and admission, load reports, metrics, draining.
"""

from __future__ import annotations

import threading
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_helpers import load_report, oip_repo, running, server_config, write_python_model, x

from protocol import oip, wire
from protocol.oip import pb
from protocol.oip.infer import decode_infer_response, encode_infer_request
from protocol.wire import PredictRequest
from serving.batching.admission import Admission, AdmissionConfig

tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = oip_repo(tmp_path_factory.mktemp("oip_grpc"))
    with running(server_config(root)) as s:
        yield s


@pytest.fixture
def triton(server):
    client = tg.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


@pytest.fixture
def stub(server):
    """A bare OIP stub over our generated messages: bytes in, bytes out, trailing metadata visible."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield lambda method: channel.unary_unary(oip.METHODS[method])
    channel.close()


def infer_input(name: str, arr: np.ndarray, datatype: str) -> tg.InferInput:
    i = tg.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)
    return i


def refused(fn, *args, **kw) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        fn(*args, **kw)
    return err.value


def test_health_answers_for_the_server_and_each_model(server, triton):
    assert triton.is_server_live() and triton.is_server_ready()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:   # Kubernetes' gRPC probe, by service
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=oip.SERVICE))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert triton.is_model_ready("affine") and triton.is_model_ready("affine", "1")
    assert not triton.is_model_ready("affine", "7") and not triton.is_model_ready("nope")
    err = refused(triton.is_model_ready, "affine", "latest")
    assert err.status() == "StatusCode.INVALID_ARGUMENT" and "model version must be empty" in err.message()


def test_metadata_of_the_server_and_of_a_model(triton):
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "wei-serve" and meta["extensions"] == ["binary_tensor_data"]
    model = triton.get_model_metadata("affine", as_json=True)
    assert (model["name"], model["versions"], model["platform"]) == ("affine", ["1"], "python")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}]   # int64 as JSON text
    assert [(o["name"], o["datatype"]) for o in model["outputs"]] == [("y", "FP32"), ("n", "INT64")]
    err = refused(triton.get_model_metadata, "nope")
    assert err.status() == "StatusCode.NOT_FOUND" and "loaded models: ['affine', 'text']" in err.message()


@pytest.mark.parametrize("method", sorted(oip.METHODS))
def test_a_message_that_does_not_parse_is_invalid_argument_naming_it(stub, method):
    with pytest.raises(grpc.RpcError) as err:
        stub(method)(b"\xff\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in err.value.details() and "Request" in err.value.details()
    assert load_report(err.value) is not None


def test_infer_raw_inputs_selected_outputs_version_and_id(triton):
    data = x(4)
    result = triton.infer("affine", [infer_input("x", data, "FP32")], model_version="1", request_id="r-9",
                          outputs=[tg.InferRequestedOutput("y")])
    np.testing.assert_array_equal(result.as_numpy("y"), data * 2 + 1)
    assert result.as_numpy("n") is None
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("affine", "1", "r-9")


def test_infer_typed_contents(stub):
    req = pb.ModelInferRequest(model_name="affine")
    t = req.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    t.contents.fp32_contents.extend(x(2).reshape(-1).tolist())
    out = decode_infer_response(stub("ModelInfer")(req.SerializeToString(), timeout=10))
    np.testing.assert_array_equal(out.outputs["y"], x(2) * 2 + 1)
    assert out.outputs["n"].tolist() == [2, 2] and out.version == 1


def test_bytes_tensors_travel_both_ways(triton):
    words = np.array([b"ab", b"", b"xyz"], dtype=np.object_)
    result = triton.infer("text", [infer_input("s", words, "BYTES")])
    assert result.as_numpy("up").tolist() == [b"AB", b"", b"XYZ"]
    assert result.as_numpy("len").tolist() == [2, 0, 3]


@pytest.mark.parametrize(("model", "arr", "datatype", "status", "text"), [
    ("nope", x(2), "FP32", "NOT_FOUND", "model 'nope' is not loaded"),
    ("affine", x(2).astype(np.float64), "FP64", "INVALID_ARGUMENT", "input 'x' is <f8[2, 3] but the signature"),
    ("affine", np.zeros((2, 4), np.float32), "FP32", "INVALID_ARGUMENT", "input 'x' is <f4[2, 4] but the signature"),
])
def test_infer_errors_say_what_was_expected(triton, model, arr, datatype, status, text):
    err = refused(triton.infer, model, [infer_input("x", arr, datatype)])
    assert err.status() == f"StatusCode.{status}" and text in err.message()


def test_a_2000_candidate_ctr_call_is_batched_and_matches_the_msgpack_path(ctr_repo, widedeep, client_for):
    dense, sparse, _ = widedeep.synthetic_data(2000, seed=5, vocab=100)
    cfg = server_config(ctr_repo, max_batch_size=256, max_enqueued_batches=16, split_requests=True)
    with running(cfg) as server:
        want = client_for(server).predict(model="ctr", inputs={"dense": dense, "sparse": sparse}).outputs()
        batches = server.status().models["ctr"].batching.batches
        client = tg.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            result = client.infer("ctr", [infer_input("dense", dense, "FP32"), infer_input("sparse", sparse, "INT64")])
        finally:
            client.close()
        for name in ("ctr", "logit"):
            np.testing.assert_array_equal(result.as_numpy(name), want[name])
        assert result.get_response().model_version == "2"
        assert server.status().models["ctr"].batching.batches - batches >= 8   # 2000 / 256, as for msgpack


def test_every_answer_carries_the_load_report_and_calls_are_counted(server, stub):
    body, call = stub("ModelInfer").with_call(encode_infer_request("affine", {"x": x(3)}), timeout=10)
    assert decode_infer_response(body).outputs["y"].shape == (3, 3)
    report = load_report(call)
    assert report.named_metrics["in_flight"] >= 1 and "capacity_rows_per_s" in report.named_metrics
    _, call = stub("ServerReady").with_call(pb.ServerReadyRequest().SerializeToString(), timeout=10)
    assert load_report(call) is not None
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.status_port}/metrics", timeout=10).read().decode()
    assert 'weiserving_requests_total{code="OK",model="affine"}' in metrics


@pytest.fixture
def gated(tmp_path, client_for):
    """A server whose one batch thread is held by a msgpack call: what comes next waits in the queue
    (a measured pace of 1,000 rows/s and a wait bound of 5 ms: a default call may queue 20 ms in a burst,
    a sheddable 10, a critical 80)."""
    write_python_model(tmp_path, "affine", 1)
    with running(server_config(tmp_path, num_batch_threads=1, max_queue_delay_ms=5)) as server:
        lv = server.manager.snapshot["affine"][1]
        for _ in range(100):                 # 10-row batches in 10 ms
            lv.runner.stats.record_batch(10, 1.0, 0.0, 0.01)
        while lv.runner.stats.recent().capacity_rows_per_s is None:   # its cache (50 ms) has caught up
            threading.Event().wait(0.005)
        model = lv.backend._model
        model.gate.clear()
        model.entered.clear()                # warm-up set it
        first = client_for(server)._predict.future(wire.encode_request(PredictRequest(model="affine",
                                                                                      inputs={"x": x(1)})))
        assert model.entered.wait(10)
        try:
            yield server, lv, model
        finally:
            model.gate.set()
            first.result(10)


def test_oip_calls_queue_and_are_batched_with_the_others(gated):
    server, lv, model = gated
    held = len(model.calls)                  # warm-up batches and the held call
    client = tg.InferenceServerClient(f"127.0.0.1:{server.port}")
    results: list = []
    done = threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 5:
            done.set()
    try:
        for i in range(5):
            client.async_infer("affine", [infer_input("x", x(1, 10 * i), "FP32")], callback)
        while lv.runner.queue_depth() < 5:
            threading.Event().wait(0.001)     # until the server has queued all five (no timing)
        model.gate.set()
        assert done.wait(10)
    finally:
        client.close()
    assert all(error is None for _, error in results)
    assert sorted(r.as_numpy("y")[0, 0] for r, _ in results) == [1, 21, 41, 61, 81]
    assert [len(c) for c in model.calls[held:]] == [5]       # once the held call is done, one batch of five


def test_the_deadline_applies_from_grpc_or_from_triton_s_timeout_parameter(gated):
    server, _lv, _model = gated
    client = tg.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        err = refused(client.infer, "affine", [infer_input("x", x(1), "FP32")], timeout=50_000)   # microseconds
        assert err.status() == "StatusCode.DEADLINE_EXCEEDED"
        err = refused(client.infer, "affine", [infer_input("x", x(1), "FP32")], client_timeout=0.05)
        assert err.status() == "StatusCode.DEADLINE_EXCEEDED"
    finally:
        client.close()


def test_priority_and_admission_refusals_with_a_retry_after(gated):
    server, lv, model = gated
    # the bound itself (CoDel's burst allowance is table-tested in test_srv_admission): 5 ms for a default
    # call, 2.5 for a sheddable one, 20 for a critical one
    lv.runner._admission = Admission(AdmissionConfig(max_queue_delay_ms=5))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    infer = channel.unary_unary(oip.METHODS["ModelInfer"])
    try:
        queued = infer.future(encode_infer_request("affine", {"x": x(10)}))
        while lv.runner.queue_depth() < 10:
            threading.Event().wait(0.001)
        with pytest.raises(grpc.RpcError) as err:   # 10.5 ms queued at 1,000 rows/s
            infer(encode_infer_request("affine", {"x": x(1)}), timeout=30, metadata=((wire.PRIORITY_KEY, "sheddable"),))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a sheddable call may wait" in err.value.details()
        assert int(dict(err.value.trailing_metadata())[wire.RETRY_AFTER_KEY]) >= 8
        critical = infer.future(encode_infer_request("affine", {"x": x(1)}),
                                metadata=((wire.PRIORITY_KEY, "critical"),))
        while lv.runner.queue_depth() < 11:       # queued, not refused
            threading.Event().wait(0.001)
        with pytest.raises(grpc.RpcError) as bad:
            infer(encode_infer_request("affine", {"x": x(1)}), timeout=30, metadata=((wire.PRIORITY_KEY, "urgent"),))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected one of" in bad.value.details()
        model.gate.set()
        assert decode_infer_response(queued.result(10)).outputs["y"].shape == (10, 3)
        assert decode_infer_response(critical.result(10)).outputs["y"].shape == (1, 3)
    finally:
        channel.close()


def test_a_draining_server_is_live_not_ready_and_refuses_calls(tmp_path):
    write_python_model(tmp_path, "affine", 1)
    with running(server_config(tmp_path)) as server:
        client = tg.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            assert client.is_server_ready()
            assert server.drain(1.0)
            assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("affine")
            err = refused(client.infer, "affine", [infer_input("x", x(1), "FP32")])
            assert err.status() == "StatusCode.UNAVAILABLE" and "draining" in err.message()
        finally:
            client.close()
