"""Real MLServer pods for the tests: ``mlserver start`` from .venv-mlserver on free loopback ports.

A pod serves the client tests' ``Ident`` model (``y = 2x + 1``, ``who``, ``ver``; see
model_repo/ident_runtime.py) under the names and versions asked for, in one process with no inference
workers (``parallel_workers: 0``: no worker processes to spawn, so it starts faster and a SIGKILL of
:attr:`MLServerPod.pid` takes the whole pod down). MLServer never runs in our venv and this module
never imports it: it only spawns the binary and talks OIP gRPC with our generated messages.

Lifecycle: :meth:`MLServerPod.start` writes a model repository under the pod's own directory, starts
the process and returns once OIP ServerReady is true and every model version reports ModelReady
(MLServer answers ServerReady before its models are registered, so ServerReady alone can be true too
early). :meth:`~MLServerPod.kill` (SIGKILL) and :meth:`~MLServerPod.stop` (SIGTERM, then SIGKILL
after ``grace_s``) are idempotent. Ports come from binding port 0 and closing: another process can
take one before MLServer binds it, so a start that dies on "address already in use" retries with
fresh ports.

:class:`OipAgent` is the sidecar a pod gets in production: the ``wei-agent run --protocol oip``
command line as a process, probing the pod over OIP gRPC and publishing its record (protocol
``oip``) to ZooKeeper. :func:`client_conftest` loads tests/client/conftest.py, whose ``MODEL`` and
``Cluster`` are the wei-serve side of a mixed fleet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc

from protocol.oip import METHODS, pb
from registry.zk import ZkSettings

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MLSERVER = REPO / ".venv-mlserver" / "bin" / "mlserver"
TEMPLATE = HERE / "model_repo"
RUNTIME = "ident_runtime.py"

__all__ = ["AGENT_FLAGS", "MLSERVER", "MLServerPod", "MLServerStartError", "OipAgent", "PodSpec", "available",
           "client_conftest", "free_ports"]


# Polled before the server listens, a channel backs off (1 s, then 1.6x) and would see the port open
# seconds late; a pod is up in ~1 s.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                  ("grpc.max_reconnect_backoff_ms", 200)]


class MLServerStartError(RuntimeError):
    """The pod died or was not ready by its deadline; the message ends with its log's tail."""


def available() -> bool:
    return MLSERVER.is_file() and os.access(MLSERVER, os.X_OK)


@dataclass(frozen=True, kw_only=True)
class PodSpec:
    """What one pod serves, as tests/client/conftest.py's ``Cluster.add`` takes it.

    ``batching``: MLServer's adaptive batching (``max_batch_size`` 32, ``max_batch_time`` 1 ms). Off by
    default, for two measured reasons: a lone call takes 2.3 ms instead of 0.85 ms (it waits for
    company), and MLServer merges whatever arrives together without checking it: with a wrong-dtype or
    wrong-shape call in the batch, good calls beside it fail (INVALID_ARGUMENT or INTERNAL) and a
    FP64 call batched behind FP32 ones is served as FP32.
    """

    who: int = 0
    models: tuple[str, ...] = ("ctr", "ctr_b")
    versions: tuple[int, ...] = (1,)
    delay_s: float = 0.0
    batching: bool = False
    ready_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.models or not self.versions:
            raise ValueError(f"a pod serves at least one model and one version, got {self!r}")
        if any(v < 0 for v in self.versions) or self.delay_s < 0 or self.ready_timeout_s <= 0:
            raise ValueError(f"versions and delay_s must be >= 0, ready_timeout_s > 0, got {self!r}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (all bound at once, then closed)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_repo(root: Path, spec: PodSpec) -> Path:
    """settings.json and the runtime from model_repo/; one model-settings.json per model and version."""
    repo = root / "models"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    shutil.copy(TEMPLATE / "settings.json", repo / "settings.json")
    shutil.copy(TEMPLATE / RUNTIME, repo / RUNTIME)
    template = json.loads((TEMPLATE / "ctr" / "model-settings.json").read_text())
    for model in spec.models:
        for version in spec.versions:
            settings = {**template, "name": model,
                        # OIP ModelMetadata.versions comes from here (MLServer reads it as dependency versions)
                        "versions": [str(v) for v in spec.versions],
                        "parameters": {"version": str(version),
                                       "extra": {"who": spec.who, "delay_s": spec.delay_s}}}
            if spec.batching:
                settings.update(max_batch_size=32, max_batch_time=0.001)
            path = repo / model / str(version)
            path.mkdir(parents=True)
            (path / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return repo


def _call(channel: grpc.Channel, method: str, request, response_type, timeout: float):
    body = channel.unary_unary(METHODS[method])(request.SerializeToString(), timeout=timeout)
    return response_type.FromString(body)


class _Child:
    """A child process of the tests (``_proc``) whose output goes to ``log_path``."""

    _proc: subprocess.Popen | None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass(eq=False)
class MLServerPod(_Child):
    root: Path
    spec: PodSpec = field(default_factory=PodSpec)
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    startup_s: float | None = None      # spawn -> ready, of the last start
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _started_at: float = field(default=0.0, repr=False)
    _log_offset: int = field(default=0, repr=False)

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the pod was never started"
        return self._proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "mlserver.log"

    @property
    def returncode(self) -> int | None:
        """None while running (or never started); else the exit status, -9 after :meth:`kill`."""
        return None if self._proc is None else self._proc.poll()

    def start(self, attempts: int = 3) -> MLServerPod:
        if not available():
            raise MLServerStartError(f"{MLSERVER} is missing: `make mlserver-venv` (or `make test`) installs it")
        repo = write_repo(self.root, self.spec)
        attempt = 1
        while True:
            self._spawn(repo)
            try:
                self._wait_ready(time.monotonic() + self.spec.ready_timeout_s)
                return self
            except MLServerStartError:
                self.kill()
                if attempt == attempts or not self._bind_failed():
                    raise
            attempt += 1

    def _spawn(self, repo: Path) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLSERVER_", "PYTHON", "PROMETHEUS_", "VIRTUAL_ENV"))}
        env.update(MLSERVER_HTTP_PORT=str(self.http_port), MLSERVER_GRPC_PORT=str(self.grpc_port),
                   MLSERVER_METRICS_PORT=str(self.metrics_port))
        self._started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            # cwd: MLServer reads a .env and writes .envs/.metrics there; never the checkout
            self._proc = subprocess.Popen([str(MLSERVER), "start", str(repo)], cwd=self.root, env=env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    def _bind_failed(self) -> bool:
        """This attempt lost a port race. gRPC's bind error makes MLServer exit, uvicorn's does not (the
        process lives on, never ready), so the log is read, not the exit status."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return b"address already in use" in log.read().lower()

    def _wait_ready(self, deadline: float) -> None:
        pending = [(m, str(v)) for m in self.spec.models for v in self.spec.versions]
        with grpc.insecure_channel(self.address, options=FAST_RECONNECT) as channel:
            while True:
                if not self.running:
                    raise MLServerStartError(f"{self!r} exited with {self._proc.returncode} before it was ready:\n"
                                             f"{self.log_tail()}")
                if self._bind_failed():
                    raise MLServerStartError(f"{self!r}: a port was taken before MLServer bound it:\n"
                                             f"{self.log_tail()}")
                try:
                    if _call(channel, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse, 1).ready:
                        pending = [(m, v) for m, v in pending if not _call(
                            channel, "ModelReady", pb.ModelReadyRequest(name=m, version=v),
                            pb.ModelReadyResponse, 1).ready]
                        if not pending:
                            self.startup_s = time.monotonic() - self._started_at
                            return
                except grpc.RpcError:
                    pass                    # not listening yet, or a model not registered yet
                if time.monotonic() > deadline:
                    raise MLServerStartError(f"{self!r} not ready after {self.spec.ready_timeout_s} s "
                                             f"(waiting on {pending}):\n{self.log_tail()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a pod dies: no drain, in-flight calls fail."""
        self._signal(signal.SIGKILL, 0)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM (MLServer stops its servers and unloads its models), SIGKILL after ``grace_s``."""
        self._signal(signal.SIGTERM, grace_s)

    def _signal(self, sig: signal.Signals, grace_s: float) -> None:
        if not self.running:
            return
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)      # its own session: the group is this pod and nothing else
            self._proc.wait(timeout=grace_s or None)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        except ProcessLookupError:
            self._proc.wait()

    def __repr__(self) -> str:
        if self._proc is None:
            state = "never started"
        else:
            state = f"pid {self._proc.pid} " + ("running" if self.running else f"exited {self._proc.returncode}")
        return (f"MLServerPod(who={self.spec.who}, models={list(self.spec.models)}, grpc={self.grpc_port}, "
                f"http={self.http_port}, metrics={self.metrics_port}, {state})")


# A test pod's agent: probes every 0.2 s, so a dead pod is drained after two failed readiness probes;
# no slow start (the record turns SERVING at its full weight, cores x 1,000, at once); a short drain.
# A live pod's drain ends as soon as MLServer's count is 0 (refused calls included); a SIGKILLed
# pod's as soon as its port refuses connections (the default --in-flight-timeout-s is never reached).
AGENT_FLAGS: Mapping[str, str] = {
    "--cpu-cores": "2", "--ramp-s": "0", "--startup-period-s": "0.2", "--readiness-period-s": "0.2",
    "--readiness-failure-threshold": "2", "--readiness-timeout-s": "1", "--liveness-period-s": "1",
    "--status-poll-s": "1", "--drain-wait-s": "0.5", "--log-level": "INFO"}


@dataclass(eq=False)
class OipAgent(_Child):
    """``wei-agent run --protocol oip`` in front of ``pod``, as a process of our venv (log:
    ``agent-<id>.log`` in the pod's directory). ``flags`` replace :data:`AGENT_FLAGS` entries.
    :meth:`start` returns once it runs, not once it registered: wait on the registry for that.
    :meth:`stop` (SIGTERM: drain, deregister, exit; SIGKILL after ``grace_s``) is idempotent;
    :meth:`terminate` only sends the SIGTERM."""

    pod: MLServerPod
    zk: ZkSettings
    instance_id: str
    flags: Mapping[str, str] = field(default_factory=dict)
    service: str = "ctr"
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _terminated: bool = field(default=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.pod.root / f"agent-{self.instance_id}.log"

    def argv(self) -> list[str]:
        models = [arg for model in self.pod.spec.models for arg in ("--model", model)]
        flags = [arg for item in {**AGENT_FLAGS, **self.flags}.items() for arg in item]
        return [sys.executable, "-m", "server_agent.cli", "run", "--protocol", "oip", "--target", self.pod.address,
                *models, "--metrics-url", f"http://127.0.0.1:{self.pod.metrics_port}/metrics",
                "--zk", self.zk.hosts, "--zk-root", self.zk.root, "--session-timeout-s", str(self.zk.session_timeout_s),
                "--service", self.service, "--instance-id", self.instance_id, "--address", "127.0.0.1",
                "--http-host", "127.0.0.1", "--http-port", "0", *flags]

    def start(self) -> OipAgent:
        assert self._proc is None, "an agent starts once"
        env = {**os.environ, "PYTHONPATH": str(REPO), "GRPC_VERBOSITY": "ERROR"}
        for name in [k for k in env if k.startswith("WEI_")]:   # every flag has a WEI_* default: ours only
            del env[name]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.argv(), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        return self

    def terminate(self) -> None:
        """SIGTERM without waiting (several agents drain at once); once: a second one forces the agent."""
        if self.running and not self._terminated:
            assert self._proc is not None
            self._terminated = True
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 15.0) -> None:
        if not self.running:
            return
        assert self._proc is not None
        self.terminate()
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __repr__(self) -> str:
        state = "never started" if self._proc is None else (
            f"pid {self._proc.pid} " + ("running" if self.running else f"exited {self._proc.returncode}"))
        return f"OipAgent({self.instance_id} -> {self.pod.address}, {state})"


def client_conftest() -> ModuleType:
    """tests/client/conftest.py as a module of its own (its ``MODEL`` and ``Cluster``): fixtures of
    another folder are not visible here, and tests/ has no packages."""
    spec = importlib.util.spec_from_file_location("client_conftest", REPO / "tests" / "client" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
