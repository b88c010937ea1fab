"""Where the pod runs and what it may use, from the downward API or the Kubernetes API.

Downward-API environment variables (prefix ``WEI_`` by default), all optional:

=========================  ==========================================================
``WEI_POD_NAME``           ``fieldRef: metadata.name``
``WEI_POD_NAMESPACE``      ``fieldRef: metadata.namespace``
``WEI_NODE_NAME``          ``fieldRef: spec.nodeName``
``WEI_POD_IP``             ``fieldRef: status.podIP``
``WEI_ZONE``               the node's zone; the downward API cannot read node labels,
                           so set it from a flag, or let the in-cluster lookup fill it
``WEI_CPU_LIMIT``          a quantity: ``2``, ``1.5``, ``1500m`` (with
                           ``resourceFieldRef: limits.cpu`` and the default divisor 1
                           Kubernetes rounds *up* to whole cores)
``WEI_CPU_LIMIT_MILLICORES`` ``resourceFieldRef: limits.cpu, divisor: 1m`` (exact;
                           preferred over ``WEI_CPU_LIMIT`` when both are set)
=========================  ==========================================================

In-cluster (:func:`pod_info_from_api`) runs only when ``KUBERNETES_SERVICE_HOST``
is set; it reads the pod (limits, node) and the node's zone label, and needs
RBAC ``get`` on pods and nodes. Any failure there is a note, never an error:
the environment's values stand.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["PodInfo", "own_ip", "parse_cpu_quantity", "pod_info_from_api", "pod_info_from_env", "pod_info_from_v1pod"]

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(m|k|)\s*$")


@dataclass(frozen=True, kw_only=True)
class PodInfo:
    pod_name: str = ""
    namespace: str = ""
    node_name: str = ""
    pod_ip: str = ""
    zone: str = ""
    cpu_limit: float | None = None  # cores
    source: str = "none"  # "env", "api", "env+api"


def parse_cpu_quantity(text: str) -> float | None:
    """A Kubernetes CPU quantity in cores (``"1500m"`` -> 1.5); None when unparseable or not positive."""
    m = _QUANTITY.match(text or "")
    if not m:
        return None
    value = float(m.group(1)) * {"m": 1e-3, "k": 1e3, "": 1.0}[m.group(2)]
    return value if math.isfinite(value) and value > 0 else None


def pod_info_from_env(env: Mapping[str, str], prefix: str = "WEI_") -> PodInfo:
    def get(name: str) -> str:
        return env.get(prefix + name, "").strip()

    cpu: float | None = None
    if get("CPU_LIMIT_MILLICORES"):
        cpu = parse_cpu_quantity(get("CPU_LIMIT_MILLICORES") + "m")
    if cpu is None and get("CPU_LIMIT"):
        cpu = parse_cpu_quantity(get("CPU_LIMIT"))
    info = PodInfo(pod_name=get("POD_NAME"), namespace=get("POD_NAMESPACE"), node_name=get("NODE_NAME"),
                   pod_ip=get("POD_IP"), zone=get("ZONE"), cpu_limit=cpu)
    return replace(info, source="env") if info != PodInfo() else info


def _attr(obj: Any, *names: str) -> Any:
    """Walk attributes (kubernetes client models) or keys (plain dicts); None when absent."""
    for name in names:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


def pod_info_from_v1pod(pod: Any, *, container: str | None = None, node: Any = None) -> PodInfo:
    """Extract from a ``V1Pod`` (and optionally its ``V1Node``): the serving
    container's CPU limit (``container``, or the sum over containers with a limit).
    """
    containers = _attr(pod, "spec", "containers") or []
    limits = []
    for c in containers:
        if container is not None and _attr(c, "name") != container:
            continue
        q = (_attr(c, "resources", "limits") or {}).get("cpu")
        cores = parse_cpu_quantity(str(q)) if q is not None else None
        if cores is not None:
            limits.append(cores)
    labels = _attr(node, "metadata", "labels") or {}
    zone = next((labels[k] for k in ZONE_LABELS if labels.get(k)), "")
    return PodInfo(pod_name=_attr(pod, "metadata", "name") or "", namespace=_attr(pod, "metadata", "namespace") or "",
                   node_name=_attr(pod, "spec", "node_name") or "", pod_ip=_attr(pod, "status", "pod_ip") or "",
                   zone=zone, cpu_limit=sum(limits) if limits else None, source="api")


def pod_info_from_api(
    env: Mapping[str, str],
    base: PodInfo,
    *,
    container: str | None = None,
    core_api: Callable[[], Any] | None = None,
) -> tuple[PodInfo, str]:
    """Fill ``base`` from the Kubernetes API when in a cluster. Returns (info, note).

    Skipped cleanly (``base`` unchanged, a note saying why) outside a cluster or
    without the pod's name and namespace. ``core_api`` builds a ``CoreV1Api``
    (default: in-cluster config); it is injectable for a test cluster.
    """
    if not env.get("KUBERNETES_SERVICE_HOST"):
        return base, "not in a Kubernetes cluster (KUBERNETES_SERVICE_HOST unset): API lookup skipped"
    if not (base.pod_name and base.namespace):
        return base, "pod name or namespace unknown (set WEI_POD_NAME, WEI_POD_NAMESPACE): API lookup skipped"
    note = "read the pod from the Kubernetes API"
    try:
        api = (core_api or _in_cluster_api)()
        pod = api.read_namespaced_pod(base.pod_name, base.namespace)
        node, node_name = None, _attr(pod, "spec", "node_name")
        if node_name and not base.zone:
            try:
                node = api.read_node(node_name)
            except Exception as e:  # RBAC may grant pods but not nodes
                note += f"; node {node_name} unreadable ({type(e).__name__}), zone unknown"
        found = pod_info_from_v1pod(pod, container=container, node=node)
    except Exception as e:
        return base, f"Kubernetes API lookup failed ({type(e).__name__}: {e}); using the environment"
    merged = PodInfo(
        pod_name=base.pod_name, namespace=base.namespace,
        node_name=found.node_name or base.node_name, pod_ip=found.pod_ip or base.pod_ip,
        zone=base.zone or found.zone,
        cpu_limit=found.cpu_limit if found.cpu_limit is not None else base.cpu_limit,
        source="env+api" if base.source == "env" else "api",
    )
    return merged, note


def _in_cluster_api() -> Any:
    from kubernetes import client, config  # imported only inside a cluster: it is slow to load

    config.load_incluster_config()
    return client.CoreV1Api()


def own_ip() -> str:
    """This host's address as others see it (the pod IP inside a pod)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
