"""StatusDoc: one schema between the model server and the agent; lenient on unknown fields, strict on bad ones."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.status import SCHEMA_VERSION, Batching, Latency, ModelStatus, StatusDoc, StatusError, VersionStatus

FULL = {
    "schema": 1, "phase": "serving", "ready": True, "draining": False, "port": 8500, "in_flight": 3,
    "models": {"ctr": {
        "versions": {"2": {"state": "AVAILABLE", "in_flight": 3, "queue_rows": 40}},
        "ready": True, "in_flight": 3, "queue_rows": 40,
        "latency_ms": {"p50": 2.1, "p90": 3.4, "p99": 6.0, "ewma": 2.4},
        "batching": {"batch_fill": 0.6, "batches": 812, "rows": 51234, "batch_size_limit": 256,
                     "queue_delay_ms": 0.8},
        "capacity": {"rows_per_s": 41000.0, "max_batch_size": 256.0},
        "work": {"busy_s": 12.5, "rows": 51234, "requests": 812, "batches": 812, "batch_threads": 2},
        "window": {"span_s": 10.0, "rows_per_s": 3300.0, "requests_per_s": 52.0, "busy_fraction": 0.4,
                   "mean_batch_rows": 63.1}}},
    "load_failures": {"ctr/3": "why version 3 did not load"},
}


def test_the_documented_example_reads_and_writes_back_unchanged():
    doc = StatusDoc.from_json(json.dumps(FULL))
    assert doc.schema == SCHEMA_VERSION and doc.routable and doc.port == 8500
    ctr = doc.models["ctr"]
    assert ctr.versions[2] == VersionStatus(state="AVAILABLE", in_flight=3, queue_rows=40)
    assert ctr.latency_ms.p99 == 6.0 and ctr.batching.batch_size_limit == 256
    assert json.loads(doc.to_json()) == FULL
    assert StatusDoc.from_json(doc.to_json()) == doc


def test_a_produced_document_round_trips():
    doc = StatusDoc(phase="serving", ready=True, in_flight=0, port=1, models={"m": ModelStatus(
        versions={3: VersionStatus(state="AVAILABLE", in_flight=0, queue_rows=0),
                  1: VersionStatus(state="UNLOADING")},
        latency_ms=Latency(p99=1.5), batching=Batching(batches=0))})
    again = StatusDoc.from_json(doc.to_json().encode())
    assert again == doc and list(again.models["m"].versions) == [1, 3]
    assert again.hosted() == {"m": [1, 3]}


def test_unknown_fields_are_skipped_at_every_level_and_missing_ones_are_unknown():
    doc = StatusDoc.from_json({"ready": True, "gpu": {"util": 0.5}, "schema": 7,
                               "models": {"ctr": {"versions": {"1": {"state": "AVAILABLE", "pinned": True}},
                                                  "latency_ms": {"p99": 9.0, "p999": 30.0}, "shadow": 1}}})
    assert doc.schema == 7 and doc.ready and doc.in_flight is None and doc.phase is None
    ctr = doc.models["ctr"]
    assert ctr.latency_ms == Latency(p99=9.0) and ctr.queue_rows is None and ctr.ready is False
    assert StatusDoc.from_json({}) == StatusDoc()
    assert not StatusDoc.from_json({}).routable  # a server that does not say it is ready is not


def test_aggregates_over_models():
    doc = StatusDoc.from_json({"models": {"a": {"queue_rows": 40, "latency_ms": {"p99": 6.0, "ewma": 2.0}},
                                          "b": {"queue_rows": 2, "latency_ms": {"p99": 9.5}},
                                          "c": {}}})
    assert doc.worst_latency_ms("p99") == 9.5 and doc.worst_latency_ms("ewma") == 2.0
    assert doc.worst_latency_ms("p50") is None and doc.queue_rows() == 42
    assert StatusDoc().queue_rows() is None


@pytest.mark.parametrize(("doc", "says"), [
    ("not json {", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[1, 2]", "the document: expected a JSON object"),
    ({"schema": 0}, "schema: expected an integer >= 1, got 0"),
    ({"schema": "1"}, "schema: expected an integer >= 1"),
    ({"ready": "yes"}, "ready: expected true or false, got 'yes'"),
    ({"in_flight": True}, "in_flight: expected an integer >= 0, got True"),
    ({"in_flight": -1}, "in_flight: expected an integer >= 0"),
    ({"port": 1.5}, "port: expected an integer >= 0"),
    ({"models": []}, "models: expected an object"),
    ({"models": {"ctr": "x"}}, "models['ctr']: expected an object"),
    ({"models": {"ctr": {"versions": {"v1": {}}}}}, "models['ctr'].versions: expected a version number"),
    ({"models": {"ctr": {"versions": {"1": {"in_flight": "3"}}}}}, "models['ctr'].versions['1'].in_flight"),
    ({"models": {"ctr": {"latency_ms": {"p99": "bad"}}}}, "models['ctr'].latency_ms.p99: expected a finite"),
    ('{"models": {"ctr": {"latency_ms": {"p99": NaN}}}}', "models['ctr'].latency_ms.p99: expected a finite"),
    ({"models": {"ctr": {"batching": {"batches": 2.5}}}}, "models['ctr'].batching.batches"),
    ({"load_failures": {"m/1": 3}}, "load_failures['m/1']: expected a string"),
])
def test_a_malformed_document_is_refused_naming_the_field(doc, says):
    with pytest.raises(StatusError) as e:
        StatusDoc.from_json(doc)
    assert says in str(e.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(FULL) + ["x"]), JSON, max_size=6))
def test_any_json_object_is_read_or_refused_with_a_status_error(obj):
    try:
        doc = StatusDoc.from_json(json.dumps(obj))
    except StatusError:
        return
    assert StatusDoc.from_json(doc.to_json()) == doc
