"""The agent process's configuration: frozen, keyword-only, validated, with argued defaults.

The cores keep their own configs (:mod:`server_agent.config`); this one says
what to probe, where to publish and how to shut down. The CLI builds it from
flags and ``WEI_*`` environment variables (see :mod:`server_agent.cli`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from registry.publisher import PublisherConfig
from registry.records import check_name
from registry.zk import ZkSettings

from .config import PluginConfig, ProbeSpec, WeightConfig, _number
from .errors import ConfigError

__all__ = ["AgentConfig", "split_target"]


def split_target(target: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port); raises ConfigError."""
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError("target", "HOST:PORT of the model server's gRPC endpoint", target)
    return host, int(port)


def _default_instance_id() -> str:
    return socket.gethostname().split(".")[0] or "instance"


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
    """

    service: str
    target: str
    zk: ZkSettings = field(default_factory=ZkSettings)
    instance_id: str = field(default_factory=_default_instance_id)
    address: str | None = None  # advertised; None: the target's host, or this host's IP for a wildcard
    port: int | None = None  # advertised; None: the target's port
    zone: str = ""
    node: str = ""
    labels: Any = field(default_factory=dict)
    status_url: str | None = "http://127.0.0.1:8502"
    plugins: PluginConfig | None = None
    http_host: str = "0.0.0.0"
    http_port: int = 8510
    drain_endpoint: bool = True
    startup: ProbeSpec = field(default_factory=lambda: ProbeSpec(period_seconds=1.0, failure_threshold=600))
    readiness: ProbeSpec = field(default_factory=lambda: ProbeSpec(period_seconds=2.0, timeout_seconds=5.0))
    liveness: ProbeSpec = field(default_factory=lambda: ProbeSpec(period_seconds=5.0))
    weight: WeightConfig = field(default_factory=WeightConfig)
    status_poll_s: float = 5.0
    drain_wait_s: float = 5.0
    in_flight_timeout_s: float = 20.0
    publisher: PublisherConfig = field(default_factory=PublisherConfig)

    def __post_init__(self) -> None:
        try:
            check_name("service", self.service)
            check_name("instance_id", self.instance_id)
        except ValueError as e:
            raise ConfigError("service/instance_id", "1-128 of [A-Za-z0-9._-]", str(e)) from None
        host, port = split_target(self.target)
        if self.address is None:
            advertised = host if host not in ("0.0.0.0", "::", "") else _own_ip()
            object.__setattr__(self, "address", advertised)
        if self.port is None:
            object.__setattr__(self, "port", port)
        if self.status_url is not None:
            u = urlsplit(self.status_url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ConfigError("status_url", "http://HOST:PORT of the server's status endpoint", self.status_url)
            object.__setattr__(self, "status_url", self.status_url.rstrip("/"))
        if isinstance(self.http_port, bool) or not isinstance(self.http_port, int) or not 0 <= self.http_port <= 65535:
            raise ConfigError("http_port", "a port in 0..65535 (0 picks a free one)", self.http_port)
        _number("status_poll_s", self.status_poll_s, strict=True)
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


def _own_ip() -> str:
    """This host's address as others see it (the pod IP inside a pod)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
