"""Capacity from sample cgroup trees, a stand-in nvidia-smi script, the downward API and calibration."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kubernetes.client import (
    V1Container,
    V1Node,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1PodStatus,
    V1ResourceRequirements,
)

from registry.records import Capacity
from server_agent.capacity import (
    calibrate,
    capacity_score,
    cgroup_cpu_limit,
    detect_capacity,
    detect_gpus,
    parse_cfs,
    parse_cpu_max,
)
from server_agent.config import CalibrationConfig, CapacityConfig
from server_agent.errors import CalibrationError, ConfigError
from server_agent.k8s import PodInfo, parse_cpu_quantity, pod_info_from_api, pod_info_from_env, pod_info_from_v1pod

DATA = Path(__file__).parent / "data"
FAKE_SMI = (sys.executable, str(DATA / "gpu" / "fake_nvidia_smi.py"))
NO_GPU = ("/nonexistent/nvidia-smi",)


def cgroup(name: str) -> tuple[Path, Path]:
    root = DATA / name
    return root, root / "proc_self_cgroup"


@pytest.mark.parametrize("text,cores", [
    ("200000 100000", 2.0), ("250000 100000\n", 2.5), ("50000 100000", 0.5), ("max 100000", None),
    ("max", None), ("", None), ("garbage", None), ("150000", 1.5),
])
def test_parse_cpu_max(text, cores):
    assert parse_cpu_max(text) == cores


@pytest.mark.parametrize("quota,period,cores", [
    ("150000", "100000", 1.5), ("-1", "100000", None), ("400000\n", "100000\n", 4.0), ("x", "100000", None),
    ("100000", "0", None),
])
def test_parse_cfs(quota, period, cores):
    assert parse_cfs(quota, period) == cores


@pytest.mark.parametrize("tree,cores,where", [
    ("cgroup_v2/limited", 2.5, "cgroup v2"),
    ("cgroup_v2/unlimited", None, "no CPU quota in cgroup v2"),
    ("cgroup_v2/nested", 4.0, "kubepods/pod1/cpu.max"),  # the pod's limit, above our own unlimited cgroup
    ("cgroup_v1/limited", 1.5, "cgroup v1"),
    ("cgroup_v1/unlimited", None, "no CPU quota in cgroup v1"),
    ("cgroup_v1/nested", 3.0, "kubepods/pod1/cpu.cfs_quota_us"),
])
def test_cgroup_cpu_limit(tree, cores, where):
    got, source = cgroup_cpu_limit(*cgroup(tree))
    assert got == cores and where in source


def test_no_cgroup_at_all(tmp_path):
    assert cgroup_cpu_limit(tmp_path, tmp_path / "missing")[0] is None


def test_gpus_from_an_injected_command():
    gpus = detect_gpus(FAKE_SMI, timeout=10.0)
    assert (gpus.model, gpus.count) == ("NVIDIA A100-SXM4-40GB", 2)


@pytest.mark.parametrize("command,note", [
    (NO_GPU, "command not found"),
    ((sys.executable, str(DATA / "gpu" / "no_driver.py")), "exited 9"),
    (("true",), "no GPUs listed"),
])
def test_no_gpus_is_zero_not_an_error(command, note):
    gpus = detect_gpus(command, timeout=10.0)
    assert (gpus.model, gpus.count) == (None, 0) and note in gpus.note


@pytest.mark.parametrize("text,cores", [
    ("2", 2.0), ("1500m", 1.5), ("0.5", 0.5), (" 250m ", 0.25), ("1k", 1000.0), ("", None), ("0", None),
    ("-1", None), ("2Gi", None), ("abc", None),
])
def test_parse_cpu_quantity(text, cores):
    assert parse_cpu_quantity(text) == cores


def test_pod_info_from_downward_api_env():
    env = {"WEI_POD_NAME": "ctr-7f9", "WEI_POD_NAMESPACE": "rank", "WEI_NODE_NAME": "node-3",
           "WEI_ZONE": "z1", "WEI_CPU_LIMIT": "2", "WEI_CPU_LIMIT_MILLICORES": "1500", "WEI_POD_IP": "10.0.0.7"}
    info = pod_info_from_env(env)
    assert info == PodInfo(pod_name="ctr-7f9", namespace="rank", node_name="node-3", zone="z1", cpu_limit=1.5,
                           pod_ip="10.0.0.7", source="env")
    assert pod_info_from_env({"WEI_CPU_LIMIT": "4"}).cpu_limit == 4.0
    assert pod_info_from_env({}) == PodInfo()


def k8s_pod(limits: dict[str, str] | None = None) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name="ctr-7f9", namespace="rank"),
        spec=V1PodSpec(node_name="node-3", containers=[
            V1Container(name="model", resources=V1ResourceRequirements(limits=limits or {"cpu": "8"})),
            V1Container(name="agent", resources=V1ResourceRequirements(limits={"cpu": "250m"})),
        ]),
        status=V1PodStatus(pod_ip="10.0.0.7"),
    )


def test_pod_info_from_kubernetes_models():
    node = V1Node(metadata=V1ObjectMeta(name="node-3", labels={"topology.kubernetes.io/zone": "z2"}))
    info = pod_info_from_v1pod(k8s_pod(), container="model", node=node)
    assert (info.node_name, info.zone, info.cpu_limit, info.pod_ip) == ("node-3", "z2", 8.0, "10.0.0.7")
    assert pod_info_from_v1pod(k8s_pod()).cpu_limit == 8.25  # no container named: the pod's sum


def test_api_lookup_is_skipped_outside_a_cluster():
    base = PodInfo(pod_name="p", namespace="n", source="env")

    def must_not_be_called():
        raise AssertionError("the API must not be contacted outside a cluster")

    info, note = pod_info_from_api({}, base, core_api=must_not_be_called)
    assert info is base and "skipped" in note


class CoreV1Stand:
    """The two CoreV1Api calls the lookup makes, answering real kubernetes model objects
    (no cluster runs here; the extraction is what is under test)."""

    def __init__(self, node_error: Exception | None = None) -> None:
        self.node_error = node_error

    def read_namespaced_pod(self, name: str, namespace: str) -> V1Pod:
        assert (name, namespace) == ("ctr-7f9", "rank")
        return k8s_pod()

    def read_node(self, name: str) -> V1Node:
        if self.node_error:
            raise self.node_error
        return V1Node(metadata=V1ObjectMeta(name=name, labels={"topology.kubernetes.io/zone": "z9"}))


def test_api_lookup_in_a_cluster_fills_node_zone_and_limit():
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    base = PodInfo(pod_name="ctr-7f9", namespace="rank", source="env")
    info, note = pod_info_from_api(env, base, container="model", core_api=CoreV1Stand)
    assert (info.node_name, info.zone, info.cpu_limit, info.source) == ("node-3", "z9", 8.0, "env+api")
    info, note = pod_info_from_api(env, base, container="model",
                                   core_api=lambda: CoreV1Stand(PermissionError("403 nodes")))
    assert info.zone == "" and "zone unknown" in note
    info, note = pod_info_from_api(env, base, core_api=lambda: (_ for _ in ()).throw(OSError("no token")))
    assert info is base and "lookup failed" in note


# -- calibration -----------------------------------------------------------------------------


def model_time(batch: int) -> float:
    """A batched model: 2 ms fixed cost + 0.1 ms a sample, saturating past 128 (memory bound)."""
    return 0.002 + 0.0001 * batch + (0.0004 * (batch - 128) if batch > 128 else 0.0)


def test_calibration_picks_the_best_batch_size():
    cal = calibrate(model_time)
    assert cal.best_batch_size == 128
    assert cal.samples_per_s == pytest.approx(128 / model_time(128))
    assert [row[0] for row in cal.table] == [1, 8, 32, 128, 512]


def test_calibration_counts_warmup_and_repeats_and_takes_the_median():
    calls: list[int] = []
    times = iter([9.0, 0.01, 5.0, 0.01])  # warm-up 9 s is discarded; median of (0.01, 5, 0.01)

    def measure(batch: int) -> float:
        calls.append(batch)
        return next(times)

    cal = calibrate(measure, CalibrationConfig(batch_sizes=(4,), warmup=1, repeats=3))
    assert calls == [4, 4, 4, 4] and cal.samples_per_s == pytest.approx(400.0)


def test_calibration_skips_failing_and_too_slow_sizes():
    def measure(batch: int) -> float:
        if batch == 512:
            raise MemoryError("OOM at batch 512")
        return model_time(batch)

    cal = calibrate(measure, CalibrationConfig(max_latency_s=0.01))
    assert cal.best_batch_size == 32  # 128 takes 14.8 ms > 10 ms
    assert "exceeds max_latency_s" in cal.skipped[128] and "OOM" in cal.skipped[512]
    with pytest.raises(CalibrationError, match="batch 1: .*boom"):
        calibrate(lambda b: (_ for _ in ()).throw(RuntimeError("boom")), CalibrationConfig(batch_sizes=(1,)))
    with pytest.raises(CalibrationError, match="measured 0.0 s"):
        calibrate(lambda b: 0.0, CalibrationConfig(batch_sizes=(1,)))


@pytest.mark.parametrize("bad", [{"batch_sizes": ()}, {"batch_sizes": (0,)}, {"repeats": 0},
                                 {"max_latency_s": 0}])
def test_calibration_config_validation(bad):
    with pytest.raises(ConfigError):
        CalibrationConfig(**bad)


# -- the whole picture -----------------------------------------------------------------------


def config(tree: str, gpu: tuple[str, ...] = NO_GPU) -> CapacityConfig:
    root, proc = cgroup(tree)
    return CapacityConfig(cgroup_root=root, proc_self_cgroup=proc, gpu_command=gpu)


def test_detect_capacity_from_the_cgroup_quota_and_gpus():
    rep = detect_capacity(config("cgroup_v2/limited", FAKE_SMI), env={}, cpu_count=lambda: 16)
    assert rep.capacity == Capacity(cpu_cores=2.5, gpu_model="NVIDIA A100-SXM4-40GB", gpu_count=2)
    assert rep.score == 2.5 + 2 * 16.0


@pytest.mark.parametrize("tree,env,cpus,cores", [
    ("cgroup_v2/unlimited", {}, 12, 12.0),                       # no quota: the CPUs we may use
    ("cgroup_v1/unlimited", {"WEI_CPU_LIMIT": "6"}, 12, 6.0),    # no quota: the declared limit
    ("cgroup_v1/limited", {"WEI_CPU_LIMIT": "6"}, 12, 1.5),      # the kernel's quota wins
    ("cgroup_v2/nested", {}, 2, 2.0),                            # a quota above the cpuset is unreachable
])
def test_detect_capacity_cores(tree, env, cpus, cores):
    rep = detect_capacity(config(tree), env=env, cpu_count=lambda: cpus)
    assert rep.capacity.cpu_cores == cores and rep.capacity.gpu_count == 0
    assert rep.score == cores


def test_calibrated_capacity_scores_in_samples_per_second():
    cal = calibrate(model_time)
    rep = detect_capacity(config("cgroup_v2/limited"), env={}, cpu_count=lambda: 4, calibration=cal)
    assert rep.capacity.samples_per_s == cal.samples_per_s and rep.score == cal.samples_per_s
    assert any("calibrated" in n for n in rep.notes)


def test_capacity_score_is_always_positive():
    assert capacity_score(Capacity()) == 1.0
    assert capacity_score(Capacity(cpu_cores=8, gpu_count=1), CapacityConfig(gpu_core_equivalents=4)) == 12.0


def test_capacity_config_validation():
    with pytest.raises(ConfigError):
        CapacityConfig(gpu_command=())
    with pytest.raises(ConfigError):
        CapacityConfig(gpu_timeout_s=0)
