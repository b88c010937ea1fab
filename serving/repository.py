"""The model repository: ``DIR/{model}/{version}/``, version policies, hot reload.

:class:`ModelManager` owns every loaded version. ``poll_once`` is the whole
reload algorithm and the only writer; a background thread merely calls it
every ``poll_interval_s``:

1. scan the directory; the version policy picks the versions to serve;
2. load each new version, warm it up (stored requests in
   ``assets.extra/warmup.msgpack``, else synthetic zero batches built from
   the signature) before it takes traffic; a version that fails to load or
   warm up is recorded and not retried until its directory changes, and the
   versions already serving keep serving;
3. publish a new immutable snapshot with one reference swap (atomic for
   readers), and only then retire versions the policy dropped;
4. unload retired versions once their in-flight requests have finished
   (checked on each poll, never blocking a request).

Readers call :meth:`acquire` and :meth:`LoadedVersion.release` around a request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

import msgpack
import numpy as np

from protocol.wire import TENSOR_EXT_CODE, unpack_tensor
from serving.backends import Backend, load_backend
from serving.batching import Runner, make_runner
from serving.config import ModelConfig, ServerConfig
from serving.errors import ModelLoadError, ModelNotFound, ServingError

log = logging.getLogger("serving.repository")
WARMUP_FILE = Path("assets.extra") / "warmup.msgpack"


class VersionState(StrEnum):
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"     # retired: finishing its in-flight requests
    END = "END"


class LoadedVersion:
    """A loaded, warmed model version; counts its in-flight requests."""

    def __init__(self, model: str, version: int, path: Path, backend: Backend,
                 runner: Runner, config: ModelConfig) -> None:
        self.model, self.version, self.path = model, version, path
        self.backend, self.runner, self.config = backend, runner, config
        self.signature = backend.signature
        self.state = VersionState.AVAILABLE
        self._in_flight = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"LoadedVersion({self.model!r}, {self.version}, {self.state}, "
                f"in_flight={self._in_flight})")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        with self._lock:
            if self.state is not VersionState.AVAILABLE:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def retire(self) -> None:
        with self._lock:
            self.state = VersionState.UNLOADING

    def try_unload(self, *, force: bool = False, timeout: float | None = None) -> bool:
        """Unload if retired and idle (or ``force``); True once unloaded."""
        with self._lock:
            if self.state is VersionState.END:
                return True
            if not force and (self.state is not VersionState.UNLOADING or self._in_flight):
                return False
            self.state = VersionState.END
        self.runner.close(timeout)
        self.backend.close()
        return True


LoadedModels = Mapping[str, Mapping[int, LoadedVersion]]


@dataclass(frozen=True, kw_only=True)
class ReloadEvent:
    model: str
    version: int
    action: str                # "loaded" | "failed" | "retired" | "unloaded"
    detail: str = ""


def scan(models_dir: Path) -> dict[str, dict[int, Path]]:
    """Model name -> {version: path}; hidden and non-numeric entries are ignored."""
    found: dict[str, dict[int, Path]] = {}
    if not models_dir.is_dir():
        return found
    for model in sorted(models_dir.iterdir()):
        if model.name.startswith(".") or not model.is_dir():
            continue
        found[model.name] = {int(v.name): v for v in model.iterdir()
                             if v.is_dir() and v.name.isdigit()}
    return found


def _tree_mtime(path: Path) -> float:
    """Newest mtime under ``path``: a failed version is retried once anything in it changes
    (a copy still in progress rewrites files without touching the directory's own mtime)."""
    newest = path.stat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


def warmup_inputs(version: LoadedVersion) -> list[dict[str, np.ndarray]]:
    """Stored warm-up requests when the model ships them, else synthetic zero batches."""
    stored = version.path / WARMUP_FILE
    if stored.is_file():
        def ext_hook(code: int, data: bytes) -> object:
            if code != TENSOR_EXT_CODE:
                raise ModelLoadError(f"{stored}: unknown ext type {code}")
            return unpack_tensor(data)
        requests = msgpack.unpackb(stored.read_bytes(), ext_hook=ext_hook, raw=False)
        return [r["inputs"] for r in requests]
    b = version.config.batching
    sizes = b.allowed_batch_sizes or (1, min(b.max_batch_size, 64))
    return [{n: s.example(rows) for n, s in version.signature.inputs.items()} for rows in sizes]


class ModelManager:
    def __init__(self, config: ServerConfig, *,
                 on_change: Callable[[LoadedModels], None] | None = None,
                 load: Callable[[Path, str], Backend] = load_backend) -> None:
        self.config = config
        self._on_change = on_change
        self._load = load
        self._snapshot: LoadedModels = MappingProxyType({})
        self._retired: list[LoadedVersion] = []
        self.failures: dict[tuple[str, int], str] = {}
        self._failed_mtime: dict[tuple[str, int], float] = {}
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def snapshot(self) -> LoadedModels:
        return self._snapshot

    def acquire(self, model: str, version: int | None) -> LoadedVersion:
        """The version to serve (None = the latest loaded), with its in-flight count taken."""
        for _ in range(3):   # a reload may retire what we read between lookup and acquire
            versions = self._snapshot.get(model)
            if not versions:
                raise ModelNotFound(f"model {model!r} is not loaded; loaded models: "
                                    f"{sorted(self._snapshot)}")
            v = max(versions) if version is None else version
            lv = versions.get(v)
            if lv is None:
                raise ModelNotFound(f"model {model!r} has no loaded version {version}; "
                                    f"loaded versions: {sorted(versions)}")
            if lv.try_acquire():
                return lv
        raise ModelNotFound(f"model {model!r} version {version} is unloading; retry")

    # ------------------------------------------------------------------ reload

    def poll_once(self) -> list[ReloadEvent]:
        with self._poll_lock:
            events: list[ReloadEvent] = []
            on_disk = scan(self.config.models_dir)
            current = {m: dict(vs) for m, vs in self._snapshot.items()}
            retire: list[LoadedVersion] = []
            for model in sorted(set(on_disk) | set(current)):
                paths = on_disk.get(model, {})
                wanted = self.config.model(model).version_policy.select(sorted(paths))
                loaded = current.setdefault(model, {})
                for v in sorted(wanted - set(loaded)):
                    lv = self._load_version(model, v, paths[v], events)
                    if lv is not None:
                        loaded[v] = lv
                # A dropped version keeps serving until every wanted version is
                # loaded (a new version that failed must not leave a gap), unless
                # its directory is gone.
                complete = wanted <= set(loaded)
                for v in sorted(set(loaded) - wanted):
                    if complete or v not in paths:
                        retire.append(loaded.pop(v))
                if not loaded:
                    del current[model]
            if retire or any(e.action == "loaded" for e in events):
                self._snapshot = MappingProxyType(
                    {m: MappingProxyType(vs) for m, vs in current.items()})
                if self._on_change is not None:
                    self._on_change(self._snapshot)
            for lv in retire:
                lv.retire()
                self._retired.append(lv)
                events.append(ReloadEvent(model=lv.model, version=lv.version, action="retired"))
            events += self._reap()
            for e in events:
                log.info("model %s version %s %s %s", e.model, e.version, e.action, e.detail)
            return events

    def _load_version(self, model: str, version: int, path: Path,
                      events: list[ReloadEvent]) -> LoadedVersion | None:
        key = (model, version)
        mtime = _tree_mtime(path)
        if self._failed_mtime.get(key) == mtime:
            return None
        cfg = self.config.model(model)
        backend = None
        try:
            backend = self._load(path, cfg.platform)
            runner = make_runner(backend, cfg.batching, name=f"{model}-{version}")
            lv = LoadedVersion(model, version, path, backend, runner, cfg)
            if cfg.warmup:
                self._warm_up(lv)
        except Exception as exc:
            if backend is not None:
                backend.close()
            detail = str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            self.failures[key] = detail
            self._failed_mtime[key] = mtime
            events.append(ReloadEvent(model=model, version=version, action="failed",
                                      detail=detail))
            return None
        self.failures.pop(key, None)
        events.append(ReloadEvent(model=model, version=version, action="loaded"))
        return lv

    @staticmethod
    def _warm_up(lv: LoadedVersion) -> None:
        for inputs in warmup_inputs(lv):
            try:
                rows = lv.signature.validate(inputs, lv.model)
                lv.runner.submit(inputs, rows).result(timeout=300)
            except Exception as exc:
                lv.runner.close()
                raise ModelLoadError(f"warm-up failed: {exc}") from exc
        lv.runner.stats.reset()    # warm-up must not count as traffic

    def _reap(self) -> list[ReloadEvent]:
        events = []
        for lv in list(self._retired):
            if lv.try_unload():
                self._retired.remove(lv)
                events.append(ReloadEvent(model=lv.model, version=lv.version, action="unloaded"))
        return events

    @property
    def retired(self) -> tuple[LoadedVersion, ...]:
        return tuple(self._retired)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Poll in a background thread (the first poll has already run in ``load_all``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll_loop, name="model-reload",
                                            daemon=True)
            self._thread.start()

    def _poll_loop(self) -> None:
        # Loading and warm-up compete with serving for the CPU: run them at a lower
        # priority (Linux sets niceness per thread) so other models' p99 suffers less.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                self.poll_once()
            except Exception:  # never let the reload thread die; log and go on
                log.exception("model reload poll failed")

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop polling and unload everything (after the server has drained).

        ``timeout`` bounds the wait for each version's batch threads.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._poll_lock:
            for versions in self._snapshot.values():
                for lv in versions.values():
                    lv.retire()
                    self._retired.append(lv)
            self._snapshot = MappingProxyType({})
            for lv in self._retired:
                lv.try_unload(force=True, timeout=timeout)
            self._retired.clear()
