"""examples/grafana/weiserving.json: every PromQL query names only metrics the code exports.

The exported names come from the real collectors, not from a list kept here:
the client's process-wide collectors (``weiclient.metrics``, in the default
registry), a server's :class:`~serving.metrics.ServerMetrics` registry and
the agent's :class:`~server_agent.metrics.AgentCollector` (its ``describe()``;
``tests/agent/test_agent_hpa.py`` checks that a real agent's ``/metrics``
serves every family it describes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

import weiclient.metrics  # noqa: F401 -- registers the client's collectors in the default registry
from server_agent.metrics import AgentCollector
from serving.metrics import ServerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "weiserving.json"

FUNCTIONS = frozenset(re.findall(r"\w+", """
    abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min count_over_time
    day_of_month day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count
    histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour
    idelta increase irate label_join label_replace last_over_time ln log2 log10 mad_over_time max_over_time
    min_over_time minute month predict_linear present_over_time quantile_over_time rate resets round scalar
    sgn sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time time timestamp vector year
    sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
"""))
KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                      "offset", "atan2"])
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[smhdwy]*|[A-Za-z_:][\w:]*|\S")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, function names) in one PromQL expression (Grafana's ``$variables`` allowed)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers (their values are strings, gone above)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    text = _GROUPING.sub(lambda m: f" {m.group(1)} ", text)  # label lists of by, on, group_left ...
    tokens = _TOKEN.findall(text)
    metrics, functions = set(), set()
    for i, tok in enumerate(tokens):
        if not (tok[0].isalpha() or tok[0] in "_:") or tok in KEYWORDS:
            continue
        after = tokens[i + 1:i + 3]
        if after[:1] == ["("] or (after[:1] in (["by"], ["without"]) and after[1:] == ["("]):  # sum by (le) (
            functions.add(tok)
        else:
            metrics.add(tok)
    return metrics, functions


def dashboard_queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows' nested panels too) and every query variable."""
    def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            yield f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)
            yield f"variable {var['name']}", m.group(1) if m else q


def exposed(families: Iterable[Metric]) -> set[str]:
    """The series names a family appears under in the text exposition."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    return {f.name + s for f in families for s in suffixes.get(f.type, ("",))}


def exported_metrics() -> set[str]:
    client = [f for f in REGISTRY.collect() if f.name.startswith("weiclient_")]
    server = ServerMetrics(lambda: {}, lambda: 0).registry.collect()
    agent = AgentCollector(lambda: None).describe()  # type: ignore[arg-type,return-value]
    return exposed([*client, *server, *agent])


def problems(dash: dict[str, Any], exported: set[str]) -> list[str]:
    found = []
    for where, expr in dashboard_queries(dash):
        metrics, functions = promql_names(expr)
        if not metrics:
            found.append(f"{where}: names no metric: {expr}")
        found += [f"{where}: {m} is not exported" for m in sorted(metrics - exported)]
        found += [f"{where}: {f}() is not a PromQL function" for f in sorted(functions - FUNCTIONS)]
    return found


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metrics()


def test_every_query_names_metrics_the_code_exports(dash, exported):
    assert problems(dash, exported) == []


def test_the_dashboard_shows_what_operators_asked_for(dash):
    used = {m for _, expr in dashboard_queries(dash) for m in promql_names(expr)[0]}
    wanted = {
        "weiclient_request_seconds_bucket", "weiserving_request_latency_seconds_bucket",  # latency heatmaps
        "weiclient_attempts_total", "weiclient_endpoint_effective_weight",  # each pod's share against its weight
        "wei_agent_published_weight", "wei_agent_capacity_samples_per_second",
        "weiclient_endpoint_ejected", "weiclient_retries_total", "weiclient_hedges_total",
        "weiserving_queue_delay_seconds", "weiserving_batch_fill_ratio",
        "weiclient_membership_staleness_seconds",
    }
    assert wanted <= used, sorted(wanted - used)
    kinds = {p["type"] for p in dash["panels"]}
    assert "heatmap" in kinds
    heatmaps = [t for p in dash["panels"] if p["type"] == "heatmap" for t in p["targets"]]
    assert all(t.get("format") == "heatmap" and "_bucket" in t["expr"] for t in heatmaps)


def test_panels_are_well_formed(dash):
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


def test_counters_end_in_total_and_units_are_base_units(exported):
    for name in exported:
        assert not re.search(r"_(ms|millis|milliseconds|us|kb|mb|percent)(_|$)", name), name
    counters = {f.name for f in REGISTRY.collect() if f.type == "counter" and f.name.startswith("weiclient_")}
    assert counters and all(f"{c}_total" in exported for c in counters)


# -- the checker itself ----------------------------------------------------------------

def test_a_misspelled_metric_or_function_is_reported(exported):
    tiny = {"panels": [{"title": "typo", "type": "timeseries", "targets": [
        {"refId": "A", "expr": 'histogram_quantile(0.99, sum by (le) (rate(weiclient_request_second_bucket[5m])))'},
        {"refId": "B", "expr": 'sum(rte(weiclient_retries_total{service="ctr"}[5m]))'},
        {"refId": "C", "expr": "vector(1)"},
    ]}], "templating": {"list": [{"name": "svc", "type": "query", "query": "label_values(wei_agent_infos, service)"}]}}
    assert problems(tiny, exported) == [
        "panel 'typo' A: weiclient_request_second_bucket is not exported",
        "panel 'typo' B: rte() is not a PromQL function",
        "panel 'typo' C: names no metric: vector(1)",
        "variable svc: wei_agent_infos is not exported",
    ]


@pytest.mark.parametrize(("expr", "metrics", "functions"), [
    ('sum by (le, endpoint) (rate(a_total{service=~"$service", x="b_total"}[$__rate_interval]))',
     {"a_total"}, {"sum", "rate"}),
    ("a / ignoring (endpoint) group_left () sum(b) * on (namespace, pod) group_left (instance_id) c{x!='y'}",
     {"a", "b", "c"}, {"sum"}),
    ("histogram_quantile(0.99, x_bucket offset 5m) > bool 1e3 and y", {"x_bucket", "y"}, {"histogram_quantile"}),
    ("max without(pod)(z:recorded) unless ${var}", {"z:recorded"}, {"max"}),
])
def test_promql_names(expr, metrics, functions):
    assert promql_names(expr) == (metrics, functions)
