"""Model repository: version policies, hot reload, warm-up, failures, unloading after in-flight."""

from __future__ import annotations

import os
import threading

import msgpack
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from serving_helpers import running, server_config, write_python_model, x

from protocol import wire
from serving.config import ServerConfig, VersionPolicy, load_config
from serving.errors import ConfigError, ModelNotFound
from serving.repository import ModelManager, VersionState


@pytest.mark.parametrize("text, on_disk, selected", [
    ("latest", [1, 2, 3], {3}),
    ("latest:2", [1, 2, 3], {2, 3}),
    ("latest:5", [1, 3], {1, 3}),
    ("all", [1, 2], {1, 2}),
    ("specific:1,3", [1, 2, 3], {1, 3}),
    ("specific:4", [1, 2], set()),
])
def test_version_policies(text, on_disk, selected):
    assert VersionPolicy.parse(text).select(on_disk) == selected


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "specific:", "all:2"])
def test_bad_version_policies_are_refused(text):
    with pytest.raises(ConfigError):
        VersionPolicy.parse(text)


def test_config_file_sets_defaults_overrides_and_per_model_settings(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('[server]\nport = 9000\n[batching]\nmax_batch_size = 64\n'
                 'batch_timeout_micros = 500\n[models.ctr]\nversion_policy = "latest:2"\n'
                 '[models.ctr.batching]\nslo_p99_ms = 20.0\n')
    cfg = load_config(f, models_dir=tmp_path, overrides={"batching": {"max_batch_size": 128}})
    assert cfg.port == 9000
    assert cfg.defaults.batching.max_batch_size == 128
    ctr = cfg.model("ctr")
    assert ctr.version_policy == VersionPolicy(kind="latest", latest=2)
    assert (ctr.batching.max_batch_size, ctr.batching.batch_timeout_micros,
            ctr.batching.slo_p99_ms) == (128, 500, 20.0)
    assert cfg.model("other") is cfg.defaults
    f.write_text("[batching]\nmax_batch_sise = 3\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) \\['max_batch_sise'\\]"):
        load_config(f, models_dir=tmp_path)


def manager(tmp_path, **batching) -> ModelManager:
    return ModelManager(server_config(tmp_path, **batching))


def test_new_version_switches_and_old_one_unloads_after_its_in_flight_request(tmp_path):
    write_python_model(tmp_path, "m", 1, scale=2.0)
    mgr = manager(tmp_path)
    try:
        mgr.poll_once()
        old = mgr.acquire("m", None)
        model = old.backend._model
        model.gate.clear()
        fut = old.runner.submit({"x": x(1)}, 1)       # in flight on version 1
        assert model.entered.wait(10)
        write_python_model(tmp_path, "m", 2, scale=5.0)
        actions = [(e.version, e.action) for e in mgr.poll_once()]
        assert actions == [(2, "loaded"), (1, "retired")]
        new = mgr.acquire("m", None)
        assert new.version == 2 and old.state is VersionState.UNLOADING
        with pytest.raises(ModelNotFound, match="loaded versions: \\[2\\]"):
            mgr.acquire("m", 1)
        assert mgr.poll_once() == []                  # still in flight: not unloaded
        model.gate.set()
        np.testing.assert_array_equal(fut.result(10)["y"], x(1) * 2 + 1)
        old.release()
        assert [(e.version, e.action) for e in mgr.poll_once()] == [(1, "unloaded")]
        assert old.state is VersionState.END
        np.testing.assert_array_equal(new.runner.submit({"x": x(1)}, 1).result(10)["y"],
                                      x(1) * 5 + 1)
        new.release()
    finally:
        mgr.close()


BROKEN = "def load(path):\n    raise RuntimeError('weights file is corrupt')\n"


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(tmp_path, client_for):
    write_python_model(tmp_path, "aff", 1)
    with running(server_config(tmp_path)) as server:
        write_python_model(tmp_path, "aff", 2, source=BROKEN)
        events = server.manager.poll_once()
        assert [(e.version, e.action) for e in events] == [(2, "failed")]
        assert "weights file is corrupt" in events[0].detail
        assert server.manager.poll_once() == []          # not retried until it changes
        resp = client_for(server).predict(model="aff", inputs={"x": x(1)})
        assert resp.results["aff"].version == 1
        assert "corrupt" in server.status().load_failures["aff/2"]
        path = write_python_model(tmp_path, "aff", 2, scale=4.0)  # fixed in place
        os.utime(path / "model.py", (1e10, 1e10))          # a changed file, same directory
        assert [(e.version, e.action) for e in server.manager.poll_once()] == [
            (2, "loaded"), (1, "retired"), (1, "unloaded")]
        assert server.status().load_failures == {}


def test_stored_warmup_requests_run_before_traffic(tmp_path):
    path = write_python_model(tmp_path, "m", 1)
    (path / "assets.extra").mkdir()
    (path / "assets.extra" / "warmup.msgpack").write_bytes(msgpack.packb(
        [{"inputs": {"x": wire.pack_tensor(x(5, start=1000))}}], use_bin_type=True))
    mgr = manager(tmp_path)
    try:
        mgr.poll_once()
        lv = mgr.acquire("m", 1)
        calls = lv.backend._model.calls
        assert len(calls) == 1 and calls[0][0, 0] == 1000
        assert lv.runner.stats.requests == 0        # warm-up is not counted as traffic
        lv.release()
    finally:
        mgr.close()


def test_synthetic_warmup_uses_the_signature_and_allowed_sizes(tmp_path):
    write_python_model(tmp_path, "m", 1)
    mgr = manager(tmp_path, max_batch_size=8, allowed_batch_sizes=(2, 8))
    try:
        mgr.poll_once()
        lv = mgr.acquire("m", 1)
        assert [c.shape for c in lv.backend._model.calls] == [(2, 3), (8, 3)]
        lv.release()
    finally:
        mgr.close()


def test_model_removed_from_disk_goes_not_serving(tmp_path):
    import shutil

    import grpc
    from grpc_health.v1 import health_pb2_grpc

    write_python_model(tmp_path, "a", 1)
    write_python_model(tmp_path, "b", 1)
    with running(server_config(tmp_path)) as server:
        shutil.rmtree(tmp_path / "b")
        server.manager.poll_once()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            check = lambda s: stub.Check(health_pb2.HealthCheckRequest(service=s),  # noqa: E731
                                         timeout=10).status
            assert check("b") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert check("a") == health_pb2.HealthCheckResponse.SERVING
            assert check("") == health_pb2.HealthCheckResponse.SERVING


def test_reload_thread_picks_up_a_new_version(tmp_path):
    from dataclasses import replace
    write_python_model(tmp_path, "m", 1)
    loaded = threading.Event()
    cfg: ServerConfig = replace(server_config(tmp_path), poll_interval_s=0.05)
    mgr = ModelManager(cfg, on_change=lambda snap: 2 in snap.get("m", {}) and loaded.set())
    try:
        mgr.poll_once()
        mgr.start()
        write_python_model(tmp_path, "m", 2)
        assert loaded.wait(30)
        assert sorted(mgr.snapshot["m"]) == [2]
    finally:
        mgr.close()
