"""``wei-agent run --protocol oip``: the agent in front of an Open Inference Protocol server.

Real parts: wei-serve (which speaks OIP gRPC on its port, and has no repository index), a real
MLServer when /work/main/.venv-mlserver has one, a real ZooKeeper. Triton does not run here: its
metrics are read from a recorded exposition in tests/unit/test_oip_metrics.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import agent_shell_helpers as h
import grpc
import kubernetes_validate
import numpy as np
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from protocol import oip
from protocol.oip.infer import encode_infer_request
from registry.records import Protocol, State
from server_agent import cli
from server_agent.agent import Agent
from server_agent.config import AgentConfig, CalibrationConfig
from server_agent.errors import ConfigError
from server_agent.lifecycle import Phase
from server_agent.oip_io import OipReader, oip_predict, record_versions
from server_agent.probes import ProbeKind
from serving.config import BatchingConfig, ModelConfig, ServerConfig, VersionPolicy
from serving.server import ModelServer

ROOT = Path(__file__).resolve().parents[2]
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
SLOW_S = 2.0  # a call to the real MLServer's ``rank`` model takes this long


@pytest.fixture
def agents():
    started: list[Agent] = []

    def make(config: AgentConfig, cores: float = 4.0) -> Agent:
        agent = Agent(config, capacity=h.capacity(cores)).start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()


@pytest.fixture
def wei_serve(tmp_path):
    """wei-serve with ctr versions 1 and 2 (every version served) and rank version 1."""
    root = h.write_model(tmp_path / "models")
    shutil.copytree(root / "ctr" / "1", root / "ctr" / "2")
    h.write_model(root, name="rank")
    config = ServerConfig(models_dir=root, host="127.0.0.1", port=0, status_port=0, poll_interval_s=3600, grace_s=5,
                          defaults=ModelConfig(batching=BatchingConfig(num_batch_threads=2),
                                               version_policy=VersionPolicy(kind="all")))
    server = ModelServer(config).start()
    yield server
    server.stop()


def oip_config(zk_settings, server, **kw) -> AgentConfig:
    kw.setdefault("metrics_url", f"http://127.0.0.1:{server.status_port}/metrics")
    return h.fast_config(zk_settings, target=f"127.0.0.1:{server.port}", status_url=None, protocol=Protocol.OIP, **kw)


def infer(port: int, model: str = "ctr", rows: int = 2) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        channel.unary_unary(oip.METHODS["ModelInfer"])(
            encode_infer_request(model, {"x": np.zeros((rows, 3), np.float32)}), timeout=30)


def test_an_oip_agent_publishes_what_oip_says_and_turns_not_ready_when_the_server_stops(
        zk, zk_settings, wei_serve, agents):
    config = oip_config(zk_settings, wei_serve, models=("ctr", "rank"))
    agent = agents(config)
    path = config.zk.paths.instance("ctr", "pod-a")
    rec = h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
    assert rec.protocol is Protocol.OIP  # clients talk OIP to this pod
    assert rec.models == {"ctr": (1, 2), "rank": (1,)}  # ModelMetadata's versions, as integers
    assert rec.weight == pytest.approx(4.0) and rec.capacity.samples_per_s is None  # wei-serve's metrics have no
    assert agent.view.reason(ProbeKind.READINESS) == "ready (2 models)"               # model time: the static weight
    for _ in range(5):
        infer(wei_serve.port)
    view = agent.wait_for(lambda v: v.server is not None and (v.server.requests or 0) >= 5)
    assert view.server.reachable and view.server.errors == 0 and view.server.in_flight == 0

    wei_serve.stop()  # ServerReady false while it drains, then nothing answers
    drained = h.wait_record(zk, path, lambda r: r is not None and not r.enabled)
    assert drained.state is State.DRAINING and drained.weight == 0
    view = agent.wait_for(lambda v: v.phase is not Phase.SERVING)
    assert "oip 127.0.0.1" in view.reason(ProbeKind.READINESS)


def test_a_named_model_the_server_does_not_have_fails_readiness_naming_it(zk, zk_settings, wei_serve, agents):
    config = oip_config(zk_settings, wei_serve, models=("ctr", "nope"))
    agent = agents(config)
    view = agent.wait_for(lambda v: "'nope'" in v.reason(ProbeKind.READINESS))
    assert view.reason(ProbeKind.READINESS) == "model 'nope' is not ready (ModelReady says false)"
    assert not view.engine.ready and view.phase is Phase.WAITING
    assert zk.exists(config.zk.paths.instance("ctr", "pod-a")) is None


def test_drain_waits_for_the_requests_the_server_still_has(zk, zk_settings, tmp_path, agents):
    server = h.start_server(h.write_model(tmp_path / "slow", delay_s=1.5))
    try:
        config = oip_config(zk_settings, server, models=("ctr",), drain_wait_s=0.2, in_flight_timeout_s=10.0)
        agent = agents(config)
        h.wait_record(zk, config.zk.paths.instance("ctr", "pod-a"), lambda r: r is not None)
        done: list[float] = []
        call = threading.Thread(target=lambda: (infer(server.port), done.append(time.monotonic())))
        call.start()
        reader = OipReader(config.target, metrics_url=config.metrics_url)
        deadline = time.monotonic() + 10
        while reader.in_flight().count != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        agent.request_shutdown()
        assert agent.wait(15) and agent.clean
        call.join()
        assert agent.deregistered_at >= done[0] - 0.1  # the in-flight call ended before the node went
    finally:
        server.stop()


def test_without_metrics_the_drain_waits_the_whole_in_flight_timeout(zk, zk_settings, wei_serve, agents):
    config = oip_config(zk_settings, wei_serve, models=("ctr",), metrics_url=None, drain_wait_s=0.2,
                        in_flight_timeout_s=1.0)
    agent = agents(config)
    h.wait_record(zk, config.zk.paths.instance("ctr", "pod-a"), lambda r: r is not None and r.state is State.SERVING)
    assert agent.view.server.in_flight is None  # nothing says what the server has
    agent.request_shutdown()
    assert agent.wait(10) and agent.clean
    assert agent.deregistered_at - agent.shutdown_requested_at >= 1.2


def test_calibration_over_oip_model_infer(zk, zk_settings, wei_serve, agents):
    config = oip_config(zk_settings, wei_serve, models=("rank",),
                        calibration=CalibrationConfig(batch_sizes=(1, 8), warmup=0, repeats=1))
    agent = agents(config)
    rec = h.wait_record(zk, config.zk.paths.instance("ctr", "pod-a"), lambda r: r is not None)
    assert rec.capacity.samples_per_s is not None and rec.capacity.samples_per_s > 0
    assert any("calibrated" in n and "on rank" in n for n in agent.view.capacity.notes)


class _Garbage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"\x00\xffnot { prometheus\nnv_inference_count{model=} NaN\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_metrics_that_are_garbage_leave_capacity_unknown_and_the_pod_serving(zk, zk_settings, wei_serve, agents):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        config = oip_config(zk_settings, wei_serve, models=("ctr",),
                            metrics_url=f"http://127.0.0.1:{httpd.server_address[1]}/metrics")
        agent = agents(config)
        rec = h.wait_record(zk, config.zk.paths.instance("ctr", "pod-a"),
                            lambda r: r is not None and r.state is State.SERVING)
        assert rec.weight == pytest.approx(4.0) and rec.capacity.samples_per_s is None
        view = agent.view
        assert view.server.reachable and view.server.work() is None and view.server.requests is None
        assert "no Triton, MLServer or wei-serve metric" in view.server.problem
    finally:
        httpd.shutdown()


def test_plugins_predict_over_oip(wei_serve):
    out = oip_predict(f"127.0.0.1:{wei_serve.port}", 5.0)("ctr", {"x": [[1, 2, 3]]})  # JSON ints, cast to FP32
    assert out["y"].tolist() == [[3.0, 5.0, 7.0]] and out["who"].tolist() == [0]
    with pytest.raises(RuntimeError, match="^nope: NOT_FOUND: "):
        oip_predict(f"127.0.0.1:{wei_serve.port}", 5.0)("nope", {"x": [[1, 2, 3]]})


@pytest.mark.parametrize(("versions", "expected", "why"), [
    (["1", "2"], [1, 2], False), (["3", "1", "3"], [1, 3], False), ([], [], False),
    (["v1"], [], True), (["1", "latest"], [], True), (["-1"], [], True), (["1" * 30], [], True),
])
def test_oip_versions_map_onto_the_records_integers(versions, expected, why):
    got, reason = record_versions(versions)
    assert got == expected and (reason is not None) is why
    if why:
        assert "any version" in reason


def test_without_model_and_without_a_repository_index_the_agent_exits_with_one_line(zk_settings, wei_serve):
    proc = subprocess.run(
        [sys.executable, "-m", "server_agent.cli", "run", "--protocol", "oip", "--service", "ctr",
         "--target", f"127.0.0.1:{wei_serve.port}", "--zk", zk_settings.hosts, "--http-port", "0",
         "--metrics-url", "none", "--startup-period-s", "0.2", "--log-level", "ERROR"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "WEI_STATUS_URL": "", "WEI_MODELS": ""})
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("wei-agent: error: the OIP server at 127.0.0.1:") and "pass --model NAME" in last
    assert "Triton's RepositoryIndex" in last and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--protocol", "grpc"], "argument --protocol: expected one of weiserving, oip, got 'grpc'"),
    (["--protocol", "oip", "--status-url", "http://127.0.0.1:8502"], "--status-url is wei-serve's status endpoint"),
    (["--model", "ctr"], "--model is for --protocol oip"),
    (["--metrics-url", "http://127.0.0.1:8002/metrics"], "--metrics-url is for --protocol oip"),
])
def test_cli_refuses_a_bad_protocol_or_a_flag_of_the_other_protocol_in_one_line(argv, message, capsys):
    assert cli.run(["run", "--service", "ctr", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wei-agent: error: ") and message in err


def test_cli_builds_an_oip_config(monkeypatch):
    for name in ("WEI_STATUS_URL", "WEI_MODELS", "WEI_METRICS_URL", "WEI_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    args = cli.build_parser().parse_args(["run", "--service", "ctr", "--protocol", "oip", "--model", "ctr",
                                          "--model", "rank"])
    config = cli.build_config(args)
    assert (config.protocol, config.models, config.status_url) == (Protocol.OIP, ("ctr", "rank"), None)
    assert config.metrics_url == "http://127.0.0.1:8002/metrics"  # Triton's default
    monkeypatch.setenv("WEI_MODELS", "a, b")
    monkeypatch.setenv("WEI_STATUS_URL", "http://127.0.0.1:9/")  # a pod's env may carry it: ignored under oip
    config = cli.build_config(cli.build_parser().parse_args(["run", "--service", "ctr", "--protocol", "oip",
                                                             "--metrics-url", "none"]))
    assert (config.models, config.metrics_url, config.status_url) == (("a", "b"), None, None)


def test_config_validates_the_protocol_fields():
    with pytest.raises(ConfigError, match="protocol"):
        AgentConfig(service="ctr", target="127.0.0.1:8500", protocol="grpc")
    with pytest.raises(ConfigError, match="models"):
        AgentConfig(service="ctr", target="127.0.0.1:8500", models=("ctr",))  # wei-serve lists them itself
    with pytest.raises(ConfigError, match="models"):
        AgentConfig(service="ctr", target="127.0.0.1:8500", protocol="oip", models=("bad name",))
    with pytest.raises(ConfigError, match="metrics_url"):
        AgentConfig(service="ctr", target="127.0.0.1:8500", protocol="oip", metrics_url="ftp://x")
    cfg = AgentConfig(service="ctr", target="127.0.0.1:8500", protocol="oip", models=("a", "a", "b"))
    assert cfg.protocol is Protocol.OIP and cfg.models == ("a", "b") and cfg.status_url is None


def test_the_manifest_passes_the_protocol_to_the_agent(capsys):
    assert cli.run(["manifest", "--protocol", "oip", "--model", "ctr", "--model", "rank"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    kubernetes_validate.validate(doc, latest_version(), strict=True)
    agent = doc["spec"]["template"]["spec"]["containers"][1]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["WEI_PROTOCOL"] == "oip" and env["WEI_MODELS"] == "ctr,rank"
    assert env["WEI_METRICS_URL"] == "http://127.0.0.1:8502/metrics" and "WEI_STATUS_URL" not in env
    assert cli.run(["manifest", "--protocol", "oip"]) == 2  # wei-serve has no repository index
    assert "needs the models" in capsys.readouterr().err


# -- a real MLServer ----------------------------------------------------------------------------

MLSERVER_MODEL = '''
import asyncio

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse


class Doubler(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self._delay_s = float(extra.get("delay_s", 0.0))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if payload.inputs[0].datatype != "FP32":
            raise InferenceError(f"x is {payload.inputs[0].datatype}, not FP32")  # gRPC INVALID_ARGUMENT
        x = NumpyCodec.decode_input(payload.inputs[0])
        await asyncio.sleep(self._delay_s)
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output("y", x * 2)])
'''


@pytest.fixture
def mlserver(tmp_path):
    """A real MLServer serving ``iris`` (version "v1") and ``rank`` (version 3, each call takes 2 s)."""
    if not MLSERVER.exists():
        pytest.skip(f"no MLServer at {MLSERVER} (install mlserver into /work/main/.venv-mlserver)")
    ports = {"http_port": h.free_port(), "grpc_port": h.free_port(), "metrics_port": h.free_port()}
    for name, version, delay_s in (("iris", "v1", 0), ("rank", "3", SLOW_S)):  # MLServer allows any version string
        d = tmp_path / "mls" / name
        d.mkdir(parents=True)
        (d / "model.py").write_text(MLSERVER_MODEL)
        (d / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "model.Doubler",
            "parameters": {"version": version, "extra": {"delay_s": delay_s}},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]}))
    (tmp_path / "mls" / "settings.json").write_text(json.dumps({**ports, "parallel_workers": 0}))
    proc = subprocess.Popen([str(MLSERVER), "start", str(tmp_path / "mls")], cwd=tmp_path / "mls",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    yield proc, ports
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_an_agent_in_front_of_a_real_mlserver(zk, zk_settings, mlserver, agents):
    proc, ports = mlserver
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{ports['grpc_port']}", status_url=None,
                           protocol=Protocol.OIP, metrics_url=f"http://127.0.0.1:{ports['metrics_port']}/metrics")
    agent = agents(config)  # no --model: MLServer's repository index lists them
    path = config.zk.paths.instance("ctr", "pod-a")
    rec = h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING, timeout=60)
    assert rec.protocol is Protocol.OIP
    assert rec.models == {"iris": (), "rank": (3,)}  # "v1" is no integer: the model, any version
    predict = oip_predict(config.target, 10.0)
    for _ in range(3):
        assert predict("iris", {"x": [[1, 2, 3]]})["y"].tolist() == [[2.0, 4.0, 6.0]]
    view = agent.wait_for(lambda v: v.server is not None and (v.server.requests or 0) >= 3, timeout=15)
    assert view.server.errors == 0 and view.server.work() is None  # MLServer reports no model time
    assert rec.weight == pytest.approx(4.0) and rec.capacity.samples_per_s is None  # so the static weight stands
    proc.send_signal(signal.SIGTERM)
    drained = h.wait_record(zk, path, lambda r: r is not None and not r.enabled, timeout=30)
    assert drained.state is State.DRAINING


def mlserver_agent(zk, zk_settings, ports, agents, **kw) -> Agent:
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{ports['grpc_port']}", status_url=None,
                           protocol=Protocol.OIP, metrics_url=f"http://127.0.0.1:{ports['metrics_port']}/metrics", **kw)
    agent = agents(config)
    h.wait_record(zk, config.zk.paths.instance("ctr", "pod-a"), lambda r: r is not None and r.state is State.SERVING,
                  timeout=60)
    return agent


def refuse(target: str) -> list[str]:
    """Calls MLServer refuses, one of each kind: the model's INVALID_ARGUMENT, an unknown model, bytes
    that are no request; MLServer counts none of them handled."""
    codes = []
    with grpc.insecure_channel(target) as channel:
        infer_call = channel.unary_unary(oip.METHODS["ModelInfer"])
        for body in (encode_infer_request("iris", {"x": np.zeros((1, 3), np.float64)}),
                     encode_infer_request("iris", {"x": np.zeros((1, 3), np.float64)}),
                     encode_infer_request("nope", {"x": np.zeros((1, 3), np.float32)}), b"\xff\xff\x00no request"):
            with pytest.raises(grpc.RpcError) as e:
                infer_call(body, timeout=10)
            codes.append(e.value.code().name)
    return codes


def test_after_refused_calls_a_drain_finds_a_real_mlserver_idle(zk, zk_settings, mlserver, agents):
    _, ports = mlserver
    agent = mlserver_agent(zk, zk_settings, ports, agents, drain_wait_s=0.2, in_flight_timeout_s=60.0)
    target = agent.config.target
    assert refuse(target) == ["INVALID_ARGUMENT", "INVALID_ARGUMENT", "NOT_FOUND", "UNKNOWN"]
    assert oip_predict(target, 10.0)("iris", {"x": [[1, 2, 3]]})["y"].tolist() == [[2.0, 4.0, 6.0]]
    view = agent.wait_for(lambda v: v.server is not None and v.server.requests == 4, timeout=15)  # 1 OK + 3 failed
    assert view.server.errors == 3  # MLServer counts its callers' mistakes as failures
    assert view.server.in_flight == 0  # was 3 for good: refused calls are never "handled"
    agent.request_shutdown()
    assert agent.wait(90) and agent.clean
    assert agent.view.drain == "server idle: no request in flight"


def test_a_drain_waits_for_a_slow_call_on_a_real_mlserver(zk, zk_settings, mlserver, agents):
    _, ports = mlserver
    agent = mlserver_agent(zk, zk_settings, ports, agents, drain_wait_s=0.2, in_flight_timeout_s=60.0)
    target = agent.config.target
    refuse(target)  # a residue started - handled would still count
    answers: list[list] = []
    sent_at = time.monotonic()
    call = threading.Thread(target=lambda: answers.append(oip_predict(target, 30.0)("rank", {"x": [[1, 2, 3]]})["y"]
                                                          .tolist()))
    call.start()
    agent.wait_for(lambda v: v.server is not None and v.server.in_flight == 1, timeout=15)
    agent.request_shutdown()
    assert agent.wait(90) and agent.clean
    call.join()
    assert answers == [[[2.0, 4.0, 6.0]]]  # the call completed, OK
    assert agent.deregistered_at >= sent_at + SLOW_S  # the model slept SLOW_S after it was sent: the node went after
    assert agent.view.drain == "server idle: no request in flight"


def test_a_drain_in_front_of_a_killed_mlserver_ends_at_once(zk, zk_settings, mlserver, agents):
    """A SIGKILLed server answers neither metrics nor gRPC, and its port refuses connections:
    nothing can be left to finish, so the drain ends without the in-flight timeout (60 s here)."""
    proc, ports = mlserver
    agent = mlserver_agent(zk, zk_settings, ports, agents, drain_wait_s=0.2, in_flight_timeout_s=60.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    agent.request_shutdown()
    assert agent.wait(90)
    assert agent.view.drain.startswith("server gone"), agent.view.drain
