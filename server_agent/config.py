"""The agent's configuration: frozen, keyword-only, validated on construction.

:class:`AgentConfig` is the process's (what to probe, where to publish, how to
shut down; the CLI builds it from flags and ``WEI_*`` variables, see
:mod:`server_agent.cli`); it holds the cores' own parts: :class:`ProbeSpec`,
:class:`PluginConfig`, :class:`CapacityConfig`, :class:`CalibrationConfig`,
:class:`WeightConfig` (in :mod:`server_agent.weight_config`, re-exported here).
Every default is argued where it is declared.
Durations are seconds (floats); the probe fields keep Kubernetes' names so a
pod spec maps onto them one to one.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from registry.publisher import PublisherConfig
from registry.records import Protocol, check_name
from registry.zk import ZkSettings

from ._checks import _integer, _number
from .errors import ConfigError
from .estimator import EstimatorConfig
from .k8s import own_ip
from .weight_config import WeightConfig

__all__ = ["AgentConfig", "CalibrationConfig", "CapacityConfig", "DEFAULT_GPU_COMMAND", "PluginConfig", "ProbeSpec",
           "WeightConfig", "default_instance_id", "split_target"]


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    """One probe's timing, with Kubernetes' field names and defaults (0, 10, 1, 1, 3).

    Kubernetes requires ``period_seconds`` and ``timeout_seconds`` >= 1; the agent
    accepts any positive value (it probes over loopback and tests run on a fake
    clock). Whether ``success_threshold`` may exceed 1 depends on the probe's
    kind (only readiness may): the engine checks that, because the spec does not
    know its kind.
    """

    initial_delay_seconds: float = 0.0
    period_seconds: float = 10.0
    timeout_seconds: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    def __post_init__(self) -> None:
        _number("initial_delay_seconds", self.initial_delay_seconds)
        _number("period_seconds", self.period_seconds, strict=True)
        _number("timeout_seconds", self.timeout_seconds, strict=True)
        _integer("success_threshold", self.success_threshold, minimum=1)
        _integer("failure_threshold", self.failure_threshold, minimum=1)


@dataclass(frozen=True, kw_only=True)
class PluginConfig:
    """Business health plugins (see :mod:`server_agent.plugins`).

    ``timeout_s``: 5 s, longer than a probe's 1 s default because a plugin runs a
    real prediction on a golden sample, which may hit a cold model or a full
    batch queue; it is still short enough that a hung plugin is reported within
    one readiness period. ``required``: an empty or missing directory is a
    failure, because a configured ``--plugin-dir`` with nothing in it means the
    initContainer did not do its job. ``params`` reach every plugin (Python:
    ``ctx.params``; executables: ``WEI_PLUGIN_<KEY>`` environment variables).
    """

    plugin_dir: Path
    timeout_s: float = 5.0
    required: bool = True
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plugin_dir", Path(self.plugin_dir))
        _number("timeout_s", self.timeout_s, strict=True)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(self.params).items()):
            raise ConfigError("params", "a mapping of strings to strings", self.params)
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


DEFAULT_GPU_COMMAND: tuple[str, ...] = ("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")


@dataclass(frozen=True, kw_only=True)
class CapacityConfig:
    """Where capacity comes from (see :mod:`server_agent.capacity`).

    ``cgroup_root`` is where the cgroup filesystem is mounted and
    ``proc_self_cgroup`` says which cgroup we are in (tests point both at
    sample files). ``gpu_command`` prints one GPU name per line; ``gpu_timeout_s``
    bounds it (nvidia-smi can take seconds when the driver is busy
    initialising). ``gpu_core_equivalents``: how many CPU cores one GPU counts
    for when capacity is not calibrated; 16 is our measured ratio for a T4
    against a 16-core pod on the CTR Wide&Deep model, a guess elsewhere -- which
    is why calibration exists. ``env_prefix`` names the downward-API variables.
    """

    cgroup_root: Path = Path("/sys/fs/cgroup")
    proc_self_cgroup: Path = Path("/proc/self/cgroup")
    gpu_command: tuple[str, ...] = DEFAULT_GPU_COMMAND
    gpu_timeout_s: float = 10.0
    gpu_core_equivalents: float = 16.0
    env_prefix: str = "WEI_"

    def __post_init__(self) -> None:
        object.__setattr__(self, "cgroup_root", Path(self.cgroup_root))
        object.__setattr__(self, "proc_self_cgroup", Path(self.proc_self_cgroup))
        if not self.gpu_command or not all(isinstance(a, str) and a for a in self.gpu_command):
            raise ConfigError("gpu_command", "a non-empty sequence of non-empty strings", self.gpu_command)
        object.__setattr__(self, "gpu_command", tuple(self.gpu_command))
        _number("gpu_timeout_s", self.gpu_timeout_s, strict=True)
        _number("gpu_core_equivalents", self.gpu_core_equivalents)


@dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    """Start-up calibration over batch sizes (see :func:`server_agent.capacity.calibrate`).

    Powers of two up to 512 cover the batcher's usual limits; ``warmup`` = 1
    call per size absorbs one-off graph tracing and allocation; ``repeats`` = 3
    and the median make one noisy call harmless while keeping a full run around
    20 calls. ``max_latency_s``: a batch size whose median call is slower than
    this is not usable capacity (the clients' deadline would expire), so it is
    skipped; None keeps every size.
    """

    batch_sizes: tuple[int, ...] = (1, 8, 32, 128, 512)
    warmup: int = 1
    repeats: int = 3
    max_latency_s: float | None = None

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ConfigError("batch_sizes", "at least one batch size", self.batch_sizes)
        for b in self.batch_sizes:
            _integer("batch_sizes[]", b, minimum=1)
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        _integer("warmup", self.warmup, minimum=0)
        _integer("repeats", self.repeats, minimum=1)
        if self.max_latency_s is not None:
            _number("max_latency_s", self.max_latency_s, strict=True)


def split_target(target: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port); raises ConfigError."""
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError("target", "HOST:PORT of the model server's gRPC endpoint", target)
    return host, int(port)


def default_instance_id(port: int) -> str:
    """``{host name}-{advertised port}``: unique per endpoint on a host, so two agents on one
    machine never share an id (in Kubernetes the CLI passes the pod name instead)."""
    return f"{socket.gethostname().split('.')[0] or 'instance'}-{port}"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything the agent shell needs; only ``service`` and ``target`` have no default.

    Probes (Kubernetes' field names; our defaults, argued):

    - ``startup``: gRPC health every 1 s, up to 600 failures (10 min): a large
      TensorFlow model takes minutes to load and warm; the agent restarts
      nothing, so a long budget only delays registration, never kills a pod.
    - ``readiness``: gRPC health and the business plugins every 2 s, 5 s
      timeout (a plugin runs a real prediction), 3 failures: a broken pod is
      drained within ~6 s, while one slow plugin call is not enough.
      Kubernetes' own default (10 s x 3) would leave it in rotation for 30 s.
    - ``liveness``: the server's ``/healthz`` (else a TCP connect) every 5 s,
      3 failures: reported upwards only (the kubelet restarts containers).

    Shutdown: ``drain_wait_s`` (5 s) is how long a drained node stays before
    deletion: a ZooKeeper watch reaches clients in milliseconds, but a client
    reconnecting to another ensemble member, a follower a little behind the
    leader or a GC pause can each add a second or two; 5 s covers them with
    margin and is small against a 45 s grace period. ``in_flight_timeout_s``
    (20 s): then requests still running on the server (from ``/status``) get
    that long to finish (a ranking call takes well under a second; 20 s
    covers a queue that was full). ``status_poll_s`` (5 s): the weight
    controller's pace; at most one ``/status`` and one ``/metrics`` read each.

    Endpoints: health, ``/metrics`` and ``/status`` on ``http_host:http_port``
    (0.0.0.0: the kubelet and Prometheus reach them); ``/drain`` ends the
    pod's registration, so it is served on ``127.0.0.1:control_port`` only
    (the preStop hook runs inside the pod), unless ``control_token`` is set:
    then it needs that bearer token everywhere (see
    :class:`server_agent.http.AgentHttp`). ``control_port`` None: ``http_port``
    + 1 (8511 in a pod), or any free port when that is taken (several agents
    on one host) or ``http_port`` is 0.

    Capacity: the weight is measured samples per second (see
    :mod:`server_agent.estimator`). Until the server has done some work it is
    the prior: the calibrated samples/s (``wei-agent run --calibrate``), else
    declared cores x ``samples_per_core_s`` (1,000: a guess that only orders
    pods for their first seconds of traffic; evidence outweighs it within one
    second of model time). ``calibration`` (None: off): before it first
    registers, the agent times batches of synthetic rows on ``calibrate_model``
    (None: the first model the server lists) and starts from the samples/s it
    measured (:func:`server_agent.capacity.calibrate`).

    Protocol: ``protocol`` (``Protocol.WEISERVING``) is what the model
    server's port speaks, and what the record tells clients. wei-serve is read
    through ``status_url`` (its ``/status`` and ``/metrics``). ``Protocol.OIP``
    fronts any Open Inference Protocol server (see :mod:`server_agent.oip_io`):
    probes over OIP gRPC, ``models`` (names; empty: the server's repository
    index lists them) and ``metrics_url`` (the server's Prometheus endpoint,
    None: capacity unknown). ``status_url`` is wei-serve's and is None under
    OIP; ``models`` and ``metrics_url`` are OIP's and refused otherwise.
    """

    service: str
    target: str
    zk: ZkSettings = field(default_factory=ZkSettings)
    instance_id: str = ""  # "": default_instance_id(port), the host name and the advertised port
    address: str | None = None  # advertised; None: the target's host, or this host's IP for a wildcard
    port: int | None = None  # advertised; None: the target's port
    zone: str = ""
    node: str = ""
    labels: Any = field(default_factory=dict)
    status_url: str | None = "http://127.0.0.1:8502"
    plugins: PluginConfig | None = None
    http_host: str = "0.0.0.0"
    http_port: int = 8510
    control_port: int | None = None
    control_token: str | None = field(default=None, repr=False)
    drain_endpoint: bool = True
    startup: ProbeSpec = field(default_factory=lambda: ProbeSpec(period_seconds=1.0, failure_threshold=600))
    readiness: ProbeSpec = field(default_factory=lambda: ProbeSpec(period_seconds=2.0, timeout_seconds=5.0))
    liveness: ProbeSpec = field(default_factory=lambda: ProbeSpec(period_seconds=5.0))
    weight: WeightConfig = field(default_factory=WeightConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    samples_per_core_s: float = 1000.0
    calibration: CalibrationConfig | None = None
    calibrate_model: str | None = None
    status_poll_s: float = 5.0
    drain_wait_s: float = 5.0
    in_flight_timeout_s: float = 20.0
    publisher: PublisherConfig = field(default_factory=PublisherConfig)
    protocol: Protocol = Protocol.WEISERVING
    models: tuple[str, ...] = ()
    metrics_url: str | None = None

    def __post_init__(self) -> None:
        self._check_protocol()
        host, port = split_target(self.target)
        if self.address is None:
            advertised = host if host not in ("0.0.0.0", "::", "") else own_ip()
            object.__setattr__(self, "address", advertised)
        if self.port is None:
            object.__setattr__(self, "port", port)
        if not self.instance_id:
            object.__setattr__(self, "instance_id", default_instance_id(self.port))  # type: ignore[arg-type]
        try:
            check_name("service", self.service)
            check_name("instance_id", self.instance_id)
        except ValueError as e:
            raise ConfigError("service/instance_id", "1-128 of [A-Za-z0-9._-]", str(e)) from None
        if self.status_url is not None:
            u = urlsplit(self.status_url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ConfigError("status_url", "http://HOST:PORT of the server's status endpoint", self.status_url)
            object.__setattr__(self, "status_url", self.status_url.rstrip("/"))
        for name in ("http_port", "control_port"):
            p = getattr(self, name)
            if (p is not None or name == "http_port") and (isinstance(p, bool) or not isinstance(p, int)
                                                           or not 0 <= p <= 65535):
                raise ConfigError(name, "a port in 0..65535 (0 picks a free one)", p)
        if self.control_token is not None and not (isinstance(self.control_token, str) and self.control_token):
            raise ConfigError("control_token", "a non-empty string or None", "<hidden>")
        _number("status_poll_s", self.status_poll_s, strict=True)
        _number("samples_per_core_s", self.samples_per_core_s, strict=True)
        _number("drain_wait_s", self.drain_wait_s)
        _number("in_flight_timeout_s", self.in_flight_timeout_s)
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def _check_protocol(self) -> None:
        try:
            object.__setattr__(self, "protocol", Protocol(self.protocol))
        except ValueError:
            raise ConfigError("protocol", f"one of {', '.join(p.value for p in Protocol)}", self.protocol) from None
        if isinstance(self.models, str):
            raise ConfigError("models", "a sequence of model names", self.models)
        object.__setattr__(self, "models", tuple(dict.fromkeys(self.models)))
        for name in self.models:
            try:
                check_name("model", name)
            except ValueError:
                raise ConfigError("models[]", "a model name, 1-128 of [A-Za-z0-9._-]", name) from None
        if self.protocol is Protocol.OIP:
            object.__setattr__(self, "status_url", None)  # wei-serve's status document: OIP servers have none
            if self.metrics_url is not None:
                u = urlsplit(self.metrics_url)
                if u.scheme not in ("http", "https") or not u.hostname:
                    raise ConfigError("metrics_url", "http://HOST:PORT/PATH of the server's Prometheus metrics",
                                      self.metrics_url)
            return
        if self.models:
            raise ConfigError("models", "empty with protocol weiserving (wei-serve's /status lists its models)",
                              list(self.models))
        if self.metrics_url is not None:
            raise ConfigError("metrics_url", "None with protocol weiserving (read from status_url)", self.metrics_url)

    @property
    def target_host(self) -> str:
        return split_target(self.target)[0]

    @property
    def target_port(self) -> int:
        return split_target(self.target)[1]

    @property
    def shutdown_budget_s(self) -> float:
        """The longest the shutdown sequence takes: what terminationGracePeriodSeconds must cover."""
        return self.drain_wait_s + self.in_flight_timeout_s + 10.0  # 10 s: the deregistration write

