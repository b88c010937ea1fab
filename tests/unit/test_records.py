import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import RecordError
from registry.records import (
    MAX_RECORD_BYTES,
    Capacity,
    InstanceRecord,
    Protocol,
    State,
    decode_instance,
    encode_instance,
    instance_to_json,
)


def rec(**kw):
    base = dict(service="ctr", id="pod-1", address="10.0.0.7", port=8500, weight=2.0)
    base.update(kw)
    return InstanceRecord(**base)


def test_curator_field_order_and_payload_class_first():
    obj = json.loads(encode_instance(rec(models={"ctr": [13, 12]}, labels={"a": "b"})))
    assert list(obj) == ["name", "id", "address", "port", "sslPort", "payload",
                         "registrationTimeUTC", "serviceType", "uriSpec", "enabled"]
    assert list(obj["payload"]) == ["@class", "schema", "weight", "capacity", "state", "zone",
                                    "node", "models", "labels", "updated_ms"]
    assert obj["payload"]["@class"] == "java.util.LinkedHashMap"
    assert obj["serviceType"] == "DYNAMIC"
    assert obj["payload"]["models"] == {"ctr": [12, 13]}


def test_roundtrip():
    r = rec(capacity=Capacity(cpu_cores=16, gpu_model="A10", gpu_count=1, samples_per_s=9000.0),
            state=State.SERVING, zone="z1", node="n1", models={"ctr": [1, 2]}, labels={"k": "v"},
            enabled=False, registration_time_ms=5, updated_ms=6, ssl_port=443)
    assert decode_instance(encode_instance(r)) == r


@pytest.mark.parametrize("changes, field", [
    ({"weight": 0.0}, "weight"),
    ({"weight": -1.0}, "weight"),
    ({"weight": math.inf}, "weight"),
    ({"weight": math.nan}, "weight"),
    ({"port": 0}, "port"),
    ({"port": 70000}, "port"),
    ({"ssl_port": 0}, "sslPort"),
    ({"id": "../etc"}, "id"),
    ({"service": ""}, "name"),
    ({"address": "a b"}, "address"),
    ({"state": "BROKEN"}, "state"),
    ({"models": {"ctr": [-1]}}, "models['ctr']"),
    ({"models": {"ctr": list(range(100))}}, "models['ctr']"),
    ({"labels": {f"k{i}": "v" for i in range(100)}}, "labels"),
])
def test_strict_validation_names_the_field(changes, field):
    with pytest.raises(RecordError) as e:
        rec(**changes)
    assert e.value.field == field
    assert "expected" in str(e.value)


def test_zero_weight_allowed_when_draining_or_disabled():
    assert rec(weight=0.0, state=State.DRAINING).weight == 0.0
    assert rec(weight=0.0, enabled=False).weight == 0.0
    assert not rec(weight=0.0, enabled=False).routable


def test_oversized_record_refused_on_write():
    r = rec(labels={f"k{i}": "x" * 256 for i in range(64)},
            models={f"m{i}": list(range(10000, 10064)) for i in range(256)})
    with pytest.raises(RecordError, match="bytes"):
        encode_instance(r)


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (b"\xff\xfe\x00garbage", "UTF-8 JSON"),
    (b"[1, 2]", "JSON object"),
    (b"{\"name\": \"ctr\"}", "payload"),
    (json.dumps({"name": "ctr", "id": "x", "address": "h", "port": 1,
                 "payload": {"@class": "java.util.LinkedHashMap", "schema": 99}}).encode(), "schema"),
    (json.dumps({"name": "ctr", "id": "x", "address": "h", "port": 1,
                 "payload": {"@class": "java.util.LinkedHashMap", "foo": "bar"}}).encode(), "schema"),
    (b"[" * 100000 + b"]" * 100000, "bytes"),
    (b"[" * 30000 + b"]" * 30000, "UTF-8 JSON"),
])
def test_lenient_decode_raises_record_error_only(data, why):
    with pytest.raises(RecordError, match=why):
        decode_instance(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_anything_but_record_error(data):
    try:
        decode_instance(data)
    except RecordError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"name": json_values, "id": json_values, "address": json_values,
                              "port": json_values, "payload": json_values}))
def test_wrong_json_types_never_raise_anything_but_record_error(obj):
    try:
        decode_instance(json.dumps(obj).encode())
    except RecordError:
        pass


def test_size_limit_on_read():
    with pytest.raises(RecordError):
        decode_instance(b" " * (MAX_RECORD_BYTES + 1))


@pytest.mark.parametrize("hosts", ["127.0.0.1:abc", ":", "127.0.0.1:99999", "", "a b:1"])
def test_bad_hosts_string_is_a_record_error(hosts):
    from registry.zk import ZkSettings

    with pytest.raises(RecordError, match="hosts"):
        ZkSettings(hosts=hosts)


def test_protocol_defaults_to_weiserving_and_is_omitted_from_the_payload():
    rec = InstanceRecord(service="ctr", id="p1", address="10.0.0.1", port=8500)
    assert rec.protocol is Protocol.WEISERVING
    assert "protocol" not in instance_to_json(rec)["payload"]  # older readers see the same bytes
    oip = rec.with_changes(protocol="oip")
    assert instance_to_json(oip)["payload"]["protocol"] == "oip"
    assert decode_instance(encode_instance(oip)).protocol is Protocol.OIP


def test_unknown_protocol_is_refused_on_read_and_write():
    with pytest.raises(RecordError, match="protocol"):
        InstanceRecord(service="ctr", id="p1", address="10.0.0.1", port=8500, protocol="http")
    obj = instance_to_json(InstanceRecord(service="ctr", id="p1", address="10.0.0.1", port=8500))
    obj["payload"]["protocol"] = "thrift"
    with pytest.raises(RecordError, match="weiserving, oip"):
        decode_instance(json.dumps(obj).encode())
