"""Every port and range flag of every CLI refuses a bad value while parsing (issue 10, part 8).

One line on stderr naming the flag, the valid range and what was given;
exit 2; nothing started, no traceback. ``int()`` alone took ``--port 70000``
and the socket bound it as 4464.
"""

from __future__ import annotations

import argparse

import pytest

from registry import cli as registry_cli
from registry.cli_args import advertised_port, bind_port, integer, number
from server_agent import cli as agent_cli
from serving import cli as serve_cli


def exit_code(fn, argv) -> int:
    try:
        return fn(argv)
    except SystemExit as exc:
        return exc.code


SERVE = ["--models", "/nonexistent"]
AGENT = ["run", "--service", "ctr"]
RANGE = "(0 picks a free one)"

CASES = [
    # wei-serve
    (serve_cli.main, [*SERVE, "--port", "70000"],
     f"argument --port: expected a port in 0..65535 {RANGE}, got '70000'"),
    (serve_cli.main, [*SERVE, "--port", "-1"], "argument --port: expected a port in 0..65535"),
    (serve_cli.main, [*SERVE, "--status-port", "65536"],
     f"argument --status-port: expected a port in 0..65535 {RANGE} or -1 (no status endpoint)"),
    (serve_cli.main, [*SERVE, "--max-batch-size", "0"],
     "argument --max-batch-size: expected an integer >= 1, got '0'"),
    (serve_cli.main, [*SERVE, "--batch-timeout-micros", "-5"],
     "argument --batch-timeout-micros: expected an integer >= 0"),
    (serve_cli.main, [*SERVE, "--max-enqueued-batches", "0"], "argument --max-enqueued-batches: "),
    (serve_cli.main, [*SERVE, "--num-batch-threads", "0"], "argument --num-batch-threads: "),
    (serve_cli.main, [*SERVE, "--allowed-batch-sizes", "0,8"], "argument --allowed-batch-sizes: "),
    (serve_cli.main, [*SERVE, "--slo-p99-ms", "nan"],
     "argument --slo-p99-ms: expected a number > 0, got 'nan'"),
    (serve_cli.main, [*SERVE, "--poll-interval-s", "0"], "argument --poll-interval-s: "),
    (serve_cli.main, [*SERVE, "--grace-s", "-1"],
     "argument --grace-s: expected a number >= 0, got '-1'"),
    (serve_cli.main, [*SERVE, "--max-message-bytes", "0"], "argument --max-message-bytes: "),
    (serve_cli.main, [*SERVE, "--grpc-workers", "0"], "argument --grpc-workers: "),
    # wei-agent
    (agent_cli.run, [*AGENT, "--http-port", "70000"],
     f"argument --http-port: expected a port in 0..65535 {RANGE}, got '70000'"),
    (agent_cli.run, [*AGENT, "--control-port", "65536"], "argument --control-port: expected a port in 0..65535"),
    (agent_cli.run, [*AGENT, "--port", "0"], "argument --port: expected a port in 1..65535, got '0'"),
    (agent_cli.run, [*AGENT, "--port", "70000"], "argument --port: expected a port in 1..65535"),
    (agent_cli.run, [*AGENT, "--readiness-failure-threshold", "0"],
     "argument --readiness-failure-threshold: expected an integer >= 1"),
    (agent_cli.run, [*AGENT, "--liveness-period-s", "0"], "argument --liveness-period-s: "),
    (agent_cli.run, [*AGENT, "--startup-timeout-s", "inf"], "argument --startup-timeout-s: "),
    (agent_cli.run, [*AGENT, "--plugin-timeout-s", "0"], "argument --plugin-timeout-s: "),
    (agent_cli.run, [*AGENT, "--session-timeout-s", "-2"], "argument --session-timeout-s: "),
    (agent_cli.run, [*AGENT, "--drain-wait-s", "-1"], "argument --drain-wait-s: expected a number >= 0"),
    (agent_cli.run, [*AGENT, "--cpu-cores", "0"], "argument --cpu-cores: expected a number > 0"),
    (agent_cli.run, ["probe", "readiness", "--timeout-s", "0"], "argument --timeout-s: "),
    # wei-registry
    (registry_cli.run, ["--timeout", "0", "ls", "ctr"],
     "argument --timeout: expected a number > 0, got '0'"),
    (registry_cli.run, ["watch", "ctr", "--count", "-1"],
     "argument --count: expected an integer >= 0, got '-1'"),
    (registry_cli.run, ["watch", "ctr", "--duration", "nan"],
     "argument --duration: expected a number >= 0, got 'nan'"),
]


@pytest.mark.parametrize(("fn", "argv", "says"), CASES,
                         ids=[f"{fn.__module__.split('.')[0]}:{' '.join(a[-2:])}" for fn, a, _ in CASES])
def test_a_bad_port_or_range_is_one_line_naming_the_flag_and_exit_2(capsys, fn, argv, says):
    assert exit_code(fn, argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(("wei-serve: error: ", "wei-agent: error: ", "wei-registry: error: "))
    assert says in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_the_agent_http_port_from_the_environment_is_checked_too(capsys, monkeypatch):
    monkeypatch.setenv("WEI_HTTP_PORT", "99999")
    assert exit_code(agent_cli.run, AGENT) == 2
    assert "argument --http-port: expected a port in 0..65535" in capsys.readouterr().err


@pytest.mark.parametrize(("parse", "text", "value"), [
    (bind_port, "0", 0), (bind_port, "65535", 65535), (advertised_port, "8500", 8500),
    (integer(1), "7", 7), (number(above=0), "0.5", 0.5), (number(at_least=0), "0", 0.0),
])
def test_good_values_pass(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("text", ["65536", "-1", "80.5", "eighty", ""])
def test_bind_port_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a port in 0..65535"):
        bind_port(text)
