"""WeiClient: what a ranking service embeds to call serving pods directly.

    with WeiClient("zk1:2181,zk2:2181,zk3:2181", "ctr") as client:
        scores = client.predict("ctr", {"dense": dense, "cat": cat})["ctr_score"]

Membership and service config come from ZooKeeper watchers running on their
own threads; the request path reads immutable snapshots and the balancer's
current vector and does no ZooKeeper I/O. See :mod:`weiclient.attempts`
for retries and hedging, :mod:`weiclient.transport` for the gRPC drivers,
:mod:`weiclient.oip` for pods that speak the Open Inference Protocol and
:mod:`weiclient.balancer` for the policies.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol import wire
from registry.membership import MembershipSnapshot
from registry.service_config import ConfigSnapshot, ConfigWatcher, ServiceConfig
from registry.watcher import MembershipWatcher, WatcherConfig
from registry.zk import connect

from . import inputs as args
from .attempts import Plan
from .balancer import BalancerStats, build_policy, key_hash, policy_from_spec
from .config import ClientConfig, registry_settings
from .errors import (
    ClientClosed,
    InternalError,
    InvalidArgument,
    InvalidBalancerConfig,
    InvalidInput,
    NoEndpointAvailable,
    RegistryUnavailable,
    Unavailable,
    WeiClientError,
)
from .fleet import Fleet
from .inputs import Outputs
from .metrics import ClientMetrics, NullMetrics
from .oip import OipRequest
from .transport import Transport

__all__ = ["ClientStats", "WeiClient"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientStats:
    service: str
    membership_version: int
    members: int
    stale: bool
    staleness_s: float
    config_version: int
    splits: Mapping[str, Mapping[int, float]]
    balancer: BalancerStats
    channels: tuple[str, ...]


class WeiClient:
    """Direct-connect client for one service. Thread-safe. Any number may live in one process
    (one per service a ranking service calls, or several for one service), each with its own
    ``client`` label in the metrics.

    The constructor checks its arguments before it opens anything, waits up
    to ``config.start_timeout_s`` in all for a first membership (and the
    service config), and when it fails it closes whatever it had opened (the
    ZooKeeper session, the watcher threads, the metrics' label) and raises a
    :class:`~weiclient.errors.WeiClientError`: :class:`InvalidArgument` for
    a bad argument, :class:`RegistryUnavailable` when no membership came.
    """

    def __init__(self, zk: str, service: str, *, root: str | None = None, config: ClientConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        cfg = ClientConfig() if config is None else config
        if not isinstance(cfg, ClientConfig):
            raise InvalidArgument("config", "a weiclient.ClientConfig or None", cfg)
        paths, settings = registry_settings(zk, service, root, cfg)
        fixed = build_policy(cfg.balancer, cfg.balancer_knobs) if cfg.balancer else None
        self.config = cfg
        self.service = service
        self._clock = clock
        self._rng = rng or random.Random()
        self._closed = False
        self._lock = threading.Lock()
        self._fixed_policy = fixed is not None
        self._fleet = Fleet(cfg, self._rng)  # subsetting and zone affinity
        self._balancer = self._fleet.balancer(fixed, rng=self._rng, service=service)
        self._policy_spec: Any = None
        self._service_config = ServiceConfig()
        self._scatter_pool: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        with ExitStack() as opened:  # closed in reverse on any failure below; kept for close() on success
            self._metrics: ClientMetrics = ClientMetrics(service) if cfg.metrics else NullMetrics(service)
            opened.callback(self._metrics.close)
            self._transport = Transport(cfg, lambda: self._balancer, clock=clock, sleep=sleep,
                                        metrics=self._metrics, rng=self._rng)
            opened.callback(self._transport.close)
            self._zk = connect(settings, wait=False)
            opened.callback(self._zk.close)
            opened.callback(self._zk.stop)  # LIFO: stop, then close
            self._watcher = MembershipWatcher(self._zk, service, paths=paths, config=WatcherConfig(
                protection=cfg.protection, snapshot_file=cfg.snapshot_file),
                **self._fleet.watcher_options(lambda: self._balancer))  # type: ignore[arg-type]
            self._config_watcher = ConfigWatcher(self._zk, service, paths=paths)
            self._watcher.subscribe(self._on_membership)
            self._config_watcher.subscribe(self._on_config)
            opened.callback(self._watcher.close)
            self._watcher.start(timeout=None)
            opened.callback(self._config_watcher.close)
            self._config_watcher.start(timeout=None)
            self._await_start(settings.hosts)
            self._on_membership(self._watcher.snapshot)
            self._on_config(self._config_watcher.snapshot)
            self._metrics.watch(lambda now: self._balancer.stats(now), staleness=self._watcher.staleness)
            self._housekeeper = threading.Thread(target=self._housekeeping, name=f"wei-client-{service}",
                                                 daemon=True)
            opened.callback(self._stop.set)
            self._housekeeper.start()
            self._opened = opened.pop_all()

    def _await_start(self, hosts: str) -> None:
        """One deadline for both watchers: a membership (else RegistryUnavailable), then the config."""
        timeout = self.config.start_timeout_s
        deadline = time.monotonic() + timeout
        try:
            self._watcher.wait_for(lambda s: s.source != "empty", timeout=timeout)
        except TimeoutError:
            raise RegistryUnavailable(hosts, self.service, timeout, self._watcher.last_error) from None
        try:
            self._config_watcher.wait_for(lambda s: s.synced_at is not None,
                                          timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("service %s: no service config read within %ss; routing on the defaults until it is",
                        self.service, timeout)

    # -- feeds from the watchers (their threads) -----------------------------------------

    def _on_membership(self, snap: MembershipSnapshot) -> None:
        with self._lock:
            self._balancer.update(snap, self._clock())
            self._transport.retain(r.endpoint for r in snap.instances.values())

    def _on_config(self, snap: ConfigSnapshot) -> None:
        with self._lock:
            self._service_config = snap.config
            spec = snap.config.balancer
            if self._fixed_policy or spec == self._policy_spec:
                return
            try:
                policy = policy_from_spec(spec)
            except InvalidBalancerConfig as e:
                log.error("service %s: keeping balancer %s: config names an invalid one: %s",
                          self.service, self._balancer.policy.name, e)
                return
            self._policy_spec = spec
            if policy != self._balancer.policy:
                self._balancer = self._balancer.with_policy(policy)
                log.info("service %s: balancer policy now %s", self.service, policy.name)

    def _housekeeping(self) -> None:
        """Close channels (sync, and asyncio on their loop) whose instance left over ``close_grace_s`` ago;
        resize the subset when this client's peak load asks for another size."""
        period = min(1.0, self.config.channel.close_grace_s / 2)
        while not self._stop.wait(period):
            try:
                with self._lock:  # the subset follows this client's peak load
                    # the snapshot (iterates its records): capacity is read once per version
                    if self._fleet.resize(self._balancer, self._watcher.snapshot, self._clock()):
                        self._fleet.refilter(self._watcher)
                self._transport.reap()
            except Exception:  # the thread must outlive one bad reap
                log.exception("service %s: reaping channels failed", self.service)

    # -- the API ---------------------------------------------------------------------------

    def predict(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
                outputs: list[str] | None = None, timeout: float | None = None, key: object = None,
                split: bool | None = None, priority: str = "default") -> Outputs:
        """Run ``model`` on ``inputs`` (batch-major arrays); returns ``{output: array}``.

        ``version``: a specific version; None follows the service config's
        traffic split (or the latest a pod serves). ``key``: routes with
        ``consistent_hash`` and makes the split sticky per key. ``split``:
        scatter the rows over several instances (None: above
        ``ScatterConfig.auto_rows``). ``priority``: ``sheddable``, ``default`` or
        ``critical`` (:data:`protocol.wire.PRIORITIES`); under overload lower
        priority is shed first, here (:mod:`weiclient.throttle`) and by the server.
        Output arrays are read-only views.

        Raises only :class:`WeiClientError`. A :class:`RequestError` (a bad
        argument, the server's INVALID_ARGUMENT such as a row limit, a message
        over a size limit, an unknown model) is raised at once: not retried,
        not counted against any pod. :class:`Overloaded` (every pod tried refused,
        fast) and its :class:`Throttled` (rejected here, nothing sent) say: back off.
        """
        with self._metered(model, priority):
            plans, shards = self._plans(model, inputs, version, outputs, timeout, key, split, priority)
            if shards is None:
                return args.single_outputs(self._transport.call(plans[0]), model)
            pool = self._scatter_executor()
            futures = [pool.submit(self._transport.call, p) for p in plans[1:]]
            first = self._transport.call(plans[0])  # the caller's thread takes one shard itself
            parts = [first] + [f.result() for f in futures]
            return args.concat(model, shards, [args.single_outputs(p, model) for p in parts])

    def predict_many(self, models: Mapping[str, int | None], inputs: Mapping[str, Any], *,
                     outputs: list[str] | None = None, timeout: float | None = None,
                     key: object = None, priority: str = "default") -> dict[str, Outputs]:
        """Several models on the same inputs in one request (one feature pass, many models); routed
        over ``weiserving`` pods only: OIP has no multi-model request (see :mod:`weiclient.oip`)."""
        with self._metered(args.many_label(models), priority):
            plan = self._many_plan(models, inputs, outputs, timeout, key, priority)
            return args.many_outputs(self._transport.call(plan))

    async def apredict(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
                       outputs: list[str] | None = None, timeout: float | None = None, key: object = None,
                       split: bool | None = None, priority: str = "default") -> Outputs:
        with self._metered(model, priority):
            plans, shards = self._plans(model, inputs, version, outputs, timeout, key, split, priority)
            if shards is None:
                return args.single_outputs(await self._transport.acall(plans[0]), model)
            parts = await asyncio.gather(*(self._transport.acall(p) for p in plans))
            return args.concat(model, shards, [args.single_outputs(p, model) for p in parts])

    async def apredict_many(self, models: Mapping[str, int | None], inputs: Mapping[str, Any], *,
                            outputs: list[str] | None = None, timeout: float | None = None,
                            key: object = None, priority: str = "default") -> dict[str, Outputs]:
        with self._metered(args.many_label(models), priority):
            plan = self._many_plan(models, inputs, outputs, timeout, key, priority)
            return args.many_outputs(await self._transport.acall(plan))

    # -- building calls --------------------------------------------------------------------

    @contextmanager
    def _metered(self, label: object, priority: object) -> Iterator[None]:
        """Refuse calls on a closed client, of a wrong priority, or throttled (before anything is
        encoded); count each call's outcome and latency. Nothing but a WeiClientError leaves:
        anything else is a bug, raised as InternalError (its cause attached)."""
        label = label if isinstance(label, str) else "<invalid>"  # a caller's value must not break a label
        t0 = self._clock()
        try:
            self._check_open()
            self._transport.admit(args.check_priority(priority))
            yield
        except WeiClientError as e:
            self._metrics.request(label, type(e).__name__, self._clock() - t0)
            raise
        except Exception as e:
            self._metrics.request(label, InternalError.__name__, self._clock() - t0)
            log.exception("service %s: unexpected error in a call", self.service)
            raise InternalError(f"unexpected {type(e).__name__} in WeiClient (a bug; please report it): "
                                f"{e}") from e
        self._metrics.request(label, "ok", self._clock() - t0)

    def _deadline(self, timeout: object) -> float:
        seconds = args.check_timeout(timeout)
        return self._clock() + (seconds if seconds is not None else self.config.timeout_s)

    def _plans(self, model: str, inputs: Mapping[str, Any], version: int | None, outputs: list[str] | None,
               timeout: float | None, key: object, split: bool | None, priority: str) -> tuple[list[Plan], Any]:
        """One plan, or one per shard (then with the shards, all at the same version)."""
        args.check_model(model)
        deadline = self._deadline(timeout)
        arrays = args.to_arrays(inputs)
        outputs = args.check_outputs(outputs)
        version = self._resolve_version(model, version, key)
        rows = args.rows(arrays) if args.check_split(split) is not False else 0
        scattered = self._shards(model, version, rows, split)
        if scattered is None:
            return [self._plan(model, version, arrays, outputs, deadline, key, priority)], None
        version, shards = scattered
        return [self._plan(model, version, args.slice_inputs(arrays, sh.slice), outputs, deadline, key, priority,
                           sh.endpoint) for sh in shards], shards

    def _resolve_version(self, model: str, version: int | None, key: object) -> int | None:
        if key is not None and not isinstance(key, str | bytes | int) or isinstance(key, bool):
            raise InvalidInput(f"key: expected str, bytes or int, got {type(key).__name__}")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int) or version < 0:
                raise InvalidInput(f"version: expected a non-negative int or None, got {version!r}")
            return version
        u = self._rng.random() if key is None else (key_hash(key) % 1_000_003) / 1_000_003
        return self._service_config.pick_version(model, u)

    def _shards(self, model: str, version: int | None, rows: int, split: bool | None) -> Any:
        """(version, shards) when the call is scattered, else None. Every shard runs the
        same version: without one asked for, the newest one served is pinned."""
        sc = self.config.scatter
        if not split and not (split is None and rows >= sc.auto_rows):
            return None
        if rows < 2:
            return None
        if version is None:
            hosted = [max(r.models[model]) for r in self._watcher.snapshot.routable(model) if r.models[model]]
            version = max(hosted) if hosted else None
        max_shards = max(1, min(sc.max_shards, rows // sc.min_shard_rows))
        shards = self._balancer.scatter(model, version, rows, max_shards=max_shards, now=self._clock())
        return (version, shards) if len(shards) > 1 else None

    def _plan(self, model: str, version: int | None, arrays: dict[str, np.ndarray], outputs: list[str] | None,
              deadline: float, key: object, priority: str, first: Any = None) -> Plan:
        max_bytes = self.config.channel.max_message_bytes
        # Each body is encoded by the first attempt that needs it: a fleet of one protocol encodes once.
        payload = args.MsgpackBody(wire.PredictRequest(model=model, version=version, inputs=arrays, outputs=outputs),
                                   max_bytes)
        self._fleet.record(args.rows(arrays), self._clock())
        return Plan(model=model, version=version, payload=payload, deadline=deadline, key=key, first=first,
                    rows=max(1, args.rows(arrays)), priority=priority,
                    oip=OipRequest(model, version, arrays, outputs, max_bytes))

    def _many_plan(self, models: Mapping[str, int | None], inputs: Mapping[str, Any],
                   outputs: list[str] | None, timeout: float | None, key: object, priority: str) -> Plan:
        deadline = self._deadline(timeout)
        arrays = args.to_arrays(inputs)
        outputs = args.check_outputs(outputs)
        resolved = {m: self._resolve_version(m, v, key) for m, v in args.check_models(models).items()}
        first, *rest = resolved
        payload = args.encode(wire.PredictRequest(models=resolved, inputs=arrays, outputs=outputs),
                              self.config.channel.max_message_bytes)
        self._fleet.record(args.rows(arrays), self._clock())
        return Plan(model=first, version=resolved[first], payload=payload, deadline=deadline, key=key,
                    also=tuple((m, resolved[m]) for m in rest), rows=max(1, args.rows(arrays)), priority=priority)

    def _scatter_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._scatter_pool is None:
                self._scatter_pool = ThreadPoolExecutor(self.config.scatter_threads, thread_name_prefix="wei-scatter")
            return self._scatter_pool

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"WeiClient for {self.service!r} is closed")
        snap = self._watcher.snapshot
        if snap.source == "empty":
            raise NoEndpointAvailable("*", None, Unavailable.NO_INSTANCES,
                                      "no membership yet: ZooKeeper unreachable and no snapshot file")

    # -- observability and lifecycle ----------------------------------------------------------

    @property
    def snapshot(self) -> MembershipSnapshot:
        return self._watcher.snapshot

    @property
    def service_config(self) -> ServiceConfig:
        return self._service_config

    def stats(self) -> ClientStats:
        snap = self._watcher.snapshot
        return ClientStats(
            service=self.service, membership_version=snap.version, members=len(snap), stale=snap.stale,
            staleness_s=self._watcher.staleness(), config_version=self._config_watcher.snapshot.version,
            splits=self._service_config.splits, balancer=self._balancer.stats(self._clock()),
            channels=tuple(self._transport.channels))

    def close(self) -> None:
        """Stop watching, close channels and the ZooKeeper session, free the metrics label. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._scatter_pool is not None:
            self._scatter_pool.shutdown(wait=False, cancel_futures=True)
        self._opened.close()  # in reverse order of opening: housekeeping, watchers, session, channels, metrics

    async def aclose(self) -> None:
        self.close()
        await self._transport.aclose()

    def __enter__(self) -> WeiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> WeiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        snap = self._watcher.snapshot
        return (f"<WeiClient {self.service} v{snap.version} members={len(snap)} policy={self._balancer.policy.name}"
                f"{' closed' if self._closed else ''}>")
