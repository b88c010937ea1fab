"""OIP REST (/v2 on the status port): the official tritonclient.http against a real wei-serve.

Every route, an error case each, JSON and binary tensors, a 2,000-row CTR call, and the msgpack path's
behaviour: batching, deadlines, priority and admission, load reports in headers, metrics, draining.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading

import numpy as np
import pytest
from serving_helpers import oip_repo, running, server_config, write_python_model, x

from protocol import wire
from serving.batching.admission import Admission, AdmissionConfig

th = pytest.importorskip("tritonclient.http", reason="tritonclient is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = oip_repo(tmp_path_factory.mktemp("oip_rest"))
    with running(server_config(root)) as s:
        yield s


@pytest.fixture
def triton(server):
    client = th.InferenceServerClient(f"127.0.0.1:{server.status_port}")
    yield client
    client.close()


def send(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One raw request: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.status_port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        r = conn.getresponse()
        return r.status, r, r.read()
    finally:
        conn.close()


def infer_input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> th.InferInput:
    i = th.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


def refused(fn, *args, **kw) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        fn(*args, **kw)
    return err.value


def test_health_of_the_server_and_of_each_model(server, triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("affine") and triton.is_model_ready("affine", "1")
    assert not triton.is_model_ready("affine", "7") and not triton.is_model_ready("nope")
    assert send(server, "GET", "/v2/models/nope/ready")[0] == 404
    status, _, body = send(server, "GET", "/v2/models/affine/versions/latest/ready")
    assert status == 400 and "model version must be empty" in json.loads(body)["error"]


def test_metadata_of_the_server_and_of_a_model(server, triton):
    assert triton.get_server_metadata() == {"name": "wei-serve", "version": triton.get_server_metadata()["version"],
                                            "extensions": ["binary_tensor_data"]}
    assert triton.get_model_metadata("affine", "1") == {
        "name": "affine", "versions": ["1"], "platform": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}, {"name": "n", "datatype": "INT64",
                                                                          "shape": [-1]}]}
    err = refused(triton.get_model_metadata, "nope")
    assert err.status() == "404" and "model 'nope' is not loaded" in err.message()


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)])
def test_infer_with_json_or_binary_tensors_either_way(triton, binary_in, binary_out):
    data = x(4)
    result = triton.infer("affine", [infer_input("x", data, "FP32", binary_in)], request_id="r-1",
                          outputs=[th.InferRequestedOutput("y", binary_data=binary_out)])
    np.testing.assert_array_equal(result.as_numpy("y"), data * 2 + 1)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("affine", "1", "r-1")
    assert [o["name"] for o in response["outputs"]] == ["y"]
    assert ("data" in response["outputs"][0]) is not binary_out


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors_travel_both_ways(triton, binary):
    words = np.array([b"ab", b"", "h\u00e9".encode()], dtype=np.object_)
    result = triton.infer("text", [infer_input("s", words, "BYTES", binary)],
                          outputs=[th.InferRequestedOutput(n, binary_data=binary) for n in ("up", "len")])
    up = [e if isinstance(e, bytes) else e.encode() for e in result.as_numpy("up").tolist()]   # JSON: str
    assert up == [b"AB", b"", "H\u00e9".encode()]            # the model uppercases ASCII bytes only
    assert result.as_numpy("len").tolist() == [2, 0, 3]


@pytest.mark.parametrize(("model", "arr", "datatype", "status", "text"), [
    ("nope", x(2), "FP32", "404", "model 'nope' is not loaded"),
    ("affine", x(2).astype(np.float64), "FP64", "400", "input 'x' is <f8[2, 3] but the signature"),
    ("affine", np.zeros((2, 4), np.float32), "FP32", "400", "input 'x' is <f4[2, 4] but the signature"),
])
def test_infer_errors_say_what_was_expected(triton, model, arr, datatype, status, text):
    err = refused(triton.infer, model, [infer_input("x", arr, datatype)])
    assert err.status() == status and text in err.message()


@pytest.mark.parametrize(("method", "path", "body", "status", "text"), [
    ("POST", "/v2/models/affine/infer", b"{not json", 400, "malformed infer request: the request is not JSON"),
    ("POST", "/v2/models/affine/infer", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2]}]}',
     400, "data has 2 values but shape [1, 3] needs 3"),
    ("GET", "/v2/models/affine/infer", b"", 405, "takes POST, not GET"),
    ("POST", "/v2/health/live", b"{}", 405, "takes GET, not POST"),
    ("GET", "/v2/models/affine/stats", b"", 404, "no route /v2/models/affine/stats"),
    ("GET", "/v2/repository", b"", 404, "no route /v2/repository"),
])
def test_a_request_that_fits_no_route_or_does_not_parse_says_why(server, method, path, body, status, text):
    got, _, answer = send(server, method, path, body)
    assert got == status and text in json.loads(answer)["error"]


def test_a_2000_candidate_ctr_call_is_batched_and_matches_the_msgpack_path(ctr_repo, widedeep, client_for):
    dense, sparse, _ = widedeep.synthetic_data(2000, seed=6, vocab=100)
    cfg = server_config(ctr_repo, max_batch_size=256, max_enqueued_batches=16, split_requests=True)
    with running(cfg) as server:
        want = client_for(server).predict(model="ctr", inputs={"dense": dense, "sparse": sparse}).outputs()
        batches = server.status().models["ctr"].batching.batches
        client = th.InferenceServerClient(f"127.0.0.1:{server.status_port}")
        try:
            result = client.infer("ctr", [infer_input("dense", dense, "FP32"), infer_input("sparse", sparse, "INT64")])
        finally:
            client.close()
        for name in ("ctr", "logit"):
            np.testing.assert_array_equal(result.as_numpy(name), want[name])
        assert result.get_response()["model_version"] == "2"
        assert server.status().models["ctr"].batching.batches - batches >= 8   # 2000 / 256, as for msgpack


def test_the_load_report_travels_in_headers_and_calls_are_counted(server):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    status, r, answer = send(server, "POST", "/v2/models/affine/infer", body.encode())
    assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [3.0, 5.0, 7.0]
    report = wire.decode_load_report(base64.b64decode(r.getheader(wire.LOAD_REPORT_KEY)))
    assert report.named_metrics["in_flight"] >= 1 and "capacity_rows_per_s" in report.named_metrics
    metrics = send(server, "GET", "/metrics")[2].decode()
    assert 'weiserving_requests_total{code="OK",model="affine"}' in metrics


def test_many_calls_on_one_kept_alive_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.status_port, timeout=30)
    try:
        for i in range(20):
            body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [i, 0, 0]}]})
            conn.request("POST", "/v2/models/affine/infer", body=body)
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["outputs"][0]["data"][0] == 2 * i + 1
    finally:
        conn.close()


@pytest.fixture
def gated(tmp_path, client_for):
    """A server whose one batch thread is held by a msgpack call (a measured pace of 1,000 rows/s and a
    wait bound of 5 ms: a default call may queue 20 ms in a burst, a sheddable 10, a critical 80)."""
    write_python_model(tmp_path, "affine", 1)
    with running(server_config(tmp_path, num_batch_threads=1, max_queue_delay_ms=5)) as server:
        lv = server.manager.snapshot["affine"][1]
        for _ in range(100):                 # 10-row batches in 10 ms
            lv.runner.stats.record_batch(10, 1.0, 0.0, 0.01)
        while lv.runner.stats.recent().capacity_rows_per_s is None:   # its cache (50 ms) has caught up
            threading.Event().wait(0.005)
        model = lv.backend._model
        model.gate.clear()
        model.entered.clear()
        c = client_for(server)
        first = c._predict.future(wire.encode_request(wire.PredictRequest(model="affine", inputs={"x": x(1)})))
        assert model.entered.wait(10)
        try:
            yield server, lv, model, c
        finally:
            model.gate.set()
            first.result(10)


def test_rest_calls_queue_and_are_batched_with_the_others(gated):
    server, lv, model, _c = gated
    held = len(model.calls)
    answers: list = []
    threads = [threading.Thread(target=lambda i=i: answers.append(send(server, "POST", "/v2/models/affine/infer", (
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [i, 0, 0]}]}).encode()))))
        for i in range(4)]
    for t in threads:
        t.start()
    while lv.runner.queue_depth() < 4:
        threading.Event().wait(0.001)          # until the server has queued all four (no timing)
    model.gate.set()
    for t in threads:
        t.join(10)
    assert sorted(json.loads(body)["outputs"][0]["data"][0] for _, _, body in answers) == [1, 3, 5, 7]
    assert [len(c) for c in model.calls[held:]] == [4]


def test_triton_s_timeout_parameter_is_the_deadline(gated):
    server = gated[0]
    client = th.InferenceServerClient(f"127.0.0.1:{server.status_port}")
    try:
        err = refused(client.infer, "affine", [infer_input("x", x(1), "FP32")], timeout=50_000)   # microseconds
        assert err.status() == "504" and "deadline" in err.message()
    finally:
        client.close()


def test_priority_and_admission_refusals_with_retry_after(gated):
    server, lv, model, c = gated
    # the bound itself (CoDel's burst allowance is table-tested in test_srv_admission): 5 ms for a default
    # call, 2.5 for a sheddable one
    lv.runner._admission = Admission(AdmissionConfig(max_queue_delay_ms=5))
    queued = c._predict.future(wire.encode_request(wire.PredictRequest(model="affine", inputs={"x": x(10)})))
    while lv.runner.queue_depth() < 10:
        threading.Event().wait(0.001)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}).encode()
    status, r, answer = send(server, "POST", "/v2/models/affine/infer", body, {wire.PRIORITY_KEY: "sheddable"})
    assert status == 429 and "a sheddable call may wait" in json.loads(answer)["error"]
    assert int(r.getheader(wire.RETRY_AFTER_KEY)) >= 8 and int(r.getheader("Retry-After")) >= 1
    assert r.getheader(wire.LOAD_REPORT_KEY)
    status, _, answer = send(server, "POST", "/v2/models/affine/infer", body, {wire.PRIORITY_KEY: "urgent"})
    assert status == 400 and "expected one of" in json.loads(answer)["error"]
    model.gate.set()
    queued.result(10)


def test_a_draining_server_is_live_not_ready_and_refuses_calls(tmp_path):
    write_python_model(tmp_path, "affine", 1)
    with running(server_config(tmp_path)) as server:
        client = th.InferenceServerClient(f"127.0.0.1:{server.status_port}")
        try:
            assert client.is_server_ready()
            assert server.drain(1.0)
            assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("affine")
            err = refused(client.infer, "affine", [infer_input("x", x(1), "FP32")])
            assert err.status() == "503" and "draining" in err.message()
        finally:
            client.close()
