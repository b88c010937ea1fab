"""Capacity: how much work this pod can do, as a :class:`registry.records.Capacity` and a score.

CPU cores come from the cgroup CPU quota, the limit the kernel enforces (v2
``cpu.max``; v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), taking the
tightest limit on the path from our cgroup up to the mount root; without a
quota, from the CPUs we may run on (``sched_getaffinity``, else
``os.cpu_count``). GPUs come from a command that prints one GPU name per line
(``nvidia-smi --query-gpu=name --format=csv,noheader``); no command, no GPUs.
A start-up calibration (:func:`calibrate`) replaces guesses by measured
samples per second.

The score (:func:`capacity_score`) is what the weight controller scales: the
calibrated samples/s when there is one, else core-equivalents (cores plus
``gpu_core_equivalents`` per GPU). Weights are relative, so every pod of one
service should use the same method; mixing calibrated and uncalibrated pods
compares samples/s with cores.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from registry.records import Capacity

from ._proc import run_bounded
from .config import CalibrationConfig, CapacityConfig
from .errors import CalibrationError
from .k8s import PodInfo, pod_info_from_env

__all__ = [
    "Calibration",
    "CapacityReport",
    "GpuInfo",
    "available_cpus",
    "calibrate",
    "capacity_score",
    "cgroup_cpu_limit",
    "detect_capacity",
    "detect_gpus",
    "parse_cfs",
    "parse_cpu_max",
]

V1_CPU_MOUNTS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


# -- CPU -------------------------------------------------------------------------


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` ("200000 100000" -> 2.0; "max 100000" -> None = unlimited)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000  # the kernel's default period
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a quota of -1 means unlimited."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _own_cgroup_paths(proc_self_cgroup: Path) -> tuple[str, str]:
    """(v2 path, v1 cpu path) from ``/proc/self/cgroup``; "/" when unknown."""
    v2 = v1 = "/"
    for line in (_read(proc_self_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _ancestors(base: Path, cgroup_path: str) -> list[Path]:
    """``base/a/b/c``, ``base/a/b``, ``base/a``, ``base``: every level may carry a quota."""
    parts = PurePosixPath(cgroup_path).parts[1:]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path, proc_self_cgroup: Path) -> tuple[float | None, str]:
    """The tightest CPU quota in cores (None = unlimited or no cgroup), and where it came from.

    Inside a container with its own cgroup namespace our cgroup is the mount
    root; without one, ``/proc/self/cgroup`` names the path below the root.
    Directories that do not exist (a path from another namespace) are skipped.
    """
    v2_path, v1_path = _own_cgroup_paths(proc_self_cgroup)
    limits: list[tuple[float, str]] = []
    if (root / "cgroup.controllers").exists() or (root / "cpu.max").exists():
        for d in _ancestors(root, v2_path):
            text = _read(d / "cpu.max")
            cores = parse_cpu_max(text) if text is not None else None
            if cores is not None:
                limits.append((cores, f"cgroup v2 {d / 'cpu.max'}"))
        version = "v2"
    else:
        version = "v1"
        for mount in V1_CPU_MOUNTS:
            if not (root / mount).is_dir():
                continue
            for d in _ancestors(root / mount, v1_path):
                quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                cores = parse_cfs(quota, period) if quota is not None and period is not None else None
                if cores is not None:
                    limits.append((cores, f"cgroup v1 {d / 'cpu.cfs_quota_us'}"))
            break
    if not limits:
        return None, f"no CPU quota in cgroup {version} under {root}"
    return min(limits)


def available_cpus() -> int:
    """CPUs this process may run on (affinity, as a cpuset pins them), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- GPU -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuInfo:
    model: str | None
    count: int
    note: str = ""


def detect_gpus(command: Sequence[str], timeout: float) -> GpuInfo:
    """GPU model and count from ``command`` (one name per line). Absent or failing: 0 GPUs.

    Mixed models (rare in one pod) report the most common one: the record has
    one ``gpu_model`` field, and the count still covers all of them.
    """
    done = run_bounded(command, timeout)
    if done.returncode is None:
        return GpuInfo(None, 0, f"no GPUs: {done.error}")
    if done.returncode != 0:
        return GpuInfo(None, 0, f"no GPUs: {command[0]} exited {done.returncode}")
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if not names:
        return GpuInfo(None, 0, "no GPUs listed")
    model, _ = Counter(names).most_common(1)[0]
    note = f"{len(names)} GPU(s): {', '.join(sorted(set(names)))}"
    return GpuInfo(model[:128], len(names), note)


# -- calibration -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration:
    best_batch_size: int
    samples_per_s: float
    table: tuple[tuple[int, float, float], ...]  # (batch size, median seconds, samples/s)
    skipped: Mapping[int, str]


def calibrate(measure: Callable[[int], float], config: CalibrationConfig | None = None) -> Calibration:
    """Throughput at the best batch size; ``measure(batch_size)`` runs one batch and returns seconds.

    Pure over ``measure``: no clock, no model here. A size whose calls raise or
    return a non-positive time is skipped with the reason; none usable raises
    :class:`CalibrationError` (the caller falls back to core-equivalents).
    """
    cfg = config or CalibrationConfig()
    table: list[tuple[int, float, float]] = []
    skipped: dict[int, str] = {}
    for batch in cfg.batch_sizes:
        try:
            for _ in range(cfg.warmup):
                measure(batch)
            times = [float(measure(batch)) for _ in range(cfg.repeats)]
        except Exception as e:
            skipped[batch] = f"{type(e).__name__}: {e}"
            continue
        median = statistics.median(times)
        if not (math.isfinite(median) and median > 0):
            skipped[batch] = f"measured {median!r} s"
        elif cfg.max_latency_s is not None and median > cfg.max_latency_s:
            skipped[batch] = f"{median * 1000:.1f} ms exceeds max_latency_s {cfg.max_latency_s:g}"
        else:
            table.append((batch, median, batch / median))
    if not table:
        raise CalibrationError(skipped)
    best = max(table, key=lambda row: row[2])
    return Calibration(best[0], best[2], tuple(table), skipped)


# -- the whole picture -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapacityReport:
    capacity: Capacity
    score: float
    pod: PodInfo
    notes: tuple[str, ...]


def capacity_score(capacity: Capacity, config: CapacityConfig | None = None) -> float:
    """Calibrated samples/s, else cores + ``gpu_core_equivalents`` per GPU; always > 0."""
    cfg = config or CapacityConfig()
    if capacity.samples_per_s:
        return capacity.samples_per_s
    score = capacity.cpu_cores + capacity.gpu_count * cfg.gpu_core_equivalents
    return score if score > 0 else 1.0


def detect_capacity(
    config: CapacityConfig | None = None,
    *,
    env: Mapping[str, str] | None = None,
    pod: PodInfo | None = None,
    cpu_count: Callable[[], int] = available_cpus,
    calibration: Calibration | None = None,
    prefer_pod_limit: bool = False,
) -> CapacityReport:
    """Cores: the cgroup quota, else the pod's declared CPU limit, else the CPUs we
    may run on -- and never more than those CPUs (a quota above the cpuset is
    not reachable). ``pod`` defaults to the downward-API environment; pass the
    result of :func:`server_agent.k8s.pod_info_from_api` to use the API's.

    ``prefer_pod_limit``: a sidecar's own cgroup quota is the sidecar's, not the
    model server's; when the model server container's limit is declared
    (``WEI_CPU_LIMIT_MILLICORES`` from its ``resourceFieldRef``), use it first."""
    cfg = config or CapacityConfig()
    env = os.environ if env is None else env
    pod = pod if pod is not None else pod_info_from_env(env, cfg.env_prefix)
    notes: list[str] = []
    cpus = max(1, cpu_count())
    quota, where = cgroup_cpu_limit(cfg.cgroup_root, cfg.proc_self_cgroup)
    if pod.cpu_limit is not None and (prefer_pod_limit or quota is None):
        cores, source = pod.cpu_limit, f"pod CPU limit ({pod.source}); {where}"
    elif quota is not None:
        cores, source = quota, where
    else:
        cores, source = float(cpus), f"{cpus} available CPUs; {where}"
    if cores > cpus:
        notes.append(f"CPU limit {cores:g} exceeds the {cpus} CPUs available; using {cpus}")
        cores = float(cpus)
    notes.append(f"cpu_cores={cores:g} from {source}")
    gpus = detect_gpus(cfg.gpu_command, cfg.gpu_timeout_s)
    notes.append(gpus.note)
    samples = None
    if calibration is not None:
        samples = calibration.samples_per_s
        notes.append(f"calibrated {samples:.1f} samples/s at batch size {calibration.best_batch_size}")
    cap = Capacity(cpu_cores=round(cores, 3), gpu_model=gpus.model, gpu_count=gpus.count, samples_per_s=samples)
    return CapacityReport(cap, capacity_score(cap, cfg), pod, tuple(notes))
