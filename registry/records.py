"""Instance records in Apache Curator Service Discovery's JSON.

A serving pod is one ephemeral node, ``{root}/services/{service}/{id}``,
holding exactly what Curator 5.4's ``JsonInstanceSerializer`` writes and
reads::

    {"name": "ctr", "id": "pod-1", "address": "10.0.0.7", "port": 8500,
     "sslPort": null,
     "payload": {"@class": "java.util.LinkedHashMap", "schema": 1,
                 "weight": 12.5, "capacity": {...}, "state": "SERVING",
                 "zone": "z1", "node": "n7", "models": {"ctr": [12, 13]},
                 "labels": {}, "updated_ms": 1764160000000},
     "registrationTimeUTC": 1764160000000, "serviceType": "DYNAMIC",
     "uriSpec": {"parts": [...]}, "enabled": true}

``@class`` comes first in ``payload`` because Curator declares the payload
with Jackson's ``@JsonTypeInfo(use = CLASS)``: any Curator version then reads
it as a map. Writing is strict (:func:`encode_instance` validates every
field); reading is lenient at the watcher (:func:`decode_instance` raises
:class:`RecordError` and the watcher skips and counts the node).

``payload.protocol`` says what the pod's port speaks (:class:`Protocol`):
absent means ``weiserving`` (``weiserving.v1``, msgpack), ``"oip"`` the Open
Inference Protocol's gRPC (Triton, KServe, MLServer, or wei-serve itself). A
value this code does not know is refused like any bad field: a client must not
route to a pod it cannot speak to.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Any

from .errors import RecordError

__all__ = [
    "MAX_RECORD_BYTES",
    "SCHEMA",
    "Capacity",
    "InstanceRecord",
    "Protocol",
    "State",
    "decode_instance",
    "decode_member",
    "encode_instance",
    "instance_from_json",
    "instance_to_json",
]

SCHEMA = 1
"""Payload schema this code writes and the highest it reads."""

MAX_RECORD_BYTES = 64 * 1024
"""Largest record written or read (ZooKeeper allows 1 MiB; ours are ~1 KiB)."""

PAYLOAD_CLASS = "java.util.LinkedHashMap"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,255}$")
MAX_MODELS = 256
MAX_VERSIONS = 64
MAX_LABELS = 64
MAX_LABEL_LEN = 256


class Protocol(StrEnum):
    """What the pod's port speaks: our ``weiserving.v1`` (msgpack) or the Open Inference Protocol's gRPC."""

    WEISERVING = "weiserving"
    OIP = "oip"


class State(StrEnum):
    WARMING = "WARMING"
    SERVING = "SERVING"
    DRAINING = "DRAINING"


def check_name(field_name: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise RecordError(field_name, "1-128 of [A-Za-z0-9._-], starting alphanumeric", value)
    return value


def _check_port(field_name: str, value: object, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RecordError(field_name, "an integer port in 1..65535", value)
    return value


def _check_number(field_name: str, value: object, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(field_name, "a number", value)
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise RecordError(field_name, f"a finite number >= {minimum:g}", value)
    return value


def _check_text(field_name: str, value: object, limit: int = MAX_LABEL_LEN) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise RecordError(field_name, f"a string of at most {limit} characters", value)
    return value


@dataclass(frozen=True, kw_only=True)
class Capacity:
    """What the pod declared or measured: CPU cores, GPUs, calibrated samples/s."""

    cpu_cores: float = 0.0
    gpu_model: str | None = None
    gpu_count: int = 0
    samples_per_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu_cores", _check_number("capacity.cpu_cores", self.cpu_cores))
        if self.gpu_model is not None:
            _check_text("capacity.gpu_model", self.gpu_model, 128)
        if isinstance(self.gpu_count, bool) or not isinstance(self.gpu_count, int) or not (
            0 <= self.gpu_count <= 1024
        ):
            raise RecordError("capacity.gpu_count", "an integer in 0..1024", self.gpu_count)
        if self.samples_per_s is not None:
            object.__setattr__(
                self, "samples_per_s", _check_number("capacity.samples_per_s", self.samples_per_s)
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_cores": self.cpu_cores,
            "gpu_model": self.gpu_model,
            "gpu_count": self.gpu_count,
            "samples_per_s": self.samples_per_s,
        }

    @classmethod
    def from_json(cls, obj: object) -> Capacity:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise RecordError("capacity", "an object", obj)
        return cls(
            cpu_cores=obj.get("cpu_cores", 0.0) or 0.0,
            gpu_model=obj.get("gpu_model"),
            gpu_count=obj.get("gpu_count", 0) or 0,
            samples_per_s=obj.get("samples_per_s"),
        )


def _freeze_models(models: Mapping[str, Any]) -> Mapping[str, tuple[int, ...]]:
    if not isinstance(models, Mapping):
        raise RecordError("models", "an object {model: [versions]}", models)
    if len(models) > MAX_MODELS:
        raise RecordError("models", f"at most {MAX_MODELS} models", len(models))
    frozen: dict[str, tuple[int, ...]] = {}
    for name, versions in models.items():
        check_name("models key", name)
        if not isinstance(versions, list | tuple) or len(versions) > MAX_VERSIONS:
            raise RecordError(f"models[{name!r}]", f"a list of at most {MAX_VERSIONS} versions", versions)
        vs = []
        for v in versions:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RecordError(f"models[{name!r}]", "non-negative integer versions", v)
            vs.append(v)
        frozen[name] = tuple(sorted(set(vs)))
    return MappingProxyType(frozen)


def _freeze_labels(labels: Mapping[str, Any]) -> Mapping[str, str]:
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise RecordError("labels", f"an object of at most {MAX_LABELS} string pairs", labels)
    for k, v in labels.items():
        _check_text("labels key", k)
        _check_text(f"labels[{k!r}]", v)
    return MappingProxyType(dict(labels))


@dataclass(frozen=True, kw_only=True)
class InstanceRecord:
    """One serving pod as published in ZooKeeper. Always valid once built.

    ``weight`` is relative capacity now; it must be > 0 unless the instance is
    disabled or draining, when 0 is allowed. ``models`` maps model names to the
    versions loaded. Times are UTC milliseconds.
    """

    service: str
    id: str
    address: str
    port: int
    ssl_port: int | None = None
    weight: float = 1.0
    capacity: Capacity = field(default_factory=Capacity)
    state: State = State.WARMING
    zone: str = ""
    node: str = ""
    models: Mapping[str, Sequence[int]] = field(default_factory=dict)  # stored as sorted tuples
    labels: Mapping[str, str] = field(default_factory=dict)
    protocol: Protocol = Protocol.WEISERVING
    enabled: bool = True
    registration_time_ms: int = 0
    updated_ms: int = 0
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        check_name("name", self.service)
        check_name("id", self.id)
        if not isinstance(self.address, str) or not ADDRESS_RE.match(self.address):
            raise RecordError("address", "a host name or IP address", self.address)
        _check_port("port", self.port, optional=False)
        _check_port("sslPort", self.ssl_port, optional=True)
        try:
            object.__setattr__(self, "state", State(self.state))
        except ValueError:
            raise RecordError("state", "one of WARMING, SERVING, DRAINING", self.state) from None
        try:
            object.__setattr__(self, "protocol", Protocol(self.protocol))
        except ValueError:
            raise RecordError("protocol", "one of weiserving, oip (a pod this client cannot speak to)",
                              self.protocol) from None
        if not isinstance(self.enabled, bool):
            raise RecordError("enabled", "true or false", self.enabled)
        weight = _check_number("weight", self.weight)
        if weight == 0.0 and self.enabled and self.state is not State.DRAINING:
            raise RecordError("weight", "> 0 unless the instance is draining or disabled", weight)
        object.__setattr__(self, "weight", weight)
        if not isinstance(self.capacity, Capacity):
            raise RecordError("capacity", "a Capacity", self.capacity)
        _check_text("zone", self.zone, 128)
        _check_text("node", self.node, 253)
        object.__setattr__(self, "models", _freeze_models(self.models))
        object.__setattr__(self, "labels", _freeze_labels(self.labels))
        for name in ("registration_time_ms", "updated_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RecordError(name, "non-negative integer milliseconds", v)
        if self.schema != SCHEMA:
            raise RecordError("payload.schema", f"schema {SCHEMA}", self.schema)

    # -- views -----------------------------------------------------------------

    # Cached (the record is immutable): every client reads these for every member on every
    # membership change, 3,000 times per update of a 1,000-member snapshot.
    @cached_property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @cached_property
    def routable(self) -> bool:
        """Enabled, not draining, and with a positive weight."""
        return self.enabled and self.state is not State.DRAINING and self.weight > 0

    def hosts_model(self, model: str, version: int | None = None) -> bool:
        versions = self.models.get(model)
        if versions is None:
            return False
        return version is None or version in versions

    def with_changes(self, **changes: Any) -> InstanceRecord:
        return replace(self, **changes)


def instance_to_json(rec: InstanceRecord) -> dict[str, Any]:
    """The Curator-shaped dict, keys in Curator 5.4's order."""
    payload: dict[str, Any] = {
        "@class": PAYLOAD_CLASS,
        "schema": rec.schema,
        "weight": rec.weight,
        "capacity": rec.capacity.to_json(),
        "state": rec.state.value,
        "zone": rec.zone,
        "node": rec.node,
        "models": {name: list(vs) for name, vs in rec.models.items()},
        "labels": dict(rec.labels),
        "updated_ms": rec.updated_ms,
    }
    if rec.protocol is not Protocol.WEISERVING:  # the default is omitted: older readers see the same bytes
        payload["protocol"] = rec.protocol.value
    return {
        "name": rec.service,
        "id": rec.id,
        "address": rec.address,
        "port": rec.port,
        "sslPort": rec.ssl_port,
        "payload": payload,
        "registrationTimeUTC": rec.registration_time_ms,
        "serviceType": "DYNAMIC",
        "uriSpec": {
            "parts": [
                {"value": "grpc://", "variable": False},
                {"value": "address", "variable": True},
                {"value": ":", "variable": False},
                {"value": "port", "variable": True},
            ]
        },
        "enabled": rec.enabled,
    }


def encode_instance(rec: InstanceRecord) -> bytes:
    data = json.dumps(instance_to_json(rec), separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError("record", f"at most {MAX_RECORD_BYTES} bytes of JSON", len(data))
    return data


def instance_from_json(obj: object) -> InstanceRecord:
    """Build a record from a decoded Curator instance; raises :class:`RecordError`."""
    if not isinstance(obj, dict):
        raise RecordError("record", "a JSON object", type(obj).__name__)
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise RecordError("payload", "a WeiServing payload object (foreign Curator instance?)", payload)
    schema = payload.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise RecordError("payload.schema", "an integer (foreign Curator payload?)", schema)
    if schema > SCHEMA or schema < 1:
        raise RecordError("payload.schema", f"a schema in 1..{SCHEMA}", schema)
    for key in ("name", "id", "address", "port"):
        if key not in obj:
            raise RecordError(key, "present", None)
    try:
        return InstanceRecord(
            service=obj["name"],
            id=obj["id"],
            address=obj["address"],
            port=obj["port"],
            ssl_port=obj.get("sslPort"),
            weight=payload.get("weight", 0.0),
            capacity=Capacity.from_json(payload.get("capacity")),
            state=payload.get("state", State.SERVING.value),
            zone=payload.get("zone") or "",
            node=payload.get("node") or "",
            models=payload.get("models") or {},
            labels=payload.get("labels") or {},
            protocol=payload.get("protocol", Protocol.WEISERVING.value),
            enabled=obj.get("enabled", True),
            registration_time_ms=obj.get("registrationTimeUTC", 0) or 0,
            updated_ms=payload.get("updated_ms", 0) or 0,
            schema=schema,
        )
    except TypeError as e:  # a field of the wrong JSON type deep inside
        raise RecordError("record", "fields of the documented types", str(e)) from None


def decode_instance(data: bytes | None) -> InstanceRecord:
    """Parse a node's bytes; raises :class:`RecordError` saying what was wrong."""
    if data is None or len(data) == 0:
        raise RecordError("record", "JSON bytes", "empty node")
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError("record", f"at most {MAX_RECORD_BYTES} bytes", len(data))
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RecordError("record", "UTF-8 JSON", f"{type(e).__name__}: {e}") from None
    return instance_from_json(obj)


def decode_member(data: bytes | None, *, service: str, node: str) -> InstanceRecord:
    """Parse the node ``{service}/{node}``: a valid record that names that service and id.

    A record under another node's name (a copy, an impostor) is refused like garbage.
    """
    rec = decode_instance(data)
    if rec.id != node or rec.service != service:
        raise RecordError("id/name", f"id {node!r} and name {service!r}", f"{rec.id!r}/{rec.service!r}")
    return rec
