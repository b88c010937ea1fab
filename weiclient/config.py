"""WeiClient configuration: frozen keyword-only dataclasses whose defaults work.

    WeiClient("zk1:2181", "ctr", config=ClientConfig(timeout_s=0.2,
              retry=RetryConfig(max_attempts=2), hedging=HedgingConfig(enabled=True)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import FieldError
from registry.membership import Protection
from registry.zk import RegistryPaths, ZkSettings

from .balancer import RetryBudgetConfig, SubsetConfig, ZoneConfig
from .errors import InvalidArgument, InvalidBalancerConfig
from .throttle import ThrottleConfig

__all__ = ["ChannelConfig", "ClientConfig", "HedgingConfig", "OverloadConfig", "RetryConfig", "ScatterConfig",
           "SubsetConfig", "ThrottleConfig", "ZoneConfig", "registry_settings"]


def _positive(owner: str, **values: float) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise InvalidBalancerConfig(f"{owner}.{name}", "a finite number > 0", v)


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    """``max_attempts`` (3): the first try plus two retries, each on another
    instance; more rarely helps when two pods in a row failed, and costs the
    cluster. ``backoff_s`` (2 ms, doubling, capped at 50 ms, jittered): a retry
    goes elsewhere, so it need not wait for the failed pod; the short pause
    only breaks lock-step storms. The budget caps retries at 20 % of
    requests plus 10 per second (Finagle's RetryBudget)."""

    max_attempts: int = 3
    backoff_s: float = 0.002
    max_backoff_s: float = 0.05
    budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or not (
                1 <= self.max_attempts <= 10):
            raise InvalidBalancerConfig("retry.max_attempts", "an integer in 1..10", self.max_attempts)
        _positive("retry", backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s)


@dataclass(frozen=True, kw_only=True)
class HedgingConfig:
    """Off by default: a hedge doubles work on the slow tail. When on, a
    backup request goes to another instance once the first has taken longer
    than the ``percentile`` of recent latencies (at least ``min_delay_s``),
    within ``budget_ratio`` (5 %) of requests; the loser is cancelled."""

    enabled: bool = False
    percentile: float = 0.95
    min_delay_s: float = 0.002
    budget_ratio: float = 0.05
    window: int = 1024

    def __post_init__(self) -> None:
        if not 0.5 <= self.percentile < 1.0:
            raise InvalidBalancerConfig("hedging.percentile", "a quantile in [0.5, 1)", self.percentile)
        _positive("hedging", min_delay_s=self.min_delay_s, budget_ratio=self.budget_ratio)
        if self.window < 16:
            raise InvalidBalancerConfig("hedging.window", "an integer >= 16", self.window)


@dataclass(frozen=True, kw_only=True)
class ScatterConfig:
    """``auto_rows`` (4,096): above this many rows a call is split across
    instances without asking (a 1,000-2,000 candidate call normally is not:
    one pod's batcher handles it well; pass ``split=True`` to force it).
    ``min_shard_rows`` (256): smaller shards cost more in per-call overhead
    than they save. ``max_shards`` (8): bounds the fan-out of one call."""

    auto_rows: int = 4096
    min_shard_rows: int = 256
    max_shards: int = 8

    def __post_init__(self) -> None:
        for name in ("auto_rows", "min_shard_rows", "max_shards"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidBalancerConfig(f"scatter.{name}", "an integer >= 1", v)


@dataclass(frozen=True, kw_only=True)
class ChannelConfig:
    """``close_grace_s`` (30 s): a channel to an instance that left the
    membership stays open this long, so in-flight calls finish and a pod
    that comes straight back reuses it. Keepalive pings every 30 s keep idle
    channels warm through NATs and detect dead peers.

    ``max_message_bytes`` (64 MiB, the server's default too): a request
    larger than this is refused before it is sent
    (:class:`~weiclient.errors.RequestTooLarge`), never retried nor charged
    to a pod. ``max_metadata_bytes`` (64 KiB): how much trailing metadata
    (the status message among it) a server may send. gRPC's default (8 KiB,
    hard limit 16 KiB) turns a longer error text into "metadata size exceeds
    hard limit" and the real message is lost; our server keeps its messages
    to 4 KiB, another one (an older version, an OIP server) may not."""

    close_grace_s: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_metadata_bytes: int = 64 * 1024
    keepalive_s: float = 30.0

    def __post_init__(self) -> None:
        _positive("channel", close_grace_s=self.close_grace_s, keepalive_s=self.keepalive_s)
        for name in ("max_message_bytes", "max_metadata_bytes"):  # gRPC takes a C int
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < 2**31:
                raise InvalidBalancerConfig(f"channel.{name}", "an integer of bytes in 1..2**31-1", v)

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.enable_retries", 0),  # retries are ours: to another instance, under a budget
        ]


@dataclass(frozen=True, kw_only=True)
class OverloadConfig:
    """How long a pod that refused a call for overload (RESOURCE_EXHAUSTED) is avoided
    while another one can take the call; see :mod:`weiclient.attempts`.

    The pod's own ``wei-retry-after-ms`` hint is followed, capped at
    ``max_retry_after_s`` (1 s): the hint describes a queue that other
    clients' load changes within a second, and no ranking call waits longer;
    a broken hint (hours) must not keep a pod out. ``default_retry_after_s``
    (50 ms): for a refusal without the hint (an old server's "batch queue
    full"): about one batch's run, after which its queue has moved."""

    default_retry_after_s: float = 0.05
    max_retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        _positive("overload", default_retry_after_s=self.default_retry_after_s,
                  max_retry_after_s=self.max_retry_after_s)
        if self.default_retry_after_s > self.max_retry_after_s:
            raise InvalidBalancerConfig("overload.default_retry_after_s",
                                        f"at most max_retry_after_s ({self.max_retry_after_s:g})",
                                        self.default_retry_after_s)

    def retry_after_s(self, hint_ms: str | None) -> float:
        """Seconds to avoid a pod that refused with ``hint_ms`` (the metadata's value, None if absent):
        the default when absent or not a decimal integer, else the hint within ``[0, max_retry_after_s]``."""
        if hint_ms is None or not hint_ms.isascii() or not hint_ms.strip().isdigit():
            return self.default_retry_after_s
        return min(int(hint_ms.strip()) / 1000.0, self.max_retry_after_s)


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything :class:`~weiclient.client.WeiClient` can be told.

    ``timeout_s`` (1 s): the default deadline for a whole call, retries
    included. ``balancer``: a policy name overriding the service config's
    (None: follow the service config, default ``p2c_jsed``).
    ``snapshot_file``: where the membership is saved, so a client that starts
    while ZooKeeper is down can still route. ``start_timeout_s`` (10 s): how
    long the constructor waits, in all, for a first membership and the service
    config; without a membership by then (ZooKeeper unreachable, no snapshot
    file) it raises :class:`~weiclient.errors.RegistryUnavailable`, having
    released what it opened. A service config not read by then is followed
    once it arrives (the defaults route meanwhile). ``metrics``: export
    Prometheus metrics, labelled by ``service`` and by ``client`` (see
    :mod:`weiclient.metrics`), so any number of clients live in one process.
    ``throttle``: adaptive client-side throttling (:mod:`weiclient.throttle`);
    ``overload``: how a pod's overload refusal is taken.

    Fleet scale: ``subset`` (:class:`~weiclient.balancer.SubsetConfig`, on):
    route over, watch and connect to a subset of the pods (a no-op up to
    ``subset.min_size`` pods). ``zone``: the zone this client runs in (None:
    the ``WEI_ZONE`` environment variable, else unknown and zones ignored);
    ``zones`` (:class:`~weiclient.balancer.ZoneConfig`): prefer pods in it
    while it has the capacity for its share, spill over in proportion beyond.
    """

    root: str = "/weiserving"
    zk_session_timeout_s: float = 10.0
    zk_auth: str | None = None
    timeout_s: float = 1.0
    start_timeout_s: float = 10.0
    balancer: str | None = None
    balancer_knobs: dict[str, object] = field(default_factory=dict)
    retry: RetryConfig = field(default_factory=RetryConfig)
    hedging: HedgingConfig = field(default_factory=HedgingConfig)
    scatter: ScatterConfig = field(default_factory=ScatterConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    zone: str | None = None
    zones: ZoneConfig = field(default_factory=ZoneConfig)
    protection: Protection = field(default_factory=Protection)
    snapshot_file: Path | None = None
    scatter_threads: int = 16
    metrics: bool = True

    def __post_init__(self) -> None:
        _positive("client", timeout_s=self.timeout_s, start_timeout_s=self.start_timeout_s,
                  zk_session_timeout_s=self.zk_session_timeout_s)
        if self.scatter_threads < 1:
            raise InvalidBalancerConfig("client.scatter_threads", "an integer >= 1", self.scatter_threads)
        if self.zone is not None and (not isinstance(self.zone, str) or not self.zone.strip()):
            raise InvalidBalancerConfig("client.zone", "a zone name or None (then WEI_ZONE)", self.zone)
        for name, cls in (("subset", SubsetConfig), ("zones", ZoneConfig)):
            if not isinstance(getattr(self, name), cls):
                raise InvalidBalancerConfig(f"client.{name}", f"a {cls.__name__}", getattr(self, name))


def registry_settings(zk: object, service: object, root: str | None,
                      cfg: ClientConfig) -> tuple[RegistryPaths, ZkSettings]:
    """WeiClient's registry paths and session settings, checked before anything is opened."""
    try:
        paths = RegistryPaths(root or cfg.root)
        paths.service(service)  # type: ignore[arg-type]  # checks the name
        settings = ZkSettings(hosts=zk, root=paths.root,  # type: ignore[arg-type]
                              session_timeout_s=cfg.zk_session_timeout_s, auth=cfg.zk_auth)
    except FieldError as e:
        name = {"hosts": "zk", "root": "root", "service": "service"}.get(e.field, e.field)
        raise InvalidArgument(name, e.expected, e.got) from None
    except (TypeError, AttributeError):
        raise InvalidArgument("zk", "a ZooKeeper connect string host:port[,host:port...][/chroot]", zk) from None
    return paths, settings
