"""Pure parts of the agent shell: the lifecycle table, configuration, parsing, verdicts, the CLI's errors."""

from __future__ import annotations

import socket

import pytest

from protocol.status import StatusDoc
from server_agent import cli
from server_agent.capacity import detect_capacity
from server_agent.config import AgentConfig, CapacityConfig, split_target
from server_agent.errors import ConfigError
from server_agent.lifecycle import Lifecycle, Move, Phase
from server_agent.server_io import ServerReading, parse_request_counts, read_server

W, WA, S, D, ST = Phase.WAITING, Phase.WARMING, Phase.SERVING, Phase.DRAINED, Phase.STOPPING

# (start phase, routable, ramping, shutdown) -> (move or None, phase after)
TABLE = [
    (W, False, True, False, None, W),
    (W, True, True, False, Move.REGISTER, WA),
    (W, True, False, False, Move.REGISTER, WA),  # registers WARMING even without a ramp; promoted next step
    (WA, True, True, False, None, WA),
    (WA, True, False, False, Move.PROMOTE, S),
    (WA, False, True, False, Move.DRAIN, D),
    (S, True, False, False, None, S),
    (S, False, False, False, Move.DRAIN, D),
    (D, False, False, False, None, D),
    (D, True, False, False, Move.ENABLE, WA),
    (W, False, False, True, Move.SHUTDOWN, ST),
    (S, True, False, True, Move.SHUTDOWN, ST),
    (D, True, False, True, Move.SHUTDOWN, ST),
]


def _at(phase: Phase) -> Lifecycle:
    life = Lifecycle()
    path = {W: [], WA: [(True, True)], S: [(True, True), (True, False)], D: [(True, True), (False, True)]}[phase]
    for routable, ramping in path:
        life.step(routable=routable, ramping=ramping)
    assert life.phase is phase
    return life


@pytest.mark.parametrize("start,routable,ramping,shutdown,move,after", TABLE)
def test_lifecycle_table(start, routable, ramping, shutdown, move, after):
    life = _at(start)
    t = life.step(routable=routable, ramping=ramping, shutdown=shutdown, why="readiness: plugin x failed")
    assert (t.move if t else None) is move
    assert life.phase is after
    if t is not None:
        assert (t.before, t.after) == (start, after) and t.reason


def test_stopping_is_final():
    life = _at(S)
    life.step(routable=True, ramping=False, shutdown=True)
    assert life.step(routable=True, ramping=False) is None and life.phase is ST
    life.stopped()
    assert life.step(routable=True, ramping=False, shutdown=True) is None and life.phase is Phase.STOPPED


def test_config_defaults_and_validation():
    c = AgentConfig(service="ctr", target="10.0.0.7:8500")
    assert (c.address, c.port, c.http_port, c.drain_wait_s) == ("10.0.0.7", 8500, 8510, 5.0)
    assert c.readiness.period_seconds * c.readiness.failure_threshold == 6.0
    assert c.shutdown_budget_s == 35.0
    wildcard = AgentConfig(service="ctr", target="0.0.0.0:8500")
    assert wildcard.address != "0.0.0.0"
    assert split_target("[::1]:8500") == ("::1", 8500)
    for bad in ({"target": "nohostport"}, {"target": "h:0"}, {"service": "bad name"}, {"status_url": "ftp://x"},
                {"http_port": 70000}, {"drain_wait_s": -1}):
        with pytest.raises(ConfigError):
            AgentConfig(**{"service": "ctr", "target": "h:1", **bad})


def test_request_counts_from_the_servers_metrics():
    text = ("# HELP weiserving_requests_total Predict calls\n# TYPE weiserving_requests_total counter\n"
            'weiserving_requests_total{model="ctr",code="OK"} 90.0\n'
            'weiserving_requests_total{model="ctr",code="INVALID_ARGUMENT"} 5.0\n'
            'weiserving_requests_total{model="ctr",code="INTERNAL"} 3.0\n'
            'weiserving_requests_total{model="",code="UNAVAILABLE"} 2.0\n')
    assert parse_request_counts(text) == (100, 5)
    assert parse_request_counts("# nothing here\n") is None
    assert parse_request_counts("garbage{{{") is None


def test_server_reading_reads_the_status_document():
    doc = StatusDoc.from_json({"in_flight": 3, "models": {"ctr": {"versions": {"2": {}, "1": {}}}, "lr": {}},
                               "added_later": {"x": 1}})
    r = ServerReading(doc)
    assert r.in_flight == 3 and r.models == {"ctr": [1, 2], "lr": []}
    assert ServerReading(None).in_flight is None and ServerReading(None).models is None


def test_read_server_reports_an_unreadable_status_and_holds(tmp_path):
    """A malformed document is no evidence: no status, a problem that names the field, not ready."""
    import http.server
    import threading

    body = b'{"ready": true, "in_flight": true}'

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = read_server(f"http://127.0.0.1:{srv.server_address[1]}", timeout=5)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.status is None and "in_flight: expected an integer >= 0, got True" in r.problem
    assert r.sample().ready is False
    down = read_server("http://127.0.0.1:9", timeout=1)
    assert down.status is None and "did not answer" in down.problem


def test_a_sidecar_prefers_the_servers_declared_limit_over_its_own_cgroup(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu\n")
    (root / "cpu.max").write_text("50000 100000\n")  # the agent container's own 500m
    proc = tmp_path / "self"
    proc.write_text("0::/\n")
    cfg = CapacityConfig(cgroup_root=root, proc_self_cgroup=proc, gpu_command=("/nonexistent",))
    env = {"WEI_CPU_LIMIT_MILLICORES": "8000"}
    assert detect_capacity(cfg, env=env, cpu_count=lambda: 16).capacity.cpu_cores == 0.5
    assert detect_capacity(cfg, env=env, cpu_count=lambda: 16, prefer_pod_limit=True).capacity.cpu_cores == 8.0
    assert detect_capacity(cfg, env={}, cpu_count=lambda: 16, prefer_pod_limit=True).capacity.cpu_cores == 0.5


@pytest.mark.parametrize("argv,message", [
    (["run", "--target", "127.0.0.1:8500"], "--service is required"),
    (["run", "--service", "ctr", "--target", "nohost"], "target: expected HOST:PORT"),
    (["run", "--service", "ctr", "--label", "novalue"], "--label 'novalue': expected KEY=VALUE"),
    (["run", "--service", "ctr", "--readiness-failure-threshold", "0"],
     "argument --readiness-failure-threshold: expected an integer >= 1"),
    (["run", "--service", "ctr", "--calibrate-batch-sizes", "8,x"], "--calibrate-batch-sizes '8,x': expected N,N"),
    (["run", "--service", "ctr", "--calibrate-batch-sizes", "0"], "batch_sizes[]: expected an integer >= 1"),
    (["probe", "sideways"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("WEI_SERVICE", raising=False)
    assert cli.run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wei-agent: error: ") and message in err


def test_cli_run_with_a_taken_port_is_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli.run(["run", "--service", "ctr", "--zk", "127.0.0.1:1", "--http-host", "127.0.0.1",
                        "--http-port", str(port), "--status-url", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "in use" in err


def test_probe_against_no_agent_exits_1_with_a_reason(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.run(["probe", "liveness", "--agent-url", f"http://127.0.0.1:{port}"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("liveness: agent at") and "unreachable" in out


def test_cli_calibration_flags_reach_the_config():
    args = cli.build_parser().parse_args(["run", "--service", "ctr", "--calibrate", "--calibrate-model", "ctr",
                                          "--calibrate-batch-sizes", "16,64"])
    config = cli.build_config(args)
    assert config.calibration.batch_sizes == (16, 64) and config.calibrate_model == "ctr"
    assert cli.build_config(cli.build_parser().parse_args(["run", "--service", "ctr"])).calibration is None
