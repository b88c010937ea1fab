"""examples/k8s: every manifest validates (kubernetes-validate, strict, newest version it ships);
the Deployment is what `wei-agent manifest` generates; probes and shutdown are wired to the agent."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from server_agent import cli
from server_agent.config import AgentConfig
from server_agent.manifest import ManifestConfig, deployment, render

K8S = Path(__file__).resolve().parents[2] / "examples" / "k8s"
VERSION = latest_version()
DOCS = [(f"{p.name}#{i}", d) for p in sorted(K8S.glob("*.yaml"))
        for i, d in enumerate(yaml.safe_load_all(p.read_text())) if d]


def test_there_are_manifests_and_a_current_kubernetes_version():
    assert {name.split("#")[0] for name, _ in DOCS} == {"serving-deployment.yaml", "zookeeper.yaml", "hpa.yaml",
                                                         "prometheus-adapter-rules.yaml"}
    major, minor, *_ = (int(x) for x in VERSION.split("."))
    assert (major, minor) >= (1, 33)


@pytest.mark.parametrize("name,doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_validates(name, doc):
    kubernetes_validate.validate(doc, VERSION, strict=True)


@pytest.mark.parametrize("style", ["http", "exec"])
def test_generated_deployment_validates(style):
    for doc in yaml.safe_load_all(render(ManifestConfig(probe_style=style, namespace="serving"))):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_example_is_the_generator_output(capsys):
    assert cli.run(["manifest"]) == 0
    assert capsys.readouterr().out == (K8S / "serving-deployment.yaml").read_text(), \
        "regenerate: python -m server_agent.cli manifest > examples/k8s/serving-deployment.yaml"


def test_shutdown_is_ordered_and_covered_by_the_grace_period():
    cfg = ManifestConfig()
    pod = deployment(cfg).spec.template.spec
    server, agent = pod.containers
    assert (server.name, agent.name) == ("model-server", "agent")
    # /drain is served on the agent's loopback control port only: the hook is an exec inside the pod
    assert server.lifecycle.pre_stop._exec.command[:4] == \
        ["wei-agent", "drain", "--agent-url", f"http://127.0.0.1:{cfg.control_port}"]
    assert server.lifecycle.pre_stop.http_get is None
    assert agent.lifecycle is None  # the agent drains on its own SIGTERM
    budget = AgentConfig(service="ctr", target="127.0.0.1:8500").shutdown_budget_s
    assert pod.termination_grace_period_seconds >= budget + cfg.server_grace_s
    assert "--grace-s" in server.command


def test_probes_ask_the_agent_and_the_plugin_reaches_it_through_a_shared_volume():
    pod = deployment(ManifestConfig()).spec.template.spec
    server, agent = pod.containers
    assert [p.http_get.path for p in (server.startup_probe, server.readiness_probe, server.liveness_probe)] == \
        ["/startupz", "/readyz", "/healthz"]
    assert {p.http_get.port for p in (server.startup_probe, server.readiness_probe, server.liveness_probe)} == \
        {"agent-http"}
    assert agent.ports[0].name == "agent-http" and agent.liveness_probe.http_get.path == "/livez"
    (init,) = pod.init_containers
    assert init.volume_mounts[0].name == agent.volume_mounts[0].name == pod.volumes[0].name
    assert pod.volumes[0].empty_dir is not None
    env = {e.name: e for e in agent.env}
    assert env["WEI_PLUGIN_DIR"].value == init.volume_mounts[0].mount_path
    assert env["WEI_CPU_LIMIT_MILLICORES"].value_from.resource_field_ref.container_name == "model-server"
    exec_pod = deployment(ManifestConfig(probe_style="exec")).spec.template.spec
    assert exec_pod.containers[1].readiness_probe._exec.command == ["wei-agent", "probe", "readiness"]


def test_a_bad_manifest_is_rejected_by_the_validator():
    doc = yaml.safe_load(render(ManifestConfig()))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecondz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSION, strict=True)
