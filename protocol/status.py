"""The model server's status document: one schema, one producer, one reader.

``wei-serve`` answers ``GET /status`` with :meth:`StatusDoc.to_json`; the
sidecar agent reads it with :meth:`StatusDoc.from_json`. A team that runs its
own model server behind ``wei-agent`` answers the same document::

    {"schema": 1, "phase": "serving", "ready": true, "draining": false, "port": 8500,
     "in_flight": 3,
     "models": {"ctr": {
         "versions": {"2": {"state": "AVAILABLE", "in_flight": 3, "queue_rows": 40}},
         "ready": true, "in_flight": 3, "queue_rows": 40,
         "latency_ms": {"p50": 2.1, "p90": 3.4, "p99": 6.0, "ewma": 2.4},
         "batching": {"batch_fill": 0.6, "batches": 812, "rows": 51234,
                      "batch_size_limit": 256, "queue_delay_ms": 0.8},
         "capacity": {"rows_per_s": 41000.0, "max_batch_size": 256.0},
         "work": {"busy_s": 12.5, "rows": 51234, "requests": 812, "batches": 812,
                  "batch_threads": 2},
         "window": {"span_s": 10.0, "rows_per_s": 3300.0, "requests_per_s": 52.0,
                    "busy_fraction": 0.4, "mean_batch_rows": 63.1}}},
     "load_failures": {"ctr/3": "why version 3 did not load"}}

What the figures mean (per model; its newest version's runner, except the
per-version and summed counts):

- ``work``: counters since the version was loaded, never decreasing: time
  inside the model summed over the batch threads (``busy_s``), rows,
  requests and batches completed. A reader that polls takes differences:
  ``rows / busy_s x batch_threads`` over its own interval is the rows per
  second the model can do at the batch sizes it ran.
- ``window``: the last ``span_s`` seconds (10 s when the server is older):
  throughput, busy fraction (0..1), mean rows per batch.
- ``latency_ms``: percentiles over the same window; null when no request
  finished in it, so an idle server's old tail ages out (``ewma`` does not).
- ``capacity.rows_per_s``: the window's throughput / busy fraction; null
  while the window holds too little model time to tell.

Reading is lenient where a newer or smaller producer may differ, strict
where a value is wrong:

- unknown fields are skipped at every level (a newer producer may add some);
- a missing field is unknown: ``None`` for figures, ``False`` for ``ready``
  (a server that does not say it is ready is not), empty for maps;
- a field that is present with the wrong type, a negative or non-finite
  figure, a version key that is not a non-negative integer, or a document
  that is not a JSON object is refused with :class:`StatusError`, naming
  the field and what was expected.

``schema`` is 1 here; a document without it is read as schema 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = ["SCHEMA_VERSION", "Batching", "CapacityHint", "Latency", "ModelStatus", "StatusDoc", "StatusError",
           "VersionStatus", "Window", "Work"]

SCHEMA_VERSION = 1
T = TypeVar("T")


class StatusError(ValueError):
    """A status document that cannot be read; the message names the field and what was expected."""


def _check(cond: bool, where: str, expected: str, got: Any) -> None:
    if not cond:
        raise StatusError(f"status document: {where}: expected {expected}, got {_show(got)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _figure(where: str, value: Any) -> float | None:
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int | float) and abs(value) < 1e300
    _check(ok and math.isfinite(value) and value >= 0, where, "a finite number >= 0", value)
    return float(value)


def _count(where: str, value: Any) -> int | None:
    if value is None:
        return None
    _check(not isinstance(value, bool) and isinstance(value, int) and value >= 0, where, "an integer >= 0", value)
    return value


def _flag(where: str, value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    _check(isinstance(value, bool), where, "true or false", value)
    return value


def _text(where: str, value: Any) -> str | None:
    if value is None:
        return None
    _check(isinstance(value, str), where, "a string", value)
    return value


def _object(where: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    _check(isinstance(value, Mapping), where, "an object", value)
    return value


def _parts(cls: type[T], where: str, obj: Any, readers: Mapping[str, Callable[[str, Any], Any]]) -> T:
    """``cls`` from the known keys of ``obj`` (unknown keys skipped, missing ones passed as None)."""
    obj = _object(where, obj)
    return cls(**{name: read(f"{where}.{name}", obj.get(name)) for name, read in readers.items()})


@dataclass(frozen=True, kw_only=True, slots=True)
class Latency:
    """Milliseconds inside the server (queue + model) over its recent requests."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    ewma: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Batching:
    batch_fill: float | None = None
    batches: int | None = None
    rows: int | None = None
    batch_size_limit: int | None = None
    queue_delay_ms: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CapacityHint:
    """Rows per second the newest version can do at its recent batch sizes (None = unknown)."""

    rows_per_s: float | None = None
    max_batch_size: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Work:
    """Counters since load (see the module docstring): a poller's differences are exact."""

    busy_s: float | None = None
    rows: int | None = None
    requests: int | None = None
    batches: int | None = None
    batch_threads: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Window:
    span_s: float | None = None
    rows_per_s: float | None = None
    requests_per_s: float | None = None
    busy_fraction: float | None = None
    mean_batch_rows: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionStatus:
    state: str | None = None
    in_flight: int | None = None
    queue_rows: int | None = None


@dataclass(frozen=True, kw_only=True)
class ModelStatus:
    versions: Mapping[int, VersionStatus] = field(default_factory=dict)
    ready: bool = False
    in_flight: int | None = None
    queue_rows: int | None = None
    latency_ms: Latency = field(default_factory=Latency)
    batching: Batching = field(default_factory=Batching)
    capacity: CapacityHint = field(default_factory=CapacityHint)
    work: Work = field(default_factory=Work)
    window: Window = field(default_factory=Window)

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", MappingProxyType(dict(sorted(self.versions.items()))))


@dataclass(frozen=True, kw_only=True)
class StatusDoc:
    """One ``GET /status`` answer; see the module docstring for the JSON and the reading rules."""

    schema: int = SCHEMA_VERSION
    phase: str | None = None
    ready: bool = False
    draining: bool = False
    port: int | None = None
    in_flight: int | None = None
    models: Mapping[str, ModelStatus] = field(default_factory=dict)
    load_failures: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "load_failures", MappingProxyType(dict(self.load_failures)))

    # -- what readers ask of it ----------------------------------------------------

    @property
    def routable(self) -> bool:
        """Ready and not draining: the server says it may take traffic."""
        return self.ready and not self.draining

    def hosted(self) -> dict[str, list[int]]:
        """``{model: [versions]}`` as loaded, for the registry record."""
        return {name: sorted(m.versions) for name, m in self.models.items()}

    def worst_latency_ms(self, which: str) -> float | None:
        """The slowest model's ``p50``/``p90``/``p99``/``ewma``; None when no model reports it."""
        known = [v for m in self.models.values() if (v := getattr(m.latency_ms, which)) is not None]
        return max(known) if known else None

    def busiest_fraction(self) -> float | None:
        """The busiest model's batch-thread busy fraction over its window; None when none says."""
        known = [m.window.busy_fraction for m in self.models.values()
                 if m.window is not None and m.window.busy_fraction is not None]
        return max(known) if known else None

    def queue_rows(self) -> int | None:
        """Rows queued over all models; None when no model reports its queue."""
        known = [m.queue_rows for m in self.models.values() if m.queue_rows is not None]
        return sum(known) if known else None

    # -- JSON ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("models", "load_failures")}
        out["models"] = {name: _model_dict(m) for name, m in self.models.items()}
        out["load_failures"] = dict(self.load_failures)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> StatusDoc:
        """Read a document (text, bytes or an already parsed object); raises :class:`StatusError`."""
        obj: Any = data
        if isinstance(data, str | bytes | bytearray):
            try:
                obj = json.loads(data)
            except (ValueError, UnicodeDecodeError) as e:
                raise StatusError(f"status document: not JSON: {e}") from None
        _check(isinstance(obj, Mapping), "the document", "a JSON object", obj)
        schema = obj.get("schema", SCHEMA_VERSION)
        _check(not isinstance(schema, bool) and isinstance(schema, int) and schema >= 1, "schema",
               "an integer >= 1", schema)
        failures = _object("load_failures", obj.get("load_failures"))
        for key, why in failures.items():
            _check(isinstance(why, str), f"load_failures[{key!r}]", "a string", why)
        return cls(schema=schema, phase=_text("phase", obj.get("phase")),
                   ready=_flag("ready", obj.get("ready")), draining=_flag("draining", obj.get("draining")),
                   port=_count("port", obj.get("port")), in_flight=_count("in_flight", obj.get("in_flight")),
                   models={name: _read_model(f"models[{name!r}]", m)
                           for name, m in _object("models", obj.get("models")).items()},
                   load_failures=failures)


def _model_dict(m: ModelStatus) -> dict[str, Any]:
    return {"versions": {str(v): asdict(vs) for v, vs in m.versions.items()}, "ready": m.ready,
            "in_flight": m.in_flight, "queue_rows": m.queue_rows, "latency_ms": asdict(m.latency_ms),
            "batching": asdict(m.batching), "capacity": asdict(m.capacity), "work": asdict(m.work),
            "window": asdict(m.window)}


def _version_key(where: str, key: Any) -> int:
    _check(isinstance(key, str) and key.isascii() and key.isdigit(), where, "a version number as its key", key)
    return int(key)


_LATENCY = {"p50": _figure, "p90": _figure, "p99": _figure, "ewma": _figure}
_BATCHING = {"batch_fill": _figure, "batches": _count, "rows": _count, "batch_size_limit": _count,
             "queue_delay_ms": _figure}
_CAPACITY = {"rows_per_s": _figure, "max_batch_size": _figure}
_VERSION = {"state": _text, "in_flight": _count, "queue_rows": _count}
_WORK = {"busy_s": _figure, "rows": _count, "requests": _count, "batches": _count, "batch_threads": _count}
_WINDOW = {"span_s": _figure, "rows_per_s": _figure, "requests_per_s": _figure, "busy_fraction": _figure,
           "mean_batch_rows": _figure}


def _read_model(where: str, obj: Any) -> ModelStatus:
    obj = _object(where, obj)
    versions = {_version_key(f"{where}.versions", key): _parts(VersionStatus, f"{where}.versions[{key!r}]", v, _VERSION)
                for key, v in _object(f"{where}.versions", obj.get("versions")).items()}
    return ModelStatus(versions=versions, ready=_flag(f"{where}.ready", obj.get("ready")),
                       in_flight=_count(f"{where}.in_flight", obj.get("in_flight")),
                       queue_rows=_count(f"{where}.queue_rows", obj.get("queue_rows")),
                       latency_ms=_parts(Latency, f"{where}.latency_ms", obj.get("latency_ms"), _LATENCY),
                       batching=_parts(Batching, f"{where}.batching", obj.get("batching"), _BATCHING),
                       capacity=_parts(CapacityHint, f"{where}.capacity", obj.get("capacity"), _CAPACITY),
                       work=_parts(Work, f"{where}.work", obj.get("work"), _WORK),
                       window=_parts(Window, f"{where}.window", obj.get("window"), _WINDOW))
