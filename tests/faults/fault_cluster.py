"""The fault suite's cluster: a real 3-node ZooKeeper ensemble, pods made of a real ``wei-serve``
process and a real ``wei-agent`` process each, and what the cases need to hurt them and watch
them heal. A unique module name: tests/ has no packages.

The model is an emulated accelerator (:mod:`examples.emulated.device`: a batch of n rows waits
``n x UNIT_S / speed``, the GIL released) that refuses a poisoned input as the input's fault: a
row holding :data:`POISON` raises ``ValueError``, which the model declares in ``input_errors``,
so the server answers INVALID_ARGUMENT to that caller alone (the batch is re-run without it).

Every wait polls a condition every 50 ms up to a generous deadline (:func:`wait_until`) and
returns how long it took: the recovery times the suite reports are these waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from protocol import wire
from registry.records import InstanceRecord, State, decode_instance
from registry.testing import ZooKeeperEnsemble, free_ports
from registry.testing.process import die_with_parent_prefix
from registry.zk import RegistryPaths

REPO = Path(__file__).resolve().parents[2]
SERVICE = "ctr"
MODEL = "m"
ROOT = "/weiserving"
FEATURES = 4
POISON = -1.0
UNIT_S = 0.0002           # 5,000 rows/s per pod at speed 1
AGENT_SESSION_S = 4.0     # an agent that stops answering loses its node within ~4 s

MODEL_PY = f'''
from pathlib import Path

import numpy as np

from examples.emulated.device import Device
from serving.backends.signature import Signature, spec


class Poisonable:
    """score = sum(x); a row holding {POISON!r} is refused as the input's fault."""

    signature = Signature(inputs={{"x": spec("<f4", [None, {FEATURES}])}}, outputs={{"score": spec("<f4", [None])}})
    input_errors = (ValueError,)

    def __init__(self):
        self.device = Device(Path(__file__).with_name("speed"), unit_s={UNIT_S!r})

    def predict(self, inputs):
        x = inputs["x"]
        if (x == {POISON!r}).any():
            raise ValueError("poisoned row: the value {POISON!r} is not a feature")
        self.device.run(len(x))
        return {{"score": x.sum(axis=1, dtype=np.float32)}}


def load(path):
    return Poisonable()
'''

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float = 60.0) -> float:
    """Poll ``condition`` every 50 ms until it is truthy; the seconds it took. Fails saying ``what``."""
    t0 = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - t0
        except (KazooException, KazooTimeoutError, OSError):
            pass  # ZooKeeper or a pod not answering yet: the condition is not met
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def write_model(models: Path, speed: float = 1.0) -> None:
    version = models / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(textwrap.dedent(MODEL_PY))
    (version / "speed").write_text(f"{speed!r}\n")


class Pod:
    """One serving pod: ``wei-serve`` on fixed ports (a restart keeps them, as a restarted container
    keeps its pod's IP) and ``wei-agent`` (through :mod:`fault_agent`, which can tell its session)."""

    def __init__(self, name: str, home: Path, zk_hosts: str) -> None:
        self.name = name
        self.home = home
        self.zk_hosts = zk_hosts
        self.port, self.status_port = free_ports(2)
        self.server: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        write_model(home / "models")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Pod:
        self.start_server()
        self.start_agent()
        return self

    def start_server(self) -> None:
        self.server = self._spawn("server", [
            "-m", "serving.cli", "--models", str(self.home / "models"), "--host", "127.0.0.1",
            "--port", str(self.port), "--status-port", str(self.status_port), "--num-batch-threads", "1",
            "--max-batch-size", "1024", "--batch-timeout-micros", "500", "--grace-s", "1",
            "--log-level", "warning"])

    def start_agent(self) -> None:
        self.agent = self._spawn("agent", [
            str(Path(__file__).with_name("fault_agent.py")), "run", "--zk", self.zk_hosts, "--zk-root", ROOT,
            "--session-timeout-s", str(AGENT_SESSION_S), "--service", SERVICE, "--target", self.endpoint,
            "--status-url", f"http://127.0.0.1:{self.status_port}", "--http-host", "127.0.0.1",
            "--http-port", "0", "--instance-id", self.name, "--cpu-cores", "2", "--ramp-s", "1",
            "--latency-target-ms", "1000", "--startup-period-s", "0.2", "--readiness-period-s", "0.25",
            "--status-poll-s", "0.5", "--drain-wait-s", "0.2", "--log-level", "warning"],
            env={"WEI_FAULT_SESSION_FILE": str(self.session_file)})

    @property
    def session_file(self) -> Path:
        return self.home / "agent-session.json"

    def _spawn(self, what: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with (self.home / f"{what}.log").open("ab") as log:
            # setpriv, not a preexec_fn: Python code between fork and exec in this threaded process
            # (gRPC, kazoo) crashed a fresh clone's run with SIGSEGV inside ctypes
            return subprocess.Popen(
                [*die_with_parent_prefix(), sys.executable, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONPATH": str(REPO), **(env or {})})

    def signal(self, sig: signal.Signals, *, server: bool = True, agent: bool = True) -> None:
        for proc, wanted in ((self.server, server), (self.agent, agent)):
            if wanted and proc is not None and proc.poll() is None:
                proc.send_signal(sig)
        if sig == signal.SIGKILL:
            for proc, wanted in ((self.server, server), (self.agent, agent)):
                if wanted and proc is not None:
                    proc.wait(10)

    def requests(self) -> int:
        """Calls the server has answered (its status document), -1 while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=2) as r:
                return int(json.load(r)["models"][MODEL]["work"]["requests"] or 0)
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def answers(self) -> bool:
        """The server answers a predict call of its own (a fresh channel, not any client's)."""
        body = wire.encode_request(wire.PredictRequest(model=MODEL, inputs={"x": np.ones((1, FEATURES), np.float32)}))
        with grpc.insecure_channel(self.endpoint) as channel:
            try:
                channel.unary_unary(wire.PREDICT_METHOD).with_call(body, timeout=2.0)
            except grpc.RpcError:
                return False
        return True

    def agent_sessions(self, timeout: float = 10.0) -> list[tuple[int, bytes]]:
        """The agent's live ZooKeeper sessions (id, password), asked for with SIGUSR1 (see fault_agent)."""
        self.session_file.unlink(missing_ok=True)
        assert self.agent is not None
        self.agent.send_signal(signal.SIGUSR1)
        wait_until(self.session_file.exists, f"{self.name}'s agent to write its session", timeout)
        return [(s["id"], bytes.fromhex(s["password"])) for s in json.loads(self.session_file.read_text())]

    def stop(self) -> None:
        for proc in (self.agent, self.server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in (self.agent, self.server):
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


class Cluster:
    """The ensemble, the pods, and an admin ZooKeeper session that reads the registry as it is."""

    def __init__(self, home: Path, pods: int = 3) -> None:
        self.home = home
        self.ensemble = ZooKeeperEnsemble(3).start()
        self.hosts = self.ensemble.hosts
        self.paths = RegistryPaths(ROOT)
        self.admin = self._connect()
        self.pods = [Pod(f"pod-{i}", self._home(f"pod-{i}"), self.hosts) for i in range(pods)]
        for pod in self.pods:
            pod.start()

    def _connect(self) -> KazooClient:
        admin = KazooClient(self.hosts, timeout=10.0)
        admin.start(timeout=30)
        return admin

    def reconnect_admin(self) -> None:
        """A new admin session: after ZooKeeper lost its data it refuses the old one for good."""
        old, self.admin = self.admin, self._connect()
        with contextlib.suppress(Exception):
            old.stop()
            old.close()

    def _home(self, name: str) -> Path:
        path = self.home / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def records(self) -> dict[str, tuple[InstanceRecord, int]] | None:
        """Every instance record now, with the session that owns it; None while ZooKeeper cannot answer."""
        service = self.paths.service(SERVICE)
        try:
            children = self.admin.get_children_async(service).get(timeout=5)
        except NoNodeError:
            return {}
        except (KazooException, KazooTimeoutError):
            return None
        out = {}
        for child in children:
            try:
                data, stat = self.admin.get_async(f"{service}/{child}").get(timeout=5)
            except NoNodeError:
                continue
            except (KazooException, KazooTimeoutError):
                return None
            with contextlib.suppress(Exception):  # a half-written or foreign node is not ours to judge here
                out[child] = (decode_instance(data), stat.ephemeralOwner)
        return out

    def serving(self) -> bool:
        """Every pod registered, enabled and SERVING."""
        recs = self.records()
        return recs is not None and all(
            p.name in recs and recs[p.name][0].state is State.SERVING and recs[p.name][0].routable
            for p in self.pods)

    def in_sync(self, client) -> bool:
        """The client's membership is fresh: not stale, and record for record what ZooKeeper holds."""
        recs = self.records()
        snap = client.snapshot
        return (recs is not None and not snap.stale and snap.source == "zookeeper"
                and dict(snap.instances) == {k: rec for k, (rec, _) in recs.items()})

    def healthy(self, client, timeout: float = 90.0) -> float:
        """Wait for a whole cluster: every member up, every pod SERVING, the client in sync with it."""
        for m in self.ensemble.members:
            if not m.running:
                self.ensemble.restart(m)
        self.ensemble.wait_serving(timeout=timeout)
        return wait_until(lambda: self.serving() and self.in_sync(client) and len(client.snapshot.routable()) ==
                          len(self.pods), "every pod SERVING and the client in sync with ZooKeeper", timeout)

    def close(self) -> None:
        for pod in self.pods:
            pod.stop()
        with contextlib.suppress(Exception):
            self.admin.stop()
            self.admin.close()
        self.ensemble.stop()
