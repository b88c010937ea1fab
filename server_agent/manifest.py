"""``wei-agent manifest``: a serving pod's Deployment, built with the kubernetes client's models.

One pod = an initContainer that copies the business health plugin into a
shared ``emptyDir``, the model server (``wei-serve``) and the agent as a
sidecar. Probes are wired to the agent; shutdown is ordered so that no
request fails:

1. On pod deletion kubelet runs each container's preStop hook. The model
   server's hook is ``wei-agent drain`` (an exec in the pod: ``/drain`` is
   served on the agent's loopback control port only, never to the network),
   which drains the record, waits ``drain_wait_s`` for clients to see it,
   waits for the server's in-flight calls to finish and deregisters; only
   then does it answer.
2. Meanwhile the agent itself gets SIGTERM (it has no hook) and runs the same,
   idempotent sequence; it exits 0 once deregistered.
3. The model server gets SIGTERM only after its hook returned: nobody routes
   to it any more and nothing is in flight, so its own drain is instant.

``protocol`` ``oip`` has the agent front the server over the Open Inference
Protocol (``WEI_PROTOCOL=oip``): clients then talk OIP to the pod. wei-serve
serves it on the same port but has no repository index, so the models are
named (``models``, ``WEI_MODELS``) and its metrics are read from its status
port (``WEI_METRICS_URL``); a server image that is Triton or MLServer would
point that at its own metrics port.

``terminationGracePeriodSeconds`` covers all of it: the agent's shutdown
budget (drain wait + in-flight limit + 10 s for the write) plus the server's
grace period plus 5 s margin.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["ManifestConfig", "add_manifest_parser", "deployment", "render"]


@dataclass(frozen=True, kw_only=True)
class ManifestConfig:
    name: str = "ctr-serving"
    namespace: str | None = None
    service: str = "ctr"
    replicas: int = 3
    server_image: str = "registry.example.com/weiserving/wei-serve:0.1.0"
    agent_image: str = "registry.example.com/weiserving/wei-agent:0.1.0"
    plugin_image: str = "registry.example.com/ctr/health-plugin:1"
    plugin_source: str = "/plugins"
    models_dir: str = "/models"
    zk: str = "zk-0.zk-hs:2181,zk-1.zk-hs:2181,zk-2.zk-hs:2181"
    cpu: str = "8"
    memory: str = "16Gi"
    grpc_port: int = 8500
    status_port: int = 8502
    agent_port: int = 8510
    control_port: int = 8511  # the agent's loopback listener for /drain
    server_grace_s: int = 10
    drain_wait_s: float = 5.0
    in_flight_timeout_s: float = 20.0
    probe_style: str = "http"  # or "exec": `wei-agent probe ...` in the agent container
    protocol: str = "weiserving"  # or "oip": the agent fronts the server over OIP (needs models)
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.protocol not in ("weiserving", "oip"):
            raise ValueError(f"protocol: expected weiserving or oip, got {self.protocol!r}")
        if self.protocol == "oip" and not self.models:
            raise ValueError("protocol oip needs the models (--model NAME): wei-serve lists none over OIP")
        if self.protocol != "oip" and self.models:
            raise ValueError("models are for protocol oip (wei-serve's status lists its models)")

    @property
    def grace_period_s(self) -> int:
        return math.ceil(self.drain_wait_s + self.in_flight_timeout_s + 10 + self.server_grace_s + 5)


def _env(name: str, value: str | None = None, field: str | None = None, resource: str | None = None) -> Any:
    from kubernetes import client as k

    if field is not None:
        return k.V1EnvVar(name=name, value_from=k.V1EnvVarSource(field_ref=k.V1ObjectFieldSelector(field_path=field)))
    if resource is not None:
        return k.V1EnvVar(name=name, value_from=k.V1EnvVarSource(resource_field_ref=k.V1ResourceFieldSelector(
            container_name="model-server", resource=resource, divisor="1m")))
    return k.V1EnvVar(name=name, value=value)


def _http_probe(path: str, port: str, period: int, failures: int, timeout: int = 1) -> Any:
    from kubernetes import client as k

    return k.V1Probe(http_get=k.V1HTTPGetAction(path=path, port=port), period_seconds=period,
                     failure_threshold=failures, timeout_seconds=timeout)


def _exec_probe(kind: str, period: int, failures: int) -> Any:
    from kubernetes import client as k

    return k.V1Probe(_exec=k.V1ExecAction(command=["wei-agent", "probe", kind]), period_seconds=period,
                     failure_threshold=failures, timeout_seconds=5)


def _server_env(cfg: ManifestConfig) -> list[Any]:
    if cfg.protocol == "oip":
        return [_env("WEI_PROTOCOL", "oip"), _env("WEI_MODELS", ",".join(cfg.models)),
                _env("WEI_METRICS_URL", f"http://127.0.0.1:{cfg.status_port}/metrics")]
    return [_env("WEI_STATUS_URL", f"http://127.0.0.1:{cfg.status_port}")]


def deployment(cfg: ManifestConfig) -> Any:
    """A ``V1Deployment`` (see the module docstring for the design)."""
    from kubernetes import client as k

    labels = {"app.kubernetes.io/name": cfg.name, "weiserving/service": cfg.service}
    plugins = k.V1VolumeMount(name="health-plugins", mount_path="/health-plugins")
    init = k.V1Container(
        name="install-health-plugin", image=cfg.plugin_image,
        command=["sh", "-c", f"cp -R {cfg.plugin_source}/. /health-plugins/ && ls -l /health-plugins"],
        volume_mounts=[plugins])
    limits = {"cpu": cfg.cpu, "memory": cfg.memory}
    http = cfg.probe_style == "http"
    server = k.V1Container(
        name="model-server", image=cfg.server_image,
        command=["wei-serve", "--models", cfg.models_dir, "--port", str(cfg.grpc_port),
                 "--status-port", str(cfg.status_port), "--grace-s", str(cfg.server_grace_s)],
        ports=[k.V1ContainerPort(name="grpc", container_port=cfg.grpc_port)],
        resources=k.V1ResourceRequirements(limits=limits, requests=limits),
        # startup: up to 10 min to load and warm; readiness and liveness: the agent's verdicts.
        startup_probe=_http_probe("/startupz", "agent-http", 5, 120) if http else None,
        readiness_probe=_http_probe("/readyz", "agent-http", 2, 1) if http else None,
        # 6 x 10 s: an agent restart (seconds) must not restart the model server with it
        liveness_probe=_http_probe("/healthz", "agent-http", 10, 6),
        lifecycle=k.V1Lifecycle(pre_stop=k.V1LifecycleHandler(_exec=k.V1ExecAction(command=[
            "wei-agent", "drain", "--agent-url", f"http://127.0.0.1:{cfg.control_port}",
            "--timeout-s", f"{cfg.drain_wait_s + cfg.in_flight_timeout_s + 10:g}"]))),
    )
    agent_args = ["run", "--drain-wait-s", f"{cfg.drain_wait_s:g}",
                  "--in-flight-timeout-s", f"{cfg.in_flight_timeout_s:g}"]
    agent = k.V1Container(
        name="agent", image=cfg.agent_image, command=["wei-agent"], args=agent_args,
        env=[_env("WEI_ZK", cfg.zk), _env("WEI_SERVICE", cfg.service),
             _env("WEI_TARGET", f"127.0.0.1:{cfg.grpc_port}"),
             *_server_env(cfg),
             _env("WEI_PLUGIN_DIR", "/health-plugins"), _env("WEI_HTTP_PORT", str(cfg.agent_port)),
             _env("WEI_CONTROL_PORT", str(cfg.control_port)),
             _env("WEI_POD_NAME", field="metadata.name"), _env("WEI_POD_NAMESPACE", field="metadata.namespace"),
             _env("WEI_NODE_NAME", field="spec.nodeName"), _env("WEI_POD_IP", field="status.podIP"),
             _env("WEI_CPU_LIMIT_MILLICORES", resource="limits.cpu")],
        ports=[k.V1ContainerPort(name="agent-http", container_port=cfg.agent_port)],
        resources=k.V1ResourceRequirements(limits={"cpu": "500m", "memory": "256Mi"},
                                           requests={"cpu": "100m", "memory": "256Mi"}),
        volume_mounts=[plugins],
        liveness_probe=_http_probe("/livez", "agent-http", 10, 3),
        startup_probe=None if http else _exec_probe("startup", 5, 120),
        readiness_probe=None if http else _exec_probe("readiness", 2, 1),
    )
    pod = k.V1PodSpec(
        init_containers=[init], containers=[server, agent],
        volumes=[k.V1Volume(name="health-plugins", empty_dir=k.V1EmptyDirVolumeSource())],
        termination_grace_period_seconds=cfg.grace_period_s)
    meta = k.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace, labels=labels)
    template = k.V1PodTemplateSpec(
        metadata=k.V1ObjectMeta(labels=labels, annotations={
            "prometheus.io/scrape": "true", "prometheus.io/port": str(cfg.agent_port),
            "prometheus.io/path": "/metrics"}),
        spec=pod)
    return k.V1Deployment(
        api_version="apps/v1", kind="Deployment", metadata=meta,
        spec=k.V1DeploymentSpec(
            replicas=cfg.replicas, selector=k.V1LabelSelector(match_labels=labels), template=template,
            # a new pod registers only once warm; never take one out before its replacement serves
            strategy=k.V1DeploymentStrategy(type="RollingUpdate", rolling_update=k.V1RollingUpdateDeployment(
                max_surge="25%", max_unavailable=0))))


def render(cfg: ManifestConfig) -> str:
    """The Deployment as YAML, with a header comment."""
    import yaml
    from kubernetes.client import ApiClient

    data = ApiClient().sanitize_for_serialization(deployment(cfg))
    header = ("# Generated by `wei-agent manifest` (server_agent/manifest.py); regenerate rather than edit.\n"
              f"# terminationGracePeriodSeconds {cfg.grace_period_s} = drain wait {cfg.drain_wait_s:g}s"
              f" + in-flight limit {cfg.in_flight_timeout_s:g}s + 10s deregistration"
              f" + server grace {cfg.server_grace_s}s + 5s margin.\n")
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def add_manifest_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("manifest", help="print a serving pod's Deployment (YAML) for kubectl apply -f -")
    d = ManifestConfig()
    for name in ("name", "namespace", "service", "server_image", "agent_image", "plugin_image", "plugin_source",
                 "models_dir", "zk", "cpu", "memory"):
        m.add_argument(f"--{name.replace('_', '-')}", default=getattr(d, name), help=f"(default {getattr(d, name)})")
    for name in ("replicas", "grpc_port", "status_port", "agent_port", "control_port", "server_grace_s"):
        m.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                       help=f"(default {getattr(d, name)})")
    m.add_argument("--drain-wait-s", type=float, default=d.drain_wait_s)
    m.add_argument("--in-flight-timeout-s", type=float, default=d.in_flight_timeout_s)
    m.add_argument("--probe-style", choices=("http", "exec"), default=d.probe_style,
                   help="http: httpGet on the agent (default); exec: `wei-agent probe` in the agent container")
    m.add_argument("--protocol", choices=("weiserving", "oip"), default=d.protocol,
                   help="oip: the agent fronts the server over the Open Inference Protocol (needs --model)")
    m.add_argument("--model", dest="models", action="append", default=[], metavar="NAME",
                   help="with --protocol oip: a model the server serves (repeatable)")
    m.set_defaults(func=cmd_manifest)


def cmd_manifest(args: argparse.Namespace) -> int:
    from dataclasses import fields

    values = {f.name: getattr(args, f.name) for f in fields(ManifestConfig)}
    try:
        cfg = ManifestConfig(**{**values, "models": tuple(values["models"])})
    except ValueError as e:  # one line, exit 2, as every wei-agent usage error
        sys.stderr.write(f"wei-agent: error: {e}\n")
        return 2
    sys.stdout.write(render(cfg))
    return 0
