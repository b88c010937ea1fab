"""Real MLServer pods (see pods.py): ``mlserver_pod(**PodSpec fields)`` starts one, ready, and stops
it at teardown; ``oip_agent(pod, instance_id)`` registers one through a real ``wei-agent --protocol
oip``; ``weiserve_cluster`` is the client tests' wei-serve cluster, for mixed fleets. Skips, saying how
to get it, where .venv-mlserver is missing (``make test`` builds it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from pods import MLSERVER, MLServerPod, OipAgent, PodSpec, available, client_conftest

from registry.zk import ZkSettings


def _require_mlserver() -> None:
    if not available():
        pytest.skip(f"MLServer is not installed ({MLSERVER} is missing): `make test` installs it, "
                    f"or `make mlserver-venv` alone")


@pytest.fixture
def mlserver_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MLServerPod]]:
    _require_mlserver()
    pods: list[MLServerPod] = []

    def start(**spec: object) -> MLServerPod:
        pod = MLServerPod(tmp_path_factory.mktemp("mlserver"), PodSpec(**spec))  # type: ignore[arg-type]
        pods.append(pod)
        return pod.start()

    yield start
    for pod in pods:
        pod.stop()


@pytest.fixture(scope="module")
def shared_mlserver_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerPod]:
    """One default pod for a whole module (a start costs ~1 s); tests that kill or stop a pod use
    ``mlserver_pod``."""
    _require_mlserver()
    pod = MLServerPod(tmp_path_factory.mktemp("mlserver"), PodSpec()).start()
    yield pod
    pod.stop()


@pytest.fixture
def oip_agent(zk_settings: ZkSettings) -> Iterator[Callable[..., OipAgent]]:
    """``oip_agent(pod, instance_id, flags=None)``: a real ``wei-agent run --protocol oip`` process in
    front of a started :class:`MLServerPod`, registering it in this test's ZooKeeper chroot; stopped
    (SIGTERM, then SIGKILL) at teardown. ``flags`` (``{"--ramp-s": "5"}``) replace
    :data:`pods.AGENT_FLAGS` entries."""
    _require_mlserver()
    agents: list[OipAgent] = []

    def start(pod: MLServerPod, instance_id: str, flags: Mapping[str, str] | None = None) -> OipAgent:
        agent = OipAgent(pod, zk_settings, instance_id, dict(flags or {}))
        agents.append(agent)
        return agent.start()

    yield start
    for agent in agents:
        agent.terminate()           # they drain at once: ~1.5 s each
    for agent in agents:
        agent.stop()


@pytest.fixture
def weiserve_cluster(zk: KazooClient, tmp_path: Path) -> Iterator[Any]:
    """tests/client/conftest.py's ``Cluster`` (wei-serve pods on port 0, each registered by a
    Publisher as the client tests do; pod ``i`` answers ``who = i``), closed at teardown."""
    cluster = client_conftest().Cluster(zk, tmp_path / "wei-serve")
    yield cluster
    cluster.close()
