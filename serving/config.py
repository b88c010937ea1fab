"""Configuration: frozen keyword-only dataclasses, validated on construction.

Batching knobs carry TensorFlow Serving's names; their defaults are sized for
ranking calls of 1,000-2,000 candidate rows and argued on
:class:`BatchingConfig`. A config file (TOML) sets server options, batching
defaults and per-model overrides::

    [server]                      # any ServerConfig field except models_dir
    port = 8500
    [batching]                    # defaults for every model
    max_batch_size = 256
    batch_timeout_micros = 1000
    [models.ctr]
    version_policy = "latest:2"   # or "all", or "specific:1,3"
    platform = "tensorflow"       # or "python", "pytorch", "auto" (default)
    [models.ctr.batching]
    slo_p99_ms = 20.0             # SLO mode: size batches online for this p99
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serving.errors import ConfigError

PLATFORMS = ("auto", "tensorflow", "python", "pytorch")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be > 0, got {value}")


@dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """Dynamic batching for one model (TF Serving names; SLO mode after Clipper's AIMD).

    The defaults are for ranking calls of 1,000-2,000 candidate rows, each a
    batch on its own, beside smaller calls that gain from company. Figures:
    the models of ``bench/batching.py``, arms run side by side on 2 shared
    CPUs. One model call costs a fixed part plus a part per row: ctr 0.31 ms
    at 4 rows, 1.28 ms at 1,000, 1.77 ms at 2,000; ctr_heavy 1.0, 14.4 and
    26.9 ms.

    ``max_batch_size=1000`` (TF Serving's): smaller calls are combined up to
    1,000 rows; a larger call is a batch by itself, run whole and at once
    beside the batches in progress (see :mod:`serving.batching.core`), as it
    would run unbatched. Four callers sending 2,000-row calls to ctr got 97 %
    of the unbatched throughput that way (within the trials' spread), against
    77 % when such calls waited for the batch thread
    (``max_batch_size=2048``). The queue bound is ``max_enqueued_batches`` x
    1,000 rows.

    ``batch_timeout_micros=0``: a batch starts as soon as a thread is free.
    Batches still grow while the thread is busy, which is when combining
    pays, and a lone call never waits. Waiting buys throughput only when the
    server is saturated with small calls (4-row calls to ctr from 32 callers:
    2,000 us gave x1.20 the requests/s of 0, while every call waits up to
    that long); raise it for such a model.

    ``num_batch_threads=1``: batches below the limit run one at a time. The
    model spreads one batch over the cores already (TensorFlow's intra-op
    threads), so a second batch at once adds no compute, only contention, and
    halves the batches: 4-row calls from 32 callers, 1 thread against 2: x1.19
    the requests/s for ctr, x1.22 for ctr_heavy. Large calls are not bound by it
    (above). Set 2 on GPU pods, so the next batch is assembled while the
    device runs one. A call that finds the thread free runs the batch on its
    own (gRPC) thread: an idle server adds no thread hand-off.

    ``allowed_batch_sizes=()``: no padding. TensorFlow graphs and PyTorch run
    any batch size without recompiling, and padding a 520-row batch to 1,000
    would nearly double its cost; set sizes for a compiler that specialises
    each shape (XLA, TensorRT). Sizes imply ``split_requests``.

    ``split_requests=False``: requests are never cut (a cut call waits for
    several batches and is copied back together). Set it where memory bounds
    a batch (a GPU) to cut requests into ``max_batch_size`` parts and fill
    every batch, as TF Serving's large-batch splitting does.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 1
    allowed_batch_sizes: tuple[int, ...] = ()
    split_requests: bool = False
    enabled: bool = True
    # SLO mode: with a target p99 (ms) the batch size limit moves online: +step
    # rows after a full batch processed within the target, x decrease after
    # one that took longer (Clipper's AIMD; see serving.batching.slo).
    slo_p99_ms: float | None = None
    slo_additive_step: int = 4
    slo_decrease_factor: float = 0.9
    # Admission (see serving.batching.admission): refuse at once a call that cannot finish
    # within its deadline at the measured pace, or would wait longer than max_queue_delay_ms
    # (None: 3 mean batch times, at least 250 ms; 0: no wait bound, deadlines still count).
    admission: bool = True
    max_queue_delay_ms: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_batch_sizes", tuple(self.allowed_batch_sizes))
        _positive(self, "max_batch_size", "max_enqueued_batches", "num_batch_threads",
                  "slo_p99_ms", "slo_additive_step")
        if self.batch_timeout_micros < 0:
            raise ConfigError("BatchingConfig.batch_timeout_micros must be >= 0")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] <= 0:
                raise ConfigError(f"allowed_batch_sizes must be increasing and > 0: {sizes}")
            if sizes[-1] != self.max_batch_size:
                raise ConfigError(f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                                  f"max_batch_size ({self.max_batch_size}), as in TF Serving")
        if not 0 < self.slo_decrease_factor < 1:
            raise ConfigError("BatchingConfig.slo_decrease_factor must be in (0, 1)")
        if self.max_queue_delay_ms is not None and not (
                isinstance(self.max_queue_delay_ms, int | float) and 0 <= self.max_queue_delay_ms < float("inf")):
            raise ConfigError(f"BatchingConfig.max_queue_delay_ms must be a finite number >= 0, "
                              f"got {self.max_queue_delay_ms!r}")

    @property
    def splits_requests(self) -> bool:
        return self.split_requests or bool(self.allowed_batch_sizes)

    @property
    def batch_timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    @property
    def max_queued_rows(self) -> int:
        return self.max_enqueued_batches * self.max_batch_size


@dataclass(frozen=True, kw_only=True)
class VersionPolicy:
    """Which versions of a model to serve: the latest N, all, or specific ones."""

    kind: Literal["latest", "all", "specific"] = "latest"
    latest: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ConfigError(f"version policy must be latest, all or specific: {self.kind!r}")
        if self.kind == "latest" and self.latest < 1:
            raise ConfigError("version policy latest:N needs N >= 1")
        if self.kind == "specific" and not self.versions:
            raise ConfigError("version policy specific needs at least one version")

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest``, ``latest:N``, ``all`` or ``specific:1,3``."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                return cls(kind="latest", latest=int(arg) if arg else 1)
            if kind == "specific":
                return cls(kind="specific", versions=tuple(int(v) for v in arg.split(",")))
        except ValueError:
            raise ConfigError(f"bad version policy {text!r}: expected latest:N or "
                              f"specific:1,2") from None
        if kind == "all" and not arg:
            return cls(kind="all")
        raise ConfigError(f"bad version policy {text!r}: expected latest[:N], all, specific:V,..")

    def select(self, available: list[int]) -> set[int]:
        """The versions to serve out of those on disk."""
        if self.kind == "all":
            return set(available)
        if self.kind == "latest":
            return set(sorted(available)[-self.latest:])
        return set(self.versions) & set(available)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Per-model settings; models found on disk without an entry get the defaults."""

    platform: str = "auto"
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ConfigError(f"platform must be one of {PLATFORMS}, got {self.platform!r}")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The model server process. ``port=0`` / ``status_port=0`` pick free ports."""

    models_dir: Path
    host: str = "[::]"
    port: int = 8500
    status_host: str = "127.0.0.1"
    status_port: int | None = 8502
    poll_interval_s: float = 1.0
    grace_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    grpc_workers: int = 64
    defaults: ModelConfig = field(default_factory=ModelConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models_dir", Path(self.models_dir))
        _positive(self, "poll_interval_s", "max_message_bytes", "grpc_workers")
        for name in ("port", "status_port"):    # a socket binds 70000 as 70000 % 65536 = 4464
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"ServerConfig.{name} must be a port in 0..65535 (0 picks a "
                                  f"free one), got {value}")
        if self.grace_s < 0:
            raise ConfigError("ServerConfig.grace_s must be >= 0")

    def model(self, name: str) -> ModelConfig:
        return self.models.get(name, self.defaults)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _model_config(data: dict[str, Any], batching: dict[str, Any], where: str) -> ModelConfig:
    data = dict(data)
    merged = {**batching, **data.pop("batching", {})}
    policy = data.pop("version_policy", None)
    kwargs: dict[str, Any] = {"batching": _build(BatchingConfig, merged, f"{where}.batching")}
    if policy is not None:
        kwargs["version_policy"] = VersionPolicy.parse(str(policy))
    return _build(ModelConfig, {**data, **kwargs}, where)


def load_config(path: Path | None, *, models_dir: Path,
                overrides: dict[str, Any] | None = None) -> ServerConfig:
    """Read a TOML config file (optional); ``overrides`` are CLI flags set explicitly.

    ``overrides`` may hold ServerConfig fields and a ``batching`` dict that
    takes precedence over the file's batching defaults.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
    overrides = dict(overrides or {})
    unknown = set(data) - {"server", "batching", "models"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
    batching = {**data.get("batching", {}), **overrides.pop("batching", {})}
    defaults = _model_config({}, batching, "batching")
    models = {name: _model_config(m, batching, f"models.{name}")
              for name, m in data.get("models", {}).items()}
    server = {**data.get("server", {}), **overrides}
    return _build(ServerConfig, {**server, "models_dir": models_dir, "defaults": defaults,
                                 "models": models}, "server")
