"""The agent shell against a real wei-serve and a real ZooKeeper: register only when warm,
drain on a failing plugin within the probe budget, re-enable on recovery, endpoints."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import agent_shell_helpers as h
import pytest

from registry.records import State
from server_agent import cli
from server_agent.agent import Agent
from server_agent.config import PluginConfig
from server_agent.http import AgentHttp
from server_agent.lifecycle import Phase
from server_agent.probes import ProbeKind


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def probe_results(view, kind: ProbeKind) -> int:
    return next(p.results for p in view.engine.probes if p.kind is kind)


@pytest.fixture
def agents():
    started: list[tuple[Agent, AgentHttp | None]] = []

    def make(config, cores: float = 4.0, http: bool = False):
        agent = Agent(config, capacity=h.capacity(cores))
        endpoint = AgentHttp(agent, "127.0.0.1", 0) if http else None
        agent.start()
        started.append((agent, endpoint))
        return agent, endpoint

    yield make
    for agent, endpoint in started:
        agent.close()
        if endpoint is not None:
            endpoint.close(drain_grace_s=0)


def test_registers_only_after_the_model_is_warm(zk, zk_settings, tmp_path, agents):
    port, status_port = h.free_port(), h.free_port()
    h.LOAD_GATE.clear()
    models = h.write_model(tmp_path / "m", gated=True)
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{port}", status_url=f"http://127.0.0.1:{status_port}")
    agent, http = agents(config, http=True)
    path = config.zk.paths.instance("ctr", "pod-a")

    box: list = []
    loader = threading.Thread(target=lambda: box.append(h.start_server(models, port=port, status_port=status_port)))
    loader.start()  # the server is loading its model: not bound yet, startup probe fails
    try:
        view = agent.wait_for(lambda v: probe_results(v, ProbeKind.STARTUP) >= 3)
        assert not view.engine.started and view.phase is Phase.WAITING
        assert zk.exists(path) is None, "registered before the model was warm"
        assert get(http.url + "/readyz")[0] == 503
        assert get(http.url + "/startupz")[0] == 503
        h.LOAD_GATE.set()  # the model loads and warms; the server binds and reports SERVING
        first = h.wait_record(zk, path, lambda r: r is not None)
        assert first.state is State.WARMING and first.enabled
        assert first.weight == pytest.approx(0.05 * 4, rel=0.5)  # the ramp starts at the floor
        assert first.models == {"ctr": (1,)}  # never a record that names no model: no client could use it
        serving = h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
        assert serving.weight == pytest.approx(4.0) and serving.enabled
        assert serving.capacity.cpu_cores == 4.0
        code, body = get(http.url + "/readyz")
        assert code == 200 and "serving" in body
        status = json.loads(get(http.url + "/status")[1])
        assert status["phase"] == "serving" and status["record"]["payload"]["state"] == "SERVING"
        assert agent.wait_for(lambda v: v.server is not None and v.server.requests is not None).server.errors == 0
        metrics = get(http.url + "/metrics")[1]
        assert 'wei_agent_registration_phase{phase="serving"} 1.0' in metrics
        values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
        assert float(values["wei_agent_weight"]) == pytest.approx(4.0, rel=0.05)
        assert float(values["wei_agent_capacity_score"]) == 4.0 and values["wei_agent_server_in_flight"] == "0.0"
        assert values['wei_agent_probe_success{probe="readiness"}'] == "1.0"
        assert float(values["wei_agent_zk_writes_total"]) >= 2
    finally:
        h.LOAD_GATE.set()
        loader.join()
        for server in box:
            server.stop()


def test_failing_plugin_drains_within_the_probe_budget_and_recovery_re_enables(zk, zk_settings, tmp_path,
                                                                                agents, capsys):
    server = h.start_server(h.write_model(tmp_path / "m"))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "golden.py").write_text(h.FLAG_PLUGIN)
    flag = tmp_path / "fail"
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{server.port}",
                           status_url=f"http://127.0.0.1:{server.status_port}",
                           plugins=PluginConfig(plugin_dir=plugins, timeout_s=1.0, params={"flag": str(flag)}))
    agent, http = agents(config, http=True)
    path = config.zk.paths.instance("ctr", "pod-a")
    try:
        h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
        assert cli.run(["probe", "readiness", "--agent-url", http.url]) == 0
        budget = config.readiness.period_seconds * config.readiness.failure_threshold

        flag.write_text("x")
        t0 = time.monotonic()
        drained = h.wait_record(zk, path, lambda r: r is not None and not r.enabled)
        elapsed = time.monotonic() - t0
        assert drained.state is State.DRAINING and drained.weight == 0
        # one period may pass before the first failing probe starts; the rest is the write
        assert elapsed <= budget + config.readiness.period_seconds + 0.5, f"drained after {elapsed:.2f}s"
        capsys.readouterr()
        assert cli.run(["probe", "readiness", "--agent-url", http.url]) == 1
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and "plugin golden.py: golden sample out of range" in out

        flag.unlink()
        back = h.wait_record(zk, path, lambda r: r is not None and r.enabled)
        assert back.state is State.WARMING and back.weight > 0  # slow start again
        h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
        assert cli.run(["probe", "readiness", "--agent-url", http.url]) == 0
        assert cli.run(["probe", "liveness", "--agent-url", http.url]) == 0
        assert cli.run(["probe", "startup", "--agent-url", http.url]) == 0
    finally:
        server.stop()


def test_shutdown_drains_waits_and_deregisters(zk, zk_settings, tmp_path, agents):
    server = h.start_server(h.write_model(tmp_path / "m"))
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{server.port}",
                           status_url=f"http://127.0.0.1:{server.status_port}")
    agent, http = agents(config, http=True)
    path = config.zk.paths.instance("ctr", "pod-a")
    try:
        h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
        drained = threading.Event()
        states: list = []

        def watch(data, stat):
            states.append(None if data is None else h.decode_instance(data).state)
            if data is not None and states[-1] is State.DRAINING:
                drained.set()
            return data is not None

        zk.DataWatch(path, watch)
        code, body = get(http.url + "/drain")  # what the model server's preStop hook does
        assert code == 200 and body.strip() == "deregistered"
        assert drained.is_set() and zk.exists(path) is None
        assert agent.clean and agent.view.phase is Phase.STOPPED
        assert agent.deregistered_at - agent.shutdown_requested_at >= config.drain_wait_s
        assert get(http.url + "/readyz")[0] == 503
        agent.request_shutdown()  # idempotent
        assert agent.wait(1)
    finally:
        server.stop()


def test_an_unreachable_server_never_registers_and_the_agent_stays_up(zk, zk_settings, agents):
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{h.free_port()}", status_url=None)
    agent, http = agents(config, http=True)
    view = agent.wait_for(lambda v: probe_results(v, ProbeKind.STARTUP) >= 3)
    assert "UNAVAILABLE" in view.reason(ProbeKind.STARTUP)
    assert zk.exists(config.zk.paths.service("ctr")) is None
    code, body = get(http.url + "/livez")
    assert code == 200
    agent.request_shutdown()
    assert agent.wait(5) and agent.clean  # nothing registered: nothing to wait for


def test_session_loss_re_registers(zk, zk_settings, tmp_path, agents, expire):
    server = h.start_server(h.write_model(tmp_path / "m"))
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{server.port}",
                           status_url=f"http://127.0.0.1:{server.status_port}")
    agent, _ = agents(config)
    path = config.zk.paths.instance("ctr", "pod-a")
    try:
        before = h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
        old_owner = zk.exists(path).ephemeralOwner
        expire(agent._zk)
        again = h.wait_record(zk, path, lambda r: r is not None and zk.exists(path)
                              and zk.exists(path).ephemeralOwner != old_owner)
        assert again.state is State.SERVING and again.weight == before.weight
        assert agent.view.phase is Phase.SERVING
    finally:
        server.stop()


def test_a_second_signal_cuts_the_waits_short(zk, zk_settings, tmp_path, agents):
    server = h.start_server(h.write_model(tmp_path / "m"))
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{server.port}",
                           status_url=f"http://127.0.0.1:{server.status_port}", drain_wait_s=60.0)
    agent, _ = agents(config)
    path = config.zk.paths.instance("ctr", "pod-a")
    try:
        h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
        agent.request_shutdown()
        h.wait_record(zk, path, lambda r: r is not None and r.state is State.DRAINING)
        assert not agent.wait(0)  # waiting out the 60 s drain wait
        agent.force()
        assert agent.wait(5) and not agent.clean
        assert zk.exists(path) is None  # deregistration is still done
    finally:
        server.stop()
