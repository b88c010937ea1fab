"""A real gRPC server on port 0 with Python models: predictions, errors, health, status."""

from __future__ import annotations

import json
import threading
import urllib.request

import grpc
import msgpack
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_helpers import Client, load_report, running, server_config, write_python_model, x

from protocol import wire
from protocol.status import SCHEMA_VERSION, StatusDoc
from protocol.wire import PredictRequest

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def repo(tmp_path):
    write_python_model(tmp_path, "aff", 1, scale=2.0)
    write_python_model(tmp_path, "tri", 1, scale=3.0)
    return tmp_path


def model_obj(server, name, version=1):
    return server.manager.snapshot[name][version].backend._model


def assert_healthy(client: Client) -> None:
    out = client.predict(model="aff", inputs={"x": x(2)}).outputs()
    np.testing.assert_array_equal(out["y"], x(2) * 2 + 1)


def health(server, service=""):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_predict_returns_outputs_version_and_load_report(repo, client_for):
    with running(server_config(repo)) as server:
        c = client_for(server)
        body, call = c.raw(wire.encode_request(PredictRequest(
            model="aff", inputs={"x": x(3)}, outputs=("y",))))
        resp = wire.decode_response(body)
        assert resp.results["aff"].version == 1 and set(resp.outputs()) == {"y"}
        np.testing.assert_array_equal(resp.outputs()["y"], x(3) * 2 + 1)
        report = load_report(call)
        assert set(report.named_metrics) == {"in_flight", "queue_depth", "batch_fill", "ewma_latency_ms",
                                             "rows_per_s", "capacity_rows_per_s", "queue_delay_ms"}
        assert report.named_metrics["in_flight"] == 1.0     # this very call
        md = dict(call.trailing_metadata())
        assert wire.LOAD_REPORT_MIRROR_KEY in md


def test_multi_model_call_runs_every_model_on_one_input(repo, client_for):
    with running(server_config(repo)) as server:
        resp = client_for(server).predict(models={"aff": None, "tri": 1}, inputs={"x": x(4)})
        np.testing.assert_array_equal(resp.outputs("aff")["y"], x(4) * 2 + 1)
        np.testing.assert_array_equal(resp.outputs("tri")["y"], x(4) * 3 + 1)
        assert {m: r.version for m, r in resp.results.items()} == {"aff": 1, "tri": 1}


@pytest.mark.parametrize("kw, code, match", [
    ({"model": "nope", "inputs": {"x": x(1)}}, grpc.StatusCode.NOT_FOUND, "'nope' is not loaded"),
    ({"model": "aff", "version": 7, "inputs": {"x": x(1)}}, grpc.StatusCode.NOT_FOUND,
     "no loaded version 7; loaded versions: \\[1\\]"),
    ({"models": {"aff": None, "nope": None}, "inputs": {"x": x(1)}},
     grpc.StatusCode.NOT_FOUND, "nope"),
    ({"model": "aff", "inputs": {"z": x(1)}}, grpc.StatusCode.INVALID_ARGUMENT,
     "missing inputs \\['x'\\], unexpected inputs \\['z'\\]; the signature expects x: <f4\\[\\?, 3\\]"),
    ({"model": "aff", "inputs": {"x": x(1).astype(np.float64)}},
     grpc.StatusCode.INVALID_ARGUMENT, "'x' is <f8\\[1, 3\\] but the signature expects <f4\\[\\?, 3\\]"),
    ({"model": "aff", "inputs": {"x": np.zeros((2, 4), np.float32)}},
     grpc.StatusCode.INVALID_ARGUMENT, "expects <f4\\[\\?, 3\\]"),
    ({"model": "aff", "inputs": {"x": np.zeros((0, 3), np.float32)}},
     grpc.StatusCode.INVALID_ARGUMENT, "batch is empty"),
    ({"model": "aff", "inputs": {"x": x(1)}, "outputs": ("q",)},
     grpc.StatusCode.INVALID_ARGUMENT, "unknown outputs \\['q'\\]"),
])
def test_bad_requests_get_actionable_errors_and_the_server_stays_healthy(
        repo, client_for, kw, code, match):
    with running(server_config(repo)) as server:
        c = client_for(server)
        with pytest.raises(grpc.RpcError) as err:
            c.predict(**kw)
        assert err.value.code() == code
        assert err.value.details() and __import__("re").search(match, err.value.details())
        assert load_report(err.value).named_metrics["in_flight"] >= 1
        assert all(vs[v].runner.stats.window().errors == 0  # a caller's mistake is not the pod's error
                   for vs in server.manager.snapshot.values() for v in vs)
        assert_healthy(c)


@pytest.mark.parametrize("body, match", [
    (b"\xc1\xc1 not msgpack", "malformed msgpack"),
    (msgpack.packb({"model": "aff", "inputs": {"x": msgpack.ExtType(
        wire.TENSOR_EXT_CODE, b"\x01\x03<f4\x01" + (5).to_bytes(8, "little") + b"\0" * 4)}}),
     "needs 20"),
    (msgpack.packb({"model": "aff", "inputs": {"x": msgpack.ExtType(
        wire.TENSOR_EXT_CODE, b"\x01\x02|O\x01" + (1).to_bytes(8, "little") + b"\0" * 8)}}),
     "'|O' is not allowed"),
])
def test_malformed_payloads_are_invalid_argument(repo, client_for, body, match):
    with running(server_config(repo)) as server:
        c = client_for(server)
        with pytest.raises(grpc.RpcError) as err:
            c.raw(body)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert match in err.value.details()
        assert_healthy(c)


def test_oversized_message_is_resource_exhausted(repo, client_for):
    from dataclasses import replace
    with running(replace(server_config(repo), max_message_bytes=64 * 1024)) as server:
        c = client_for(server)
        with pytest.raises(grpc.RpcError) as err:
            c.predict(model="aff", inputs={"x": x(10_000)})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_healthy(c)


def test_full_queue_fails_fast_with_resource_exhausted(repo, client_for):
    cfg = server_config(repo, max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    with running(cfg) as server:
        c = client_for(server)
        model = model_obj(server, "aff")
        model.gate.clear()
        model.entered.clear()
        call = c._predict.future(wire.encode_request(PredictRequest(model="aff",
                                                                    inputs={"x": x(1)})))
        assert model.entered.wait(10)          # the only batch thread is now busy
        queued = c._predict.future(wire.encode_request(PredictRequest(model="aff",
                                                                      inputs={"x": x(2)})))
        while server.manager.snapshot["aff"][1].runner.queue_depth() < 2:
            threading.Event().wait(0.001)      # wait for the server to queue it (no timing)
        with pytest.raises(grpc.RpcError) as err:
            c.predict(model="aff", inputs={"x": x(1)})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in err.value.details()
        assert server.manager.snapshot["aff"][1].runner.stats.window().errors == 1  # the load report's eps
        model.gate.set()
        assert wire.decode_response(call.result(10)).outputs()["y"].shape == (1, 3)
        assert wire.decode_response(queued.result(10)).outputs()["y"].shape == (2, 3)
        assert_healthy(c)


def test_expired_request_gets_deadline_exceeded_and_never_reaches_the_model(repo, client_for):
    with running(server_config(repo, num_batch_threads=1)) as server:
        c = client_for(server)
        model = model_obj(server, "aff")
        model.gate.clear()
        model.entered.clear()
        first = c._predict.future(wire.encode_request(PredictRequest(model="aff",
                                                                     inputs={"x": x(1)})))
        assert model.entered.wait(10)
        with pytest.raises(grpc.RpcError) as err:
            c.predict(model="aff", inputs={"x": x(1, start=500)}, timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        model.gate.set()
        first.result(10)
        assert_healthy(c)
        assert not any((call >= 500).any() for call in model.calls)


def test_health_follows_readiness_per_model(repo):
    with running(server_config(repo)) as server:
        assert health(server) == SERVING
        assert health(server, wire.SERVICE) == SERVING
        assert health(server, "aff") == SERVING
        with pytest.raises(grpc.RpcError) as err:
            health(server, "nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_drain_refuses_new_calls_finishes_in_flight_and_reports_not_serving(repo, client_for):
    with running(server_config(repo, num_batch_threads=1)) as server:
        c = client_for(server)
        model = model_obj(server, "aff")
        model.gate.clear()
        model.entered.clear()
        in_flight = c._predict.future(wire.encode_request(PredictRequest(model="aff",
                                                                         inputs={"x": x(1)})))
        assert model.entered.wait(10)
        result: list[bool] = []
        drainer = threading.Thread(target=lambda: result.append(server.drain(10)))
        drainer.start()
        assert server.draining.wait(10)
        assert health(server) == NOT_SERVING and health(server, "aff") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            c.predict(model="aff", inputs={"x": x(1)})
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in err.value.details()
        model.gate.set()
        np.testing.assert_array_equal(
            wire.decode_response(in_flight.result(10)).outputs()["y"], x(1) * 2 + 1)
        drainer.join(10)
        assert result == [True]


def test_metadata_lists_models_versions_and_signatures(repo, client_for):
    with running(server_config(repo, max_batch_size=64)) as server:
        c = client_for(server)
        meta = c.metadata()
        assert set(meta) == {"aff", "tri"}
        v1 = meta["aff"]["versions"]["1"]
        assert v1["state"] == "AVAILABLE"
        assert v1["signature"]["inputs"] == {"x": {"dtype": "<f4", "shape": [-1, 3]}}
        assert meta["aff"]["batching"]["max_batch_size"] == 64
        assert set(c.metadata("tri")) == {"tri"}
        with pytest.raises(grpc.RpcError) as err:
            c.metadata("nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_status_endpoint_reports_models_latency_and_metrics(repo, client_for):
    with running(server_config(repo, slo_p99_ms=50.0, max_batch_size=32)) as server:
        c = client_for(server)
        for _ in range(3):
            assert_healthy(c)
        base = f"http://127.0.0.1:{server.status_port}"
        body = urllib.request.urlopen(f"{base}/status", timeout=10).read()
        status = json.loads(body)
        aff = status["models"]["aff"]
        assert status["ready"] and status["phase"] == "serving" and status["schema"] == SCHEMA_VERSION
        doc = StatusDoc.from_json(body)  # what the agent reads: the same schema
        assert doc.routable and doc.hosted()["aff"] == [1] and doc.models["aff"].batching.rows == 6
        assert aff["versions"]["1"]["state"] == "AVAILABLE"
        assert aff["batching"]["batches"] == 3 and aff["batching"]["rows"] == 6
        assert 0 < aff["latency_ms"]["p50"] <= aff["latency_ms"]["p99"]
        assert 1 <= aff["batching"]["batch_size_limit"] <= 32
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        assert 'weiserving_requests_total{code="OK",model="aff"} 3.0' in metrics
        assert 'weiserving_batch_size_limit{model="aff",version="1"}' in metrics
        assert 'weiserving_queue_delay_seconds{model="aff",version="1"}' in metrics
        assert urllib.request.urlopen(f"{base}/readyz", timeout=10).status == 200


def test_standard_orca_key_is_on_the_wire_for_envoy_and_grpc_peers(repo):
    """grpcio's client hides endpoint-load-metrics-bin, so read the raw HTTP/2 trailers."""
    import base64
    import socket

    pytest.importorskip("h2", reason="needs the h2 package (HTTP/2 client)")
    import h2.config
    import h2.connection
    import h2.events

    body = wire.encode_request(PredictRequest(model="aff", inputs={"x": x(1)}))
    with running(server_config(repo)) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                              (":path", wire.PREDICT_METHOD), (":authority", "localhost"),
                              ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(1, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
        sock.sendall(conn.data_to_send())
        trailers = None
        while trailers is None:
            data = sock.recv(65536)
            assert data, "connection closed before trailers"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
            sock.sendall(conn.data_to_send())
    assert trailers[b"grpc-status"] == b"0"
    raw = trailers[b"endpoint-load-metrics-bin"]
    report = wire.decode_load_report(base64.b64decode(raw + b"=" * (-len(raw) % 4)))
    assert set(report.named_metrics) == {"in_flight", "queue_depth", "batch_fill", "ewma_latency_ms",
                                         "rows_per_s", "capacity_rows_per_s", "queue_delay_ms"}
