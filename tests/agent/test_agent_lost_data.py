"""An agent whose ZooKeeper lost its data (stopped, data directory wiped, started again on the same
port) registers again, and says what happened on /status and /metrics (issue 10, part 6)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from dataclasses import replace

import agent_shell_helpers as h
import pytest
from kazoo.client import KazooClient

from registry.publisher import PublisherConfig
from registry.records import State, decode_instance
from registry.session import RecoveryConfig, RegistryState, SessionStatus
from registry.testing import ZooKeeperEnsemble
from registry.zk import ZkSettings
from server_agent.agent import Agent
from server_agent.config import AgentConfig
from server_agent.http import AgentHttp, verdict
from server_agent.lifecycle import Phase


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@pytest.fixture
def single():
    with ZooKeeperEnsemble(1) as zk:
        yield zk


def wait_serving_record(hosts: str, path: str, timeout: float = 60.0) -> None:
    """Wait with a client that never saw the old data until ``path`` holds a SERVING record."""
    fresh = KazooClient(hosts=hosts)
    fresh.start(timeout=30)
    seen = threading.Event()

    def watch(data, stat):
        if data and decode_instance(data).state is State.SERVING:
            seen.set()

    try:
        fresh.DataWatch(path, watch)
        assert seen.wait(timeout), f"{path}: no SERVING record within {timeout}s after the wipe"
    finally:
        fresh.stop()
        fresh.close()


def test_agent_registers_again_after_zookeeper_lost_its_data(single, tmp_path):
    server = h.start_server(h.write_model(tmp_path / "m"))
    settings = ZkSettings(hosts=single.hosts, session_timeout_s=2.0)
    recovery = RecoveryConfig(stuck_after_s=1.0, probe_timeout_s=3.0, max_probe_interval_s=2.0)
    config = h.fast_config(settings, target=f"127.0.0.1:{server.port}",
                           status_url=f"http://127.0.0.1:{server.status_port}",
                           publisher=PublisherConfig(recovery=recovery))
    agent = Agent(config, capacity=h.capacity(2))
    http = AgentHttp(agent, "127.0.0.1", 0)
    path = settings.paths.instance("ctr", "pod-a")
    try:
        agent.start()
        wait_serving_record(single.hosts, path)
        single.wipe()
        serving_at = time.monotonic()
        wait_serving_record(single.hosts, path)
        print(f"\nagent: wiped ZooKeeper serving again -> registered again in {time.monotonic() - serving_at:.1f}s")
        view = agent.wait_for(lambda v: v.registry is not None and v.registry.connected, timeout=30)
        assert view.registry.fresh_restarts >= 1
        status = json.loads(get(http.url + "/status"))["zookeeper"]
        assert status["state"] == str(RegistryState.CONNECTED) and status["fresh_restarts"] >= 1, status
        metrics = get(http.url + "/metrics")
        assert 'wei_agent_registry_state{state="connected"} 1.0' in metrics
        restarts = re.search(r"^wei_agent_registry_fresh_restarts_total (\S+)$", metrics, re.M)
        assert restarts and float(restarts.group(1)) >= 1, metrics
    finally:
        http.close(drain_grace_s=0)
        agent.close()
        server.stop()


@pytest.mark.parametrize("phase,state,problem,ok,words", [
    (Phase.SERVING, RegistryState.CONNECTED, None, True, "ready"),
    (Phase.SERVING, RegistryState.SUSPENDED, None, True, "ready"),  # the node may live; clients still route
    (Phase.SERVING, RegistryState.LOST, None, False, "registry lost"),
    (Phase.WARMING, RegistryState.RECONNECTING_FRESH, None, False, "registry reconnecting-fresh"),
    (Phase.SERVING, RegistryState.CONNECTED, "/x belongs to live session 0x1: is the instance id used twice?",
     False, "used twice"),
    (Phase.WAITING, RegistryState.LOST, None, True, "ready"),  # not registered yet: nothing is missing
])
def test_readyz_says_when_the_registered_pod_is_not_in_zookeeper(phase, state, problem, ok, words):
    """The incident: /readyz stayed 200 while the pod could never register again."""
    config = AgentConfig(service="ctr", target=f"127.0.0.1:{h.free_port()}", status_url=None,
                         zk=ZkSettings(hosts=f"127.0.0.1:{h.free_port()}"), publisher=PublisherConfig(recovery=None))
    agent = Agent(config, capacity=h.capacity(2)).start()
    try:
        view = agent.view
        view = replace(view, phase=phase, engine=replace(view.engine, started=True, ready=True, alive=True),
                       registry=SessionStatus(state=state, since=0.0, detail="test"),
                       registration_problem=problem, heartbeat=0.0)
        got, reason = verdict(view, "readyz", 1.0)
        assert got is ok and words in reason, reason
    finally:
        agent.close()
