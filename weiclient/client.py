"""WeiClient: what a ranking service embeds to call serving pods directly.

    with WeiClient("zk1:2181,zk2:2181,zk3:2181", "ctr") as client:
        scores = client.predict("ctr", {"dense": dense, "cat": cat})["ctr_score"]

Membership and service config come from ZooKeeper watchers running on their
own threads; the request path reads immutable snapshots and the balancer's
current vector and does no ZooKeeper I/O. See :mod:`weiclient.attempts`
for retries and hedging, :mod:`weiclient.transport` for the gRPC drivers and
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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol import wire
from registry.membership import MembershipSnapshot
from registry.service_config import ConfigSnapshot, ConfigWatcher, ServiceConfig
from registry.watcher import MembershipWatcher, WatcherConfig
from registry.zk import RegistryPaths, ZkSettings, connect

from .attempts import Plan
from .balancer import Balancer, BalancerStats, build_policy, key_hash, policy_from_spec
from .config import ClientConfig
from .errors import ClientClosed, InvalidBalancerConfig, InvalidInput, NoEndpointAvailable, Unavailable, WeiClientError
from .metrics import ClientMetrics, EndpointCollector, NullMetrics
from .transport import Transport

__all__ = ["ClientStats", "WeiClient"]

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]


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
    """Direct-connect client for one service. Thread-safe; use one per service per process."""

    def __init__(self, zk: str, service: str, *, root: str | None = None, config: ClientConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.config = cfg = config or ClientConfig()
        self.service = service
        self._clock = clock
        self._rng = rng or random.Random()
        self._closed = False
        self._lock = threading.Lock()
        self._metrics: ClientMetrics = ClientMetrics(service) if cfg.metrics else NullMetrics(service)
        fixed = build_policy(cfg.balancer, cfg.balancer_knobs) if cfg.balancer else None
        self._fixed_policy = fixed is not None
        self._balancer = Balancer(fixed, rng=self._rng, service=service)
        self._policy_spec: Any = None
        self._service_config = ServiceConfig()
        self._transport = Transport(cfg, lambda: self._balancer, clock=clock, sleep=sleep, metrics=self._metrics,
                                    rng=self._rng)
        self._scatter_pool: ThreadPoolExecutor | None = None
        paths = RegistryPaths(root or cfg.root)
        self._zk = connect(ZkSettings(hosts=zk, root=paths.root, session_timeout_s=cfg.zk_session_timeout_s,
                                      auth=cfg.zk_auth), wait=False)
        self._watcher = MembershipWatcher(self._zk, service, paths=paths, config=WatcherConfig(
            protection=cfg.protection, snapshot_file=cfg.snapshot_file))
        self._config_watcher = ConfigWatcher(self._zk, service, paths=paths)
        self._watcher.subscribe(self._on_membership)
        self._config_watcher.subscribe(self._on_config)
        self._watcher.start(timeout=cfg.start_timeout_s)
        self._config_watcher.start(timeout=cfg.start_timeout_s)
        self._on_membership(self._watcher.snapshot)
        self._on_config(self._config_watcher.snapshot)
        self._collector = EndpointCollector(service, lambda now: self._balancer.stats(now))
        if cfg.metrics:
            self._collector.register()
        self._stop = threading.Event()
        self._housekeeper = threading.Thread(target=self._housekeeping, name=f"wei-client-{service}", daemon=True)
        self._housekeeper.start()

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
        """Close channels (sync, and asyncio on their loop) whose instance left over ``close_grace_s`` ago."""
        period = min(1.0, self.config.channel.close_grace_s / 2)
        while not self._stop.wait(period):
            try:
                self._transport.reap()
            except Exception:  # the thread must outlive one bad reap
                log.exception("service %s: reaping channels failed", self.service)

    # -- the API ---------------------------------------------------------------------------

    def predict(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
                outputs: list[str] | None = None, timeout: float | None = None, key: object = None,
                split: bool | None = None) -> Outputs:
        """Run ``model`` on ``inputs`` (batch-major arrays); returns ``{output: array}``.

        ``version``: a specific version; None follows the service config's
        traffic split (or the latest a pod serves). ``key``: routes with
        ``consistent_hash`` and makes the split sticky per key. ``split``:
        scatter the rows over several instances (None: above
        ``ScatterConfig.auto_rows``). Output arrays are read-only views.
        """
        with self._metered(model):
            plans, shards = self._plans(model, inputs, version, outputs, self._deadline(timeout), key, split)
            if shards is None:
                return _single_outputs(self._transport.call(plans[0]), model)
            pool = self._scatter_executor()
            futures = [pool.submit(self._transport.call, p) for p in plans[1:]]
            first = self._transport.call(plans[0])  # the caller's thread takes one shard itself
            return _concat(model, shards, [_single_outputs(p, model) for p in [first] + [f.result() for f in futures]])

    def predict_many(self, models: Mapping[str, int | None], inputs: Mapping[str, Any], *,
                     outputs: list[str] | None = None, timeout: float | None = None,
                     key: object = None) -> dict[str, Outputs]:
        """Several models on the same inputs in one request (one feature pass, many models)."""
        with self._metered("+".join(models)):
            return _many_outputs(self._transport.call(self._many_plan(models, inputs, outputs, timeout, key)))

    async def apredict(self, model: str, inputs: Mapping[str, Any], *, version: int | None = None,
                       outputs: list[str] | None = None, timeout: float | None = None, key: object = None,
                       split: bool | None = None) -> Outputs:
        with self._metered(model):
            plans, shards = self._plans(model, inputs, version, outputs, self._deadline(timeout), key, split)
            if shards is None:
                return _single_outputs(await self._transport.acall(plans[0]), model)
            parts = await asyncio.gather(*(self._transport.acall(p) for p in plans))
            return _concat(model, shards, [_single_outputs(p, model) for p in parts])

    async def apredict_many(self, models: Mapping[str, int | None], inputs: Mapping[str, Any], *,
                            outputs: list[str] | None = None, timeout: float | None = None,
                            key: object = None) -> dict[str, Outputs]:
        with self._metered("+".join(models)):
            return _many_outputs(await self._transport.acall(self._many_plan(models, inputs, outputs, timeout, key)))

    # -- building calls --------------------------------------------------------------------

    @contextmanager
    def _metered(self, label: str) -> Iterator[None]:
        """Refuse calls on a closed client; count each call's outcome and latency."""
        self._check_open()
        t0 = self._clock()
        try:
            yield
        except WeiClientError as e:
            self._metrics.request(label, type(e).__name__, self._clock() - t0)
            raise
        self._metrics.request(label, "ok", self._clock() - t0)

    def _deadline(self, timeout: float | None) -> float:
        return self._clock() + (timeout if timeout is not None else self.config.timeout_s)

    def _plans(self, model: str, inputs: Mapping[str, Any], version: int | None, outputs: list[str] | None,
               deadline: float, key: object, split: bool | None) -> tuple[list[Plan], Any]:
        """One plan, or one per shard (then with the shards, all at the same version)."""
        version = self._resolve_version(model, version, key)
        rows = _rows(inputs) if split is not False else 0
        scattered = self._shards(model, version, rows, split)
        if scattered is None:
            return [self._plan(model, version, inputs, outputs, deadline, key)], None
        version, shards = scattered
        return [self._plan(model, version, _slice(inputs, sh.slice), outputs, deadline, key, sh.endpoint)
                for sh in shards], shards

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

    def _plan(self, model: str, version: int | None, inputs: Mapping[str, Any], outputs: list[str] | None,
              deadline: float, key: object, first: Any = None) -> Plan:
        arrays = _arrays(inputs)
        payload = _encode(wire.PredictRequest(model=model, version=version, inputs=arrays, outputs=outputs))
        return Plan(model=model, version=version, payload=payload, deadline=deadline, key=key, first=first,
                    rows=max(1, _rows(arrays)))

    def _many_plan(self, models: Mapping[str, int | None], inputs: Mapping[str, Any],
                   outputs: list[str] | None, timeout: float | None, key: object) -> Plan:
        if not models:
            raise InvalidInput("predict_many needs at least one model")
        resolved = {m: self._resolve_version(m, v, key) for m, v in models.items()}
        first, *rest = resolved
        deadline = self._deadline(timeout)
        arrays = _arrays(inputs)
        payload = _encode(wire.PredictRequest(models=resolved, inputs=arrays, outputs=outputs))
        return Plan(model=first, version=resolved[first], payload=payload, deadline=deadline, key=key,
                    also=tuple((m, resolved[m]) for m in rest), rows=max(1, _rows(arrays)))

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
        """Stop watching, close channels and the ZooKeeper session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._collector.unregister()
        self._watcher.close()
        self._config_watcher.close()
        self._zk.stop()
        self._zk.close()
        if self._scatter_pool is not None:
            self._scatter_pool.shutdown(wait=False, cancel_futures=True)
        self._transport.close()

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


# -- helpers (pure) ---------------------------------------------------------------------------

def _arrays(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput(f"inputs: expected a non-empty mapping of name -> array, got {type(inputs).__name__}")
    out = {}
    for name, value in inputs.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise InvalidInput(f"input {name!r}: object arrays cannot be sent; expected a numeric, bool or "
                               f"fixed-width bytes dtype")
        out[name] = arr
    return out


def _encode(req: wire.PredictRequest) -> bytes:
    try:
        return wire.encode_request(req)
    except wire.WireError as e:
        raise InvalidInput(f"cannot encode the request: {e}") from None


def _rows(inputs: Mapping[str, Any]) -> int:
    """The batch size the inputs agree on (0 when they do not, or are scalars): a call's cost in rows."""
    sizes = {np.shape(v)[0] if np.ndim(v) else 0 for v in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else 0


def _slice(inputs: Mapping[str, Any], sl: slice) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[sl] for k, v in inputs.items()}


def _single_outputs(resp: wire.PredictResponse, model: str) -> Outputs:
    result = resp.results.get(model)
    if result is None:
        raise WeiClientError(f"the server answered without a result for {model!r}: {sorted(resp.results)}")
    return dict(result.outputs)


def _many_outputs(resp: wire.PredictResponse) -> dict[str, Outputs]:
    return {m: dict(r.outputs) for m, r in resp.results.items()}


def _concat(model: str, shards: Any, parts: list[Outputs]) -> Outputs:
    names = set(parts[0])
    out = {}
    for name in names:
        pieces = []
        for shard, part in zip(shards, parts, strict=True):
            arr = part.get(name)
            if arr is None or np.ndim(arr) == 0 or len(arr) != shard.size:
                raise WeiClientError(f"{model}: output {name!r} from {shard.endpoint.address} does not have "
                                     f"{shard.size} rows; cannot reassemble a scattered call")
            pieces.append(arr)
        out[name] = np.concatenate(pieces)
    return out
