"""Two agents, one instance id (issue 10, part 7): the default id is unique per endpoint; a node
owned by a live session that names another endpoint is never replaced; the conflict shows on
/readyz, /metrics and in the log, and the writer retries with back-off until the node is free."""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request

import agent_shell_helpers as h
import pytest

from registry.publisher import Publisher, PublisherConfig
from registry.records import InstanceRecord, State
from registry.zk import RegistryPaths
from server_agent.agent import Agent
from server_agent.config import AgentConfig
from server_agent.http import AgentHttp


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_until(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.02)


def rec(port: int) -> InstanceRecord:
    return InstanceRecord(service="ctr", id="pod-x", address="127.0.0.1", port=port, weight=1.0,
                          state=State.SERVING, models={"ctr": [1]})


def test_the_default_instance_id_is_unique_per_endpoint():
    host = socket.gethostname().split(".")[0]
    a = AgentConfig(service="ctr", target="127.0.0.1:8500")
    b = AgentConfig(service="ctr", target="127.0.0.1:8600")
    assert a.instance_id == f"{host}-8500" and b.instance_id == f"{host}-8600"
    assert AgentConfig(service="ctr", target="127.0.0.1:8500", port=9500).instance_id == f"{host}-9500"
    assert AgentConfig(service="ctr", target="127.0.0.1:8500", instance_id="pod-7").instance_id == "pod-7"


def test_a_live_node_of_another_endpoint_is_never_replaced(zk, make_client, caplog):
    fast = PublisherConfig(retry_delay_s=0.05, max_retry_delay_s=0.2)
    first = Publisher(make_client(), rec(9001), config=fast)
    second = Publisher(make_client(), rec(9002), config=fast)
    path = RegistryPaths().instance("ctr", "pod-x")
    try:
        assert first.register()
        owner = zk.exists(path).ephemeralOwner
        with caplog.at_level(logging.ERROR, logger="registry.publisher"):
            assert not second.register(timeout=2.0)
            # Retried with back-off (several attempts), logged once, the other node untouched.
            wait_until(lambda: second.stats.failures >= 4, "the second publisher retried")
        data, stat = zk.get(path)
        assert stat.ephemeralOwner == owner and b'"port":9001' in data, "the live node was replaced"
        assert second.stats.deletes == 0 and second.stats.conflicts == 1
        assert "127.0.0.1:9001" in second.conflict and "used twice" in second.conflict
        assert second.problem == second.conflict
        errors = [r for r in caplog.records if "used twice" in r.getMessage()]
        assert len(errors) == 1, [r.getMessage() for r in errors]

        first.close()  # the node goes: the second writes its own (its watch on the node wakes it)
        assert second.wait_synced(15), second.problem
        assert b'"port":9002' in zk.get(path)[0]
        assert second.conflict is None and second.problem is None
    finally:
        first.close()
        second.close()


def test_two_agents_with_one_id_the_second_reports_the_conflict(zk, zk_settings, tmp_path):
    server = h.start_server(h.write_model(tmp_path / "m"))
    target, status = f"127.0.0.1:{server.port}", f"http://127.0.0.1:{server.status_port}"
    first = Agent(h.fast_config(zk_settings, target=target, status_url=status, instance_id="pod-x"),
                  capacity=h.capacity(2)).start()
    # Same id, another advertised port: a second pod that was given the first one's id.
    second = Agent(h.fast_config(zk_settings, target=target, status_url=status, instance_id="pod-x",
                                 port=server.port + 1), capacity=h.capacity(2))
    http = AgentHttp(second, "127.0.0.1", 0)
    path = zk_settings.paths.instance("ctr", "pod-x")
    try:
        h.wait_record(zk, path, lambda r: r is not None and r.port == server.port)
        owner = zk.exists(path).ephemeralOwner
        second.start()
        second.wait_for(lambda v: v.registration_problem is not None, timeout=20)
        code, body = get(http.url + "/readyz")
        assert code == 503 and "used twice" in body, body
        assert "wei_agent_registration_problem 1.0" in get(http.url + "/metrics")[1]
        assert zk.exists(path).ephemeralOwner == owner
        assert h.decode_instance(zk.get(path)[0]).port == server.port
    finally:
        http.close(drain_grace_s=0)
        second.close()
        first.close()
        server.stop()


def test_an_invalid_default_id_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "bad host!")
    with pytest.raises(ValueError, match="instance_id"):
        AgentConfig(service="ctr", target="127.0.0.1:8500")
