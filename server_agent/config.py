"""The agent's configuration: frozen, keyword-only, validated on construction.

:class:`AgentConfig` is the process's (what to probe, where to publish, how to
shut down; the CLI builds it from flags and ``WEI_*`` variables, see
:mod:`server_agent.cli`); it holds the cores' own parts: :class:`ProbeSpec`,
:class:`PluginConfig`, :class:`CapacityConfig`, :class:`CalibrationConfig`,
:class:`WeightConfig`. Every default is argued where it is declared.
Durations are seconds (floats); the probe fields keep Kubernetes' names so a
pod spec maps onto them one to one.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from registry.publisher import PublisherConfig
from registry.records import check_name
from registry.zk import ZkSettings

from .errors import ConfigError
from .estimator import EstimatorConfig
from .k8s import own_ip

__all__ = ["AgentConfig", "CalibrationConfig", "CapacityConfig", "DEFAULT_GPU_COMMAND", "PluginConfig", "ProbeSpec",
           "WeightConfig", "default_instance_id", "split_target"]


def _number(name: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A finite real >= minimum (> minimum when ``strict``); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, "a finite number", value)
    if value < minimum or (strict and value == minimum):
        raise ConfigError(name, f"a number {'>' if strict else '>='} {minimum:g}", value)
    return float(value)


def _integer(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"an integer >= {minimum}", value)
    return value


def _fraction(name: str, value: object, *, allow_zero: bool = True) -> float:
    v = _number(name, value, strict=not allow_zero)
    if v > 1.0:
        raise ConfigError(name, "a fraction in [0, 1]" if allow_zero else "a fraction in (0, 1]", value)
    return v


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


@dataclass(frozen=True, kw_only=True)
class WeightConfig:
    """The weight controller's knobs (see :mod:`server_agent.weight`).

    - ``latency_target_ms`` (100): the p99 a ranking call tolerates from one
      pod. ``latency_signal``: ``"p99"`` (default: tail latency is what ranking
      feels) or ``"ewma"``. The latency factor is an integral controller: it
      shrinks while latency is above the target, grows back while latency is
      below ``(1 - latency_band)`` of it, and holds inside that band.
      ``latency_band`` (0.3): must exceed the publish threshold times the
      latency's elasticity to weight (1.5-2.5 near 70% utilisation), else the
      weight hunts between two published values around the target.
      ``latency_gain_per_s`` (0.02): log-weight moved per second per unit of
      log(latency / target); with the ratio capped at 4x that sheds at most
      2.8%/s, so one 5 s status poll never moves the weight by more than the
      band holds, and halving a badly overloaded pod's weight takes ~25 s
      (clients' own in-flight and latency feedback covers the seconds before).
      ``latency_busy_gate`` (0.8): a pod whose batch threads are busier than
      this is slow because it is given more than it can do, which its measured
      capacity corrects within seconds; latency over the target then shrinks
      the weight less, down to not at all at 100 % busy (linear from the gate).
      Without the gate the two fight: from equal priors at 80 % load on a
      1:2:4 fleet, the slower pods' p99 exceeded the target while their
      capacity was being measured, the integrator cut them to the floor, and
      they needed ~100 s to climb back. A slow pod that is *not* busy (a
      stalled disk, a bad host) is a health problem and feels the full factor.
    - ``queue_growth_scale_rows_per_s`` (1000): a queue growing by this many
      rows per second halves health. A ranking call carries 1-2k rows, so this is
      about one request every 1-2 s accumulating: clear overload, not noise.
    - ``error_rate_ok`` (1%) / ``error_rate_bad`` (50%): health falls linearly
      between them; errors below 1% are clients' bad inputs, not the pod.
    - ``smoothing_tau_s`` (20): time constant of the EWMA over the queue and
      error factors: one noisy poll moves the weight by a few percent, a real
      trend within about a minute. (The latency integrator needs no EWMA: an
      integral is already a low-pass filter, and a lag in front of it would
      make it overshoot.)
    - ``floor_fraction`` (5%) / ``max_fraction`` (100%) of the capacity score:
      the floor keeps a slow pod in rotation so it can prove itself recovered;
      health never raises a pod above its capacity.
    - ``ramp_s`` (60): slow start after (re)registration, linear from the floor.
      Long enough to warm caches and JIT paths of a freshly loaded model and for
      every client to see the pod before it gets its full share; short enough
      that a rolling update of 100 pods does not take hours. This is the
      system's one slow start: clients add none to a WARMING record (the
      argument is in :class:`weiclient.balancer.SlowStart`), so a new pod's
      first share is ``floor_fraction`` of its weight.
    - ``publish_threshold`` (10% relative) and ``max_interval_s`` (60): write to
      ZooKeeper only on a real move, or at most once a minute for drift.
    """

    latency_target_ms: float = 100.0
    latency_signal: str = "p99"
    latency_band: float = 0.3
    latency_gain_per_s: float = 0.02
    latency_busy_gate: float = 0.8
    queue_growth_scale_rows_per_s: float = 1000.0
    error_rate_ok: float = 0.01
    error_rate_bad: float = 0.5
    smoothing_tau_s: float = 20.0
    floor_fraction: float = 0.05
    max_fraction: float = 1.0
    ramp_s: float = 60.0
    publish_threshold: float = 0.10
    max_interval_s: float = 60.0

    def __post_init__(self) -> None:
        _number("latency_target_ms", self.latency_target_ms, strict=True)
        if self.latency_signal not in ("p99", "ewma"):
            raise ConfigError("latency_signal", "'p99' or 'ewma'", self.latency_signal)
        _fraction("latency_band", self.latency_band)
        if self.latency_band >= 1:
            raise ConfigError("latency_band", "a fraction in [0, 1)", self.latency_band)
        _number("latency_gain_per_s", self.latency_gain_per_s, strict=True)
        _fraction("latency_busy_gate", self.latency_busy_gate)
        if self.latency_busy_gate >= 1:
            raise ConfigError("latency_busy_gate", "a fraction in [0, 1)", self.latency_busy_gate)
        _number("queue_growth_scale_rows_per_s", self.queue_growth_scale_rows_per_s, strict=True)
        _fraction("error_rate_ok", self.error_rate_ok)
        _fraction("error_rate_bad", self.error_rate_bad, allow_zero=False)
        if self.error_rate_bad <= self.error_rate_ok:
            raise ConfigError("error_rate_bad", f"> error_rate_ok ({self.error_rate_ok:g})", self.error_rate_bad)
        _number("smoothing_tau_s", self.smoothing_tau_s)
        _fraction("floor_fraction", self.floor_fraction, allow_zero=False)
        _number("max_fraction", self.max_fraction, strict=True)
        if self.max_fraction < self.floor_fraction:
            raise ConfigError("max_fraction", f">= floor_fraction ({self.floor_fraction:g})", self.max_fraction)
        _number("ramp_s", self.ramp_s)
        _number("publish_threshold", self.publish_threshold)
        _number("max_interval_s", self.max_interval_s, strict=True)


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

    def __post_init__(self) -> None:
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

