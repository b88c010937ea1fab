"""A real MLServer pod over OIP gRPC, spoken with our own messages (protocol.oip), beside wei-serve.

The pod serves the client tests' ``Ident`` model; each call is made to it and to a wei-serve that
loads tests/client/conftest.py's ``MODEL`` itself, and the answers must be equal, dtype and shape
included. The status codes, trailing metadata and metric names asserted here are MLServer 1.7.1's:
the client and the agent rely on them, and an MLServer upgrade that changes one fails here first.
"""

from __future__ import annotations

import importlib.util
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from pods import MLServerPod

from protocol import wire
from protocol.oip import METHODS, pb
from protocol.oip.infer import InferResponse, decode_infer_response, encode_infer_request
from serving.config import ModelConfig, ServerConfig, VersionPolicy
from serving.server import ModelServer

CLIENT_CONFTEST = Path(__file__).resolve().parents[1] / "client" / "conftest.py"


def client_model_source(server: int, version: int) -> str:
    """tests/client/conftest.py's ``MODEL``, the one definition of ``Ident`` for wei-serve pods."""
    spec = importlib.util.spec_from_file_location("client_conftest_model", CLIENT_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return textwrap.dedent(module.MODEL.format(server=server, version=version, delay=0.0))


@pytest.fixture(scope="module")
def wei_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    models = tmp_path_factory.mktemp("wei_serve")
    for name in ("ctr", "ctr_b"):
        (models / name / "1").mkdir(parents=True)
        (models / name / "1" / "model.py").write_text(client_model_source(server=0, version=1))
    server = ModelServer(ServerConfig(models_dir=models, host="127.0.0.1", port=0, status_port=None,
                                      poll_interval_s=3600, grace_s=2,
                                      defaults=ModelConfig(version_policy=VersionPolicy(kind="all")))).start()
    yield server
    server.stop(0)


class Oip:
    """Bytes in, bytes out over one channel: our generated messages, no stubs."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def raw(self, method: str, body: bytes) -> tuple[bytes, grpc.Call]:
        return self.channel.unary_unary(METHODS[method]).with_call(body, timeout=10)

    def call(self, method: str, request, response_type):
        return response_type.FromString(self.raw(method, request.SerializeToString())[0])

    def infer(self, model: str, x: np.ndarray, **kw) -> InferResponse:
        return decode_infer_response(self.raw("ModelInfer", encode_infer_request(model, {"x": x}, **kw))[0])

    def refused(self, method: str, body: bytes) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as err:
            self.raw(method, body)
        return err.value


@pytest.fixture(scope="module")
def pod(shared_mlserver_pod: MLServerPod) -> Iterator[Oip]:
    oip = Oip(shared_mlserver_pod.grpc_port)
    yield oip
    oip.channel.close()


@pytest.fixture(scope="module")
def wei(wei_serve: ModelServer) -> Iterator[Oip]:
    oip = Oip(wei_serve.port)
    yield oip
    oip.channel.close()


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32) * 100


def assert_same(a: InferResponse, b: InferResponse) -> None:
    assert (a.model, a.version) == (b.model, b.version)
    assert list(a.outputs) == list(b.outputs)
    for name in a.outputs:
        assert a.outputs[name].dtype == b.outputs[name].dtype, name
        np.testing.assert_array_equal(a.outputs[name], b.outputs[name], err_msg=name)


def test_health_and_metadata(pod: Oip) -> None:
    assert pod.call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
    assert pod.call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
    for model in ("ctr", "ctr_b"):
        for version in ("", "1"):
            ready = pod.call("ModelReady", pb.ModelReadyRequest(name=model, version=version), pb.ModelReadyResponse)
            assert ready.ready, (model, version)
    meta = pod.call("ModelMetadata", pb.ModelMetadataRequest(name="ctr"), pb.ModelMetadataResponse)
    assert (meta.name, list(meta.versions), meta.platform) == ("ctr", ["1"], "python")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("y", "FP32", [-1, 3]), ("who", "INT64", [-1]), ("ver", "INT64", [-1])]


@pytest.mark.parametrize("n", [1, 7, 2000])
@pytest.mark.parametrize("version", [None, 1])
def test_outputs_equal_wei_serves(pod: Oip, wei: Oip, n: int, version: int | None) -> None:
    x = rows(n, seed=n)
    got = pod.infer("ctr", x, version=version)
    assert_same(got, wei.infer("ctr", x, version=version))
    assert got.version == 1 and got.outputs["y"].shape == (n, 3) and got.outputs["who"].shape == (n,)
    np.testing.assert_array_equal(got.outputs["y"], x * 2 + 1)


def test_requested_outputs_equal_wei_serves(pod: Oip, wei: Oip) -> None:
    x = rows(3)
    got = pod.infer("ctr_b", x, outputs=["ver", "y"])
    assert sorted(got.outputs) == ["ver", "y"]
    assert_same(got, wei.infer("ctr_b", x, outputs=["ver", "y"]))


def test_trailing_metadata_is_cloudevents_and_no_load_report(pod: Oip) -> None:
    _, call = pod.raw("ModelInfer", encode_infer_request("ctr", {"x": rows(2)}))
    trailing = dict(call.trailing_metadata())
    assert trailing == {"ce-specversion": "0.3", "ce-source": "io.seldon.serving.deployment.mlserver",
                        "ce-type": "io.seldon.serving.inference.response", "ce-modelid": "ctr",
                        "ce-inferenceservicename": "mlserver", "ce-endpoint": "ctr"}
    assert wire.load_report_from_metadata(call.trailing_metadata()) is None
    assert call.initial_metadata() == ()


def _short_buffer() -> bytes:
    req = pb.ModelInferRequest.FromString(encode_infer_request("ctr", {"x": rows(2)}))
    req.raw_input_contents[0] = b"\0" * 5
    return req.SerializeToString()


# MLServer's codes, as the client sees them; wei-serve's, where they differ, in the comment.
ERRORS = [
    ("ModelInfer", encode_infer_request("nope", {"x": rows(2)}), "NOT_FOUND", "Model nope with version  not found"),
    ("ModelInfer", encode_infer_request("ctr", {"x": rows(2)}, version=7), "NOT_FOUND",
     "Model ctr with version 7 not found"),
    ("ModelInfer", encode_infer_request("ctr", {"x": rows(2).astype(np.float64)}), "INVALID_ARGUMENT",
     "input 'x' is FP64[2, 3]"),           # raised by our runtime (MLServer checks no dtype); wei-serve: same code
    ("ModelInfer", encode_infer_request("ctr", {"x": np.zeros((2, 4), np.float32)}), "INVALID_ARGUMENT",
     "input 'x' is FP32[2, 4]"),
    ("ModelInfer", encode_infer_request("ctr", {"x": rows(2)}, outputs=["nope"]), "INVALID_ARGUMENT",
     "unknown outputs ['nope']"),
    # MLServer unpacks raw buffers itself; a short one is a struct.error, so INTERNAL (wei-serve: INVALID_ARGUMENT)
    ("ModelInfer", _short_buffer(), "INTERNAL", "unpack requires a buffer of 24 bytes"),
    # bytes that are no ModelInferRequest fail in grpcio's deserializer (wei-serve: INVALID_ARGUMENT)
    ("ModelInfer", b"\xff\xff\xff", "UNKNOWN", "DecodeError"),
    ("ModelMetadata", pb.ModelMetadataRequest(name="nope").SerializeToString(), "NOT_FOUND",
     "Model nope with version  not found"),
    # ModelReady of an unknown model or version is an error, not ready=false (wei-serve: ready=false)
    ("ModelReady", pb.ModelReadyRequest(name="nope").SerializeToString(), "UNKNOWN",
     "Unexpected <class 'mlserver.errors.ModelNotFound'>"),
    ("ModelReady", pb.ModelReadyRequest(name="ctr", version="7").SerializeToString(), "UNKNOWN",
     "Model ctr with version 7 not found"),
]


@pytest.mark.parametrize(("method", "body", "code", "text"), ERRORS,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(ERRORS)])
def test_status_codes(pod: Oip, method: str, body: bytes, code: str, text: str) -> None:
    err = pod.refused(method, body)
    assert (err.code().name, err.trailing_metadata()) == (code, ())
    assert text in err.details()


def test_prometheus_metrics_after_calls(shared_mlserver_pod: MLServerPod, pod: Oip) -> None:
    def scrape() -> dict[str, float]:
        url = f"http://127.0.0.1:{shared_mlserver_pod.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    before = scrape()
    for _ in range(3):
        pod.infer("ctr_b", rows(2), version=1)
    pod.infer("ctr_b", rows(2))
    pod.refused("ModelInfer", encode_infer_request("ctr_b", {"x": rows(2).astype(np.float64)}, version=1))
    after = scrape()

    def delta(sample: str) -> float:
        return after.get(sample, 0.0) - before.get(sample, 0.0)

    # Labelled by the version the request named ("" when none), not the version that answered
    assert delta('model_infer_request_success_total{model="ctr_b",version="1"}') == 3
    assert delta('model_infer_request_success_total{model="ctr_b",version=""}') == 1
    assert delta('model_infer_request_failure_total{model="ctr_b",version="1"}') == 1
    assert delta('model_infer_request_duration_count{model="ctr_b",version="1"}') == 4   # a summary: no quantiles
    started = 'grpc_server_started_total{grpc_method="ModelInfer",grpc_service="inference.GRPCInferenceService",' \
              'grpc_type="UNARY"}'
    handled = 'grpc_server_handled_total{grpc_code="OK",grpc_method="ModelInfer",' \
              'grpc_service="inference.GRPCInferenceService",grpc_type="UNARY"}'
    assert (delta(started), delta(handled)) == (5, 4)      # a refused call is started, never counted handled
    assert not any('grpc_code="INVALID_ARGUMENT"' in s for s in after)
    names = {s.split("{")[0] for s in after}
    assert {"model_infer_request_success_total", "model_infer_request_failure_total",
            "model_infer_request_duration_count", "model_infer_request_duration_sum",
            "grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
            "grpc_server_handling_seconds_count", "grpc_server_handling_seconds_sum"} <= names
    # No queue or in-flight gauge for gRPC: adaptive batching's batch_request_queue lives in MLServer's own
    # registry, which /metrics serves only with parallel workers
    assert not any("queue" in n or "in_progress" in n for n in names if n.startswith(("model_", "grpc_")))


def test_pod_spec_names_who_and_versions(mlserver_pod, wei: Oip) -> None:
    p = mlserver_pod(who=3, models=("m",), versions=(1, 2))
    oip = Oip(p.grpc_port)
    try:
        x = rows(4)
        latest, one = oip.infer("m", x), oip.infer("m", x, version=1)
        assert (latest.version, one.version) == (2, 1)
        assert latest.outputs["ver"].tolist() == [2] * 4 and one.outputs["ver"].tolist() == [1] * 4
        assert latest.outputs["who"].tolist() == [3] * 4
        meta = oip.call("ModelMetadata", pb.ModelMetadataRequest(name="m"), pb.ModelMetadataResponse)
        assert list(meta.versions) == ["1", "2"]
    finally:
        oip.channel.close()


def test_batching_pod_answers_the_same(mlserver_pod, wei: Oip) -> None:
    p = mlserver_pod(batching=True)
    oip = Oip(p.grpc_port)
    try:
        x = rows(5)
        assert_same(oip.infer("ctr", x), wei.infer("ctr", x))
    finally:
        oip.channel.close()


def test_kill_and_stop(mlserver_pod) -> None:
    p = mlserver_pod(models=("ctr",))
    assert p.running and p.startup_s is not None and p.startup_s < 30
    oip = Oip(p.grpc_port)
    try:
        assert oip.infer("ctr", rows(1)).version == 1
        p.kill()
        assert p.returncode == -9 and not p.running
        err = oip.refused("ModelInfer", encode_infer_request("ctr", {"x": rows(1)}))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        p.kill()
        p.stop()                                                # both idempotent
    finally:
        oip.channel.close()
    q = mlserver_pod(models=("ctr",))
    q.stop()
    assert q.returncode == 0                                    # SIGTERM: a clean exit
