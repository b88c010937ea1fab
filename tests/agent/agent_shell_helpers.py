"""Helpers for the agent shell tests: real model servers on known ports, fast agent configs,
and waits on ZooKeeper watches (never sleeps). A unique module name: tests/ has no packages."""

from __future__ import annotations

import socket
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

from kazoo.client import KazooClient

from registry.records import Capacity, InstanceRecord, decode_instance
from registry.zk import ZkSettings
from server_agent.capacity import CapacityReport
from server_agent.config import AgentConfig, ProbeSpec, WeightConfig
from server_agent.k8s import PodInfo
from serving.config import BatchingConfig, ModelConfig, ServerConfig
from serving.server import ModelServer

LOAD_GATE = threading.Event()
"""A gated model's ``load()`` waits on this: the server stays in its loading phase until a test sets it."""

MODEL = '''
import time
import numpy as np
from serving.backends.signature import Signature, spec

WHO, DELAY_S, GATED = {who}, {delay}, {gated}

class Model:
    signature = Signature(inputs={{"x": spec("<f4", [None, 3])}},
                          outputs={{"y": spec("<f4", [None, 3]), "who": spec("<i8", [None])}})

    def predict(self, inputs):
        if DELAY_S:
            time.sleep(DELAY_S)
        x = inputs["x"]
        return {{"y": x * 2 + 1, "who": np.full(len(x), WHO, np.int64)}}

def load(path):
    if GATED:
        import agent_shell_helpers
        agent_shell_helpers.LOAD_GATE.wait(30)
    return Model()
'''

FLAG_PLUGIN = '''
import os

def check(ctx):
    if os.path.exists(ctx.params["flag"]):
        return False, "golden sample out of range (flag file present)"
    return True, "golden sample ok"
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_model(root: Path, *, who: int = 0, delay_s: float = 0.0, gated: bool = False, name: str = "ctr") -> Path:
    path = root / name / "1"
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.py").write_text(textwrap.dedent(MODEL.format(who=who, delay=delay_s, gated=gated)))
    return root


def server_config(models_dir: Path, *, port: int = 0, status_port: int = 0) -> ServerConfig:
    return ServerConfig(models_dir=models_dir, host="127.0.0.1", port=port, status_port=status_port,
                        poll_interval_s=3600, grace_s=5,
                        defaults=ModelConfig(batching=BatchingConfig(num_batch_threads=2)))


def start_server(models_dir: Path, **kw: int) -> ModelServer:
    return ModelServer(server_config(models_dir, **kw)).start()


def capacity(cores: float) -> CapacityReport:
    """A declared capacity (detection reads this machine's cgroups; tests want known scores)."""
    return CapacityReport(Capacity(cpu_cores=cores), cores, PodInfo(), (f"cpu_cores={cores:g} (test)",))


FAST = ProbeSpec(period_seconds=0.2, timeout_seconds=1.0, failure_threshold=2)


def fast_config(zk: ZkSettings, *, target: str, status_url: str | None, instance_id: str = "pod-a",
                **kw: object) -> AgentConfig:
    """Probes every 0.2 s, status every 0.1 s, a 0.5 s ramp, a 0.5 s drain wait. The capacity
    prior is the declared cores themselves (``samples_per_core_s=1``): a test that sends no
    traffic sees weights in cores."""
    values: dict[str, object] = {"samples_per_core_s": 1.0,
        "startup": ProbeSpec(period_seconds=0.2, timeout_seconds=1.0, failure_threshold=100),
        "readiness": FAST, "liveness": FAST, "weight": WeightConfig(ramp_s=0.5), "status_poll_s": 0.1,
        "drain_wait_s": 0.5, "in_flight_timeout_s": 5.0, **kw}
    return AgentConfig(service="ctr", target=target, zk=zk, instance_id=instance_id, address="127.0.0.1",
                       status_url=status_url, http_host="127.0.0.1", http_port=0, **values)  # type: ignore[arg-type]


def wait_record(zk: KazooClient, path: str, predicate: Callable[[InstanceRecord | None], bool],
                timeout: float = 15.0) -> InstanceRecord | None:
    """Wait on a data watch until ``predicate(record or None)`` holds; returns that record."""
    done = threading.Event()
    box: list[InstanceRecord | None] = []

    def watch(data: bytes | None, stat: object) -> bool:
        if done.is_set():
            return False
        rec = decode_instance(data) if data else None
        if predicate(rec):
            box.append(rec)
            done.set()
            return False
        return True

    zk.DataWatch(path, watch)
    if not done.wait(timeout):
        data = zk.exists(path) and zk.get(path)[0]
        raise AssertionError(f"{path}: condition not met within {timeout}s; now {data!r}")
    return box[0]
