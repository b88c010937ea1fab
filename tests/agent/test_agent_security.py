"""/drain is a control endpoint (issue 10, part 5): served on a loopback listener only, or with a
bearer token; the health endpoints stay reachable on the public listener for the kubelet."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import agent_shell_helpers as h
import pytest

from registry.zk import ZkSettings
from server_agent import cli
from server_agent.agent import Agent
from server_agent.config import AgentConfig
from server_agent.http import AgentHttp


def get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def agent():
    """An agent whose server is unreachable (nothing registers) and whose ZooKeeper is never asked."""
    config = AgentConfig(service="ctr", target=f"127.0.0.1:{h.free_port()}", status_url=None, instance_id="pod-s",
                         address="127.0.0.1", zk=ZkSettings(hosts=f"127.0.0.1:{h.free_port()}"),
                         http_host="0.0.0.0", http_port=0, drain_wait_s=0.0)
    a = Agent(config, capacity=h.capacity(2))
    yield a
    a.close()


def test_drain_is_refused_on_the_public_listener_and_served_on_loopback(agent):
    http = AgentHttp(agent, "0.0.0.0", 0, control_port=0)
    try:
        agent.start()
        assert http.control_port not in (None, http.port)
        code, body = get(http.url + "/drain")  # the public listener, whoever asks
        assert code == 403 and f"127.0.0.1:{http.control_port}" in body, body
        assert not agent.view.shutdown_requested
        for path in ("/livez", "/readyz", "/metrics", "/status"):  # the kubelet and Prometheus still get answers
            assert get(http.url + path)[0] in (200, 503), path
        code, body = get(http.control_url + "/drain")
        assert (code, body.strip()) == (200, "deregistered")
        assert agent.wait(5) and agent.view.shutdown_requested
    finally:
        http.close(drain_grace_s=0)


def test_a_token_guards_drain_on_every_listener(agent, tmp_path):
    http = AgentHttp(agent, "0.0.0.0", 0, control_port=0, token="s3cret")
    try:
        agent.start()
        for url in (http.url, http.control_url):
            assert get(url + "/drain")[0] == 403
            assert get(url + "/drain", token="wrong")[0] == 403
        assert not agent.view.shutdown_requested
        token_file = tmp_path / "token"
        token_file.write_text("s3cret\n")
        assert cli.run(["drain", "--agent-url", http.url, "--token-file", str(token_file), "--timeout-s", "10"]) == 0
        assert agent.wait(5)
    finally:
        http.close(drain_grace_s=0)


def test_the_control_port_is_derived_and_a_taken_one_falls_back_only_when_derived(agent):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            AgentHttp(agent, "0.0.0.0", 0, control_port=port)  # asked for explicitly: an error
        http = AgentHttp(agent, "0.0.0.0", 0, control_port=port, control_fallback=True)
        try:
            assert http.control_port not in (None, port, http.port)
        finally:
            http.close(drain_grace_s=0)
    loopback = AgentHttp(agent, "127.0.0.1", 0, control_port=0)  # a loopback listener is the control one
    try:
        assert loopback.control_url == loopback.url
    finally:
        loopback.close(drain_grace_s=0)


def test_the_token_never_shows_in_the_config():
    config = AgentConfig(service="ctr", target="127.0.0.1:8500", control_token="s3cret")
    assert "s3cret" not in repr(config) and config.control_port is None
    with pytest.raises(ValueError, match="control_port"):
        AgentConfig(service="ctr", target="127.0.0.1:8500", control_port=70000)
    args = cli.build_parser().parse_args(["run", "--service", "ctr", "--http-port", "8510"])
    assert cli.build_config(args).control_port is None
