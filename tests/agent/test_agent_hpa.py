"""examples/k8s/hpa.yaml and prometheus-adapter-rules.yaml: the HPA scales the generated Deployment on
Pods metrics the adapter's rules expose, the rules name gauges the agent exports, and a real agent in
front of a real, loaded wei-serve serves them (and every family its collector describes).

Both files are also validated with kubernetes-validate (strict) by test_agent_k8s_manifests.py, with
every manifest in examples/k8s/.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from pathlib import Path
from typing import Any

import agent_shell_helpers as h
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from prometheus_client.parser import text_string_to_metric_families

from server_agent.agent import Agent
from server_agent.http import AgentHttp
from server_agent.metrics import FAMILIES, AgentCollector, busy_ratio, queue_delay_seconds
from server_agent.server_io import grpc_predict

K8S = Path(__file__).resolve().parents[2] / "examples" / "k8s"
GAUGES = {f.name for f in FAMILIES if f.kind == "gauge"}


def load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return doc


def adapter_rules() -> list[dict[str, Any]]:
    config_map = load("prometheus-adapter-rules.yaml")
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def series_metric(rule: dict[str, Any]) -> str:
    m = re.fullmatch(r"\s*([A-Za-z_:][\w:]*)\s*(\{.*\})?\s*", rule["seriesQuery"])
    assert m, rule["seriesQuery"]
    return m.group(1)


def exposed_name(rule: dict[str, Any], series: str) -> str:
    """The custom-metrics name the adapter gives ``series`` (its ``name.matches`` and ``name.as``)."""
    name = rule.get("name", {})
    pattern, template = name.get("matches", "^(.*)$"), name.get("as", "${1}")
    assert re.search(pattern, series), (pattern, series)
    return re.sub(pattern, re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", template), series)  # Go's ${1} is \g<1>


def test_both_validate_as_kubernetes_objects():
    for name in ("hpa.yaml", "prometheus-adapter-rules.yaml"):
        kubernetes_validate.validate(load(name), latest_version(), strict=True)


def test_the_hpa_scales_the_generated_deployment_on_pods_metrics():
    hpa, deployment = load("hpa.yaml"), next(d for d in yaml.safe_load_all((K8S / "serving-deployment.yaml")
                                                                          .read_text()) if d)
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (deployment["apiVersion"], deployment["kind"],
                                                             deployment["metadata"]["name"])
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Pods"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # New pods report low load while their weight ramps (60 s slow start): no scale-down on that dip.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 120


def test_every_hpa_metric_is_exposed_by_a_rule_on_a_gauge_the_agent_exports():
    rules = adapter_rules()
    exposed = {}
    for rule in rules:
        series = series_metric(rule)
        assert series in GAUGES, f"{series} is not a gauge the agent exports ({sorted(GAUGES)})"
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                                  "pod": {"resource": "pod"}}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        exposed[exposed_name(rule, series)] = series
    wanted = {m["pods"]["metric"]["name"] for m in load("hpa.yaml")["spec"]["metrics"]}
    assert wanted <= exposed.keys(), sorted(wanted - exposed.keys())
    assert {exposed[n] for n in wanted} == {"wei_agent_server_busy_ratio", "wei_agent_server_queue_delay_seconds"}


def test_a_misnamed_rule_is_caught():
    rule = {**adapter_rules()[0], "seriesQuery": 'wei_agent_server_busy_fraction{pod!=""}'}
    assert series_metric(rule) not in GAUGES


# -- a real agent serves them ------------------------------------------------------------------

def scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


@pytest.fixture
def loaded_pod(zk_settings, tmp_path):
    """A wei-serve (a 20 ms model, 2 batch threads) under load, and its agent with its endpoints."""
    port, status_port = h.free_port(), h.free_port()
    server = h.start_server(h.write_model(tmp_path / "m", delay_s=0.02), port=port, status_port=status_port)
    agent = Agent(h.fast_config(zk_settings, target=f"127.0.0.1:{port}",
                                status_url=f"http://127.0.0.1:{status_port}"), capacity=h.capacity(4.0))
    http = AgentHttp(agent, "127.0.0.1", 0)
    stop = threading.Event()
    predict = grpc_predict(f"127.0.0.1:{port}", timeout=5.0)

    def send() -> None:
        while not stop.is_set():
            predict("ctr", {"x": [[1.0, 2.0, 3.0]] * 8})

    senders = [threading.Thread(target=send, daemon=True) for _ in range(3)]
    agent.start()
    for t in senders:
        t.start()
    try:
        yield agent, http
    finally:
        stop.set()
        for t in senders:
            t.join(10)
        agent.close()
        http.close(drain_grace_s=0)
        server.stop()


def test_a_real_agent_serves_the_load_gauges_and_every_described_family(loaded_pod):
    agent, http = loaded_pod
    view = agent.wait_for(lambda v: (busy_ratio(v) or 0) > 0.05 and queue_delay_seconds(v) is not None,
                          timeout=30)
    assert 0 < busy_ratio(view) <= 1
    families = scrape(http.url)
    described = {f.name for f in AgentCollector(lambda: view).describe()}
    assert described == {f.name for f in families.values() if f.name.startswith("wei_agent_")}
    (busy,) = families["wei_agent_server_busy_ratio"].samples
    assert 0 < busy.value <= 1
    (delay,) = families["wei_agent_server_queue_delay_seconds"].samples
    assert 0 <= delay.value < 5
    (info,) = families["wei_agent_info"].samples
    assert info.labels == {"service": "ctr", "instance_id": "pod-a", "endpoint": agent.config.address + ":"
                           + str(agent.config.port), "zone": ""} and info.value == 1
