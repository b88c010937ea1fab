"""Service config: version traffic splits and the balancer policy, one persistent node.

``{root}/config/{service}`` holds::

    {"schema": 1,
     "splits": {"ctr": {"12": 90, "13": 10}},
     "balancer": {"policy": "weighted_p2c", "knobs": {"choices": 2}},
     "updated_ms": 1764160000000}

Written with validation (shares non-negative, summing to 100; sane names);
read by :class:`ConfigWatcher`, which keeps the last good config when the
node holds garbage, and the defaults while there is no node. Changing it
changes routing in every client within a watch round-trip: no redeploy.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import WatchedEvent
from kazoo.security import ACL

from ._loop import WatchLoop
from .errors import RecordError
from .records import check_name
from .zk import RegistryPaths

__all__ = ["DEFAULT_POLICY", "POLICY_NAMES", "BalancerSpec", "ConfigSnapshot", "ConfigStore",
           "ConfigWatcher", "ServiceConfig", "decode_config", "encode_config"]

log = logging.getLogger(__name__)
CONFIG_SCHEMA = 1
MAX_CONFIG_BYTES = 256 * 1024
MAX_SPLIT_VERSIONS = 64
MAX_KNOBS = 32
DEFAULT_POLICY = "p2c_jsed"
POLICY_NAMES = ("consistent_hash", "least_outstanding", "orca_wrr", "p2c_jsed", "prequal", "random",
                "round_robin", "weighted_p2c")
"""The policies clients know: a copy of ``weiclient.balancer.POLICIES``' names (registry may not
import weiclient; tests/registry/test_cli_hardening.py keeps the two equal). Advisory: a config
naming another policy is still read (a newer client may know it); ``wei-registry config`` warns
that clients ignore it and keep the policy they run."""


def _freeze_split(model: str, split: Mapping[Any, Any]) -> Mapping[int, float]:
    if not isinstance(split, Mapping) or not split:
        raise RecordError(f"splits[{model!r}]", "a non-empty {version: share} object", split)
    if len(split) > MAX_SPLIT_VERSIONS:
        raise RecordError(f"splits[{model!r}]", f"at most {MAX_SPLIT_VERSIONS} versions", len(split))
    out: dict[int, float] = {}
    for v, share in split.items():
        try:
            version = int(v)
            if version < 0 or isinstance(v, bool) or (isinstance(v, str) and not v.isdigit()):
                raise ValueError
        except (TypeError, ValueError):
            raise RecordError(f"splits[{model!r}] version", "a non-negative integer", v) from None
        if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share) or share < 0:
            raise RecordError(f"splits[{model!r}][{version}]", "a finite share >= 0", share)
        out[version] = float(share)
    total = sum(out.values())
    if abs(total - 100.0) > 1e-6:
        raise RecordError(f"splits[{model!r}]", "shares summing to 100", total)
    return MappingProxyType(dict(sorted(out.items())))


@dataclass(frozen=True, kw_only=True)
class BalancerSpec:
    """A balancer policy by name with its knobs (scalars). The client maps names to policies."""

    policy: str = DEFAULT_POLICY
    knobs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("balancer.policy", self.policy)
        if not isinstance(self.knobs, Mapping) or len(self.knobs) > MAX_KNOBS:
            raise RecordError("balancer.knobs", f"an object of at most {MAX_KNOBS} knobs", self.knobs)
        for k, v in self.knobs.items():
            check_name("balancer.knobs key", k)
            ok = isinstance(v, bool | int | str) or (isinstance(v, float) and math.isfinite(v))
            if not ok or (isinstance(v, str) and len(v) > 256):
                raise RecordError(f"balancer.knobs[{k!r}]", "a number, boolean or short string", v)
        object.__setattr__(self, "knobs", MappingProxyType(dict(self.knobs)))


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    splits: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    balancer: BalancerSpec = field(default_factory=BalancerSpec)
    updated_ms: int = 0
    schema: int = CONFIG_SCHEMA

    def __post_init__(self) -> None:
        if self.schema != CONFIG_SCHEMA:
            raise RecordError("schema", f"schema {CONFIG_SCHEMA}", self.schema)
        if not isinstance(self.splits, Mapping):
            raise RecordError("splits", "an object {model: {version: share}}", self.splits)
        frozen = {check_name("splits key", m): _freeze_split(m, s) for m, s in self.splits.items()}
        object.__setattr__(self, "splits", MappingProxyType(frozen))
        if not isinstance(self.balancer, BalancerSpec):
            raise RecordError("balancer", "a BalancerSpec", self.balancer)

    def with_split(self, model: str, split: Mapping[int, float]) -> ServiceConfig:
        splits = dict(self.splits)
        splits[model] = split
        return replace(self, splits=splits)

    def pick_version(self, model: str, u: float) -> int | None:
        """The version for a request drawn at ``u`` in [0, 1); None without a split.

        Pure: the caller supplies the randomness (or a hash of a request key for
        sticky canaries).
        """
        split = self.splits.get(model)
        if not split:
            return None
        versions = [v for v, s in split.items() if s > 0]
        cumulative = []
        acc = 0.0
        for v in versions:
            acc += split[v]
            cumulative.append(acc)
        i = bisect.bisect_right(cumulative, u * acc)
        return versions[min(i, len(versions) - 1)]


def config_to_json(cfg: ServiceConfig) -> dict[str, Any]:
    return {
        "schema": cfg.schema,
        "splits": {m: {str(v): s for v, s in split.items()} for m, split in cfg.splits.items()},
        "balancer": {"policy": cfg.balancer.policy, "knobs": dict(cfg.balancer.knobs)},
        "updated_ms": cfg.updated_ms,
    }


def encode_config(cfg: ServiceConfig) -> bytes:
    data = json.dumps(config_to_json(cfg), separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_CONFIG_BYTES:
        raise RecordError("config", f"at most {MAX_CONFIG_BYTES} bytes", len(data))
    return data


def decode_config(data: bytes | None) -> ServiceConfig:
    if not data:
        raise RecordError("config", "JSON bytes", "empty node")
    if len(data) > MAX_CONFIG_BYTES:
        raise RecordError("config", f"at most {MAX_CONFIG_BYTES} bytes", len(data))
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RecordError("config", "UTF-8 JSON", f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise RecordError("config", "a JSON object", type(obj).__name__)
    bal = obj.get("balancer") or {}
    if not isinstance(bal, dict):
        raise RecordError("balancer", "an object", bal)
    updated = obj.get("updated_ms", 0)
    if isinstance(updated, bool) or not isinstance(updated, int):
        raise RecordError("updated_ms", "integer milliseconds", updated)
    return ServiceConfig(
        schema=obj.get("schema", CONFIG_SCHEMA),
        splits=obj.get("splits") or {},
        balancer=BalancerSpec(policy=bal.get("policy", DEFAULT_POLICY), knobs=bal.get("knobs") or {}),
        updated_ms=updated,
    )


class ConfigStore:
    """Reads and writes service configs (compare-and-set, so concurrent edits never clobber)."""

    def __init__(self, client: KazooClient, *, paths: RegistryPaths | None = None,
                 acl: list[ACL] | None = None, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._paths = paths or RegistryPaths()
        self._acl = acl
        self._clock = clock

    def get(self, service: str) -> ServiceConfig | None:
        try:
            data, _ = self._client.get(self._paths.config(service))
        except NoNodeError:
            return None
        return decode_config(data)

    def set(self, service: str, cfg: ServiceConfig) -> ServiceConfig:
        return self.modify(service, lambda _old: cfg)

    def set_split(self, service: str, model: str, split: Mapping[int, float]) -> ServiceConfig:
        check_name("model", model)
        _freeze_split(model, split)  # fail before any I/O
        return self.modify(service, lambda old: old.with_split(model, split))

    def modify(
        self, service: str, fn: Callable[[ServiceConfig], ServiceConfig], *, attempts: int = 10
    ) -> ServiceConfig:
        """Read, apply ``fn``, write back if nobody wrote in between; retry otherwise.

        A node holding garbage is replaced (``fn`` sees the defaults).
        """
        path = self._paths.config(service)
        for _ in range(attempts):
            try:
                data, stat = self._client.get(path)
                try:
                    old = decode_config(data)
                except RecordError as e:
                    log.warning("config %s was invalid (%s); replacing it", path, e)
                    old = ServiceConfig()
                version: int | None = stat.version
            except NoNodeError:
                old, version = ServiceConfig(), None
            new = replace(fn(old), updated_ms=int(self._clock() * 1000))
            payload = encode_config(new)
            try:
                if version is None:
                    self._client.create(path, payload, acl=self._acl, makepath=True)
                else:
                    self._client.set(path, payload, version=version)
                return new
            except (BadVersionError, NodeExistsError):
                continue
        raise RecordError("config", f"a write that is not raced {attempts} times", path)


@dataclass(frozen=True, kw_only=True)
class ConfigSnapshot:
    """``config`` is the defaults while ``present`` is False; ``error`` says why
    the node's newest content was refused (the last good config stays)."""

    service: str
    version: int = 0
    config: ServiceConfig = field(default_factory=ServiceConfig)
    present: bool = False
    error: str | None = None
    synced_at: float | None = None
    stale_since: float | None = None


class ConfigWatcher(WatchLoop[ConfigSnapshot]):
    def __init__(self, client: KazooClient, service: str, *, paths: RegistryPaths | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(client, name=f"wei-config-{service}", clock=clock)
        self.service = service
        self._path = (paths or RegistryPaths()).config(service)
        self._snap = ConfigSnapshot(service=service)
        self.rejected_total = 0

    @property
    def config(self) -> ServiceConfig:
        return self._snap.config

    def start(self, *, timeout: float | None = 10.0) -> ConfigWatcher:
        self._start_loop()
        if timeout is not None:
            with self._cond:
                self._cond.wait_for(lambda: self._snap.synced_at is not None, timeout)
        return self

    def close(self) -> None:
        self._stop_loop()

    def _current(self) -> ConfigSnapshot:
        return self._snap

    def _describe(self, snap: ConfigSnapshot) -> str:
        return f"v{snap.version}, present={snap.present}, error={snap.error}"

    def _connected(self) -> None:
        self._read()

    def _events(self, events: list[WatchedEvent]) -> None:
        self._read()

    def _disconnected(self, state: str) -> None:
        if self._snap.stale_since is None:
            self._publish(replace(self._snap, stale_since=self._clock()))

    def _read(self) -> None:
        now = self._clock()
        try:
            data, _ = self._client.get(self._path, watch=self._on_watch)
        except NoNodeError:
            if self._client.exists(self._path, watch=self._on_watch) is None:
                self._publish(replace(self._snap, config=ServiceConfig(), present=False, error=None,
                                      synced_at=now, stale_since=None))
                return
            data, _ = self._client.get(self._path, watch=self._on_watch)
        try:
            cfg = decode_config(data)
        except RecordError as e:
            self.rejected_total += 1
            log.warning("config %s: keeping the last good config: %s", self._path, e)
            self._publish(replace(self._snap, error=str(e), synced_at=now, stale_since=None))
            return
        self._publish(replace(self._snap, config=cfg, present=True, error=None, synced_at=now, stale_since=None))

    def _publish(self, snap: ConfigSnapshot) -> None:
        old = self._snap
        changed = (snap.config, snap.present, snap.error, snap.stale_since) != (
            old.config, old.present, old.error, old.stale_since)
        if changed:
            snap = replace(snap, version=old.version + 1)
        with self._cond:
            self._snap = snap
            self._cond.notify_all()
        if changed:
            self._notify(snap)
