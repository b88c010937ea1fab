"""Wire codec: tensor ext type, request/response envelopes, ORCA load reports."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import wire
from protocol.wire import Limits, LoadReport, PredictRequest, WireError

DTYPES = ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8",
          "|S7"]


def _roundtrip(arr: np.ndarray) -> np.ndarray:
    ext = wire.pack_tensor(arr)
    return wire.unpack_tensor(ext.data)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from(DTYPES).map(np.dtype),
                  shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_tensor_roundtrip_preserves_dtype_shape_and_bits(arr):
    out = _roundtrip(arr)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()


def test_decoded_tensor_is_a_read_only_view_over_the_payload():
    ext = wire.pack_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    out = wire.unpack_tensor(ext.data)
    assert not out.flags.writeable
    assert np.shares_memory(out, np.frombuffer(ext.data, dtype=np.uint8))


def test_big_endian_input_is_sent_little_endian():
    arr = np.arange(4, dtype=">i4")
    out = _roundtrip(arr)
    assert out.dtype.str == "<i4" and out.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("arr", [np.array(["a"], dtype=object), np.array(["a"], dtype="<U1"),
                                 np.zeros(2, dtype="<c8"), np.zeros(2, dtype="<M8[s]")])
def test_encoder_refuses_unsafe_dtypes(arr):
    with pytest.raises(WireError, match="not allowed"):
        wire.pack_tensor(arr)


def _header(dtype: bytes, shape: tuple[int, ...], version: int = 1) -> bytes:
    return struct.pack(f"<BB{len(dtype)}sB{len(shape)}Q", version, len(dtype), dtype,
                       len(shape), *shape)


@pytest.mark.parametrize("payload, match", [
    (_header(b"|O", (1,)) + b"\0" * 8, "not allowed"),
    (_header(b">f4", (1,)) + b"\0" * 4, "not allowed"),
    (_header(b"<f4", (3,)) + b"\0" * 8, "needs 12"),
    (_header(b"<f4", (2**62, 2**62)) + b"\0" * 4, "needs"),
    (_header(b"<f4", (1,) * 9) + b"\0" * 4, "at most 8"),
    (_header(b"<f4", (1,), version=9) + b"\0" * 4, "format version"),
    (b"\x01\x03<f", "bad tensor header"),
])
def test_bad_tensor_headers_are_refused(payload, match):
    with pytest.raises(WireError, match=match):
        wire.unpack_tensor(payload)


def test_request_roundtrip_single_and_multi_model():
    x = np.ones((3, 13), np.float32)
    req = PredictRequest(model="ctr", version=2, inputs={"dense": x}, outputs=("ctr",))
    back = wire.decode_request(wire.encode_request(req))
    assert (back.model, back.version, back.outputs, back.models) == ("ctr", 2, ("ctr",), None)
    np.testing.assert_array_equal(back.inputs["dense"], x)
    multi = PredictRequest(models={"a": None, "b": 3}, inputs={"dense": x})
    back = wire.decode_request(wire.encode_request(multi))
    assert back.targets() == {"a": None, "b": 3} and back.model is None


def test_response_roundtrip():
    resp = wire.PredictResponse(results={"ctr": wire.ModelResult(
        version=1, outputs={"p": np.array([0.5], np.float32)})})
    back = wire.decode_response(wire.encode_response(resp))
    assert back.results["ctr"].version == 1
    np.testing.assert_array_equal(back.outputs()["p"], [0.5])


@pytest.mark.parametrize("body, match", [
    (b"\xc1garbage", "malformed msgpack"),
    (msgpack.packb([1, 2]), "must be a msgpack map"),
    (msgpack.packb({"model": "m", "inputs": {"x": 1}}), "must be a tensor"),
    (msgpack.packb({"model": "m", "inputs": {}, "version": -1}), "non-negative"),
    (msgpack.packb({"model": "m", "models": {"a": None}, "inputs": {}}), "exactly one"),
    (msgpack.packb({"inputs": {}}), "exactly one"),
    (msgpack.packb({"model": "m", "inputs": {"x": msgpack.ExtType(5, b"")}}), "ext type 5"),
    (msgpack.packb({"model": "m", "inputs": {}, "outputs": "p"}), "outputs"),
])
def test_malformed_requests_raise_wire_error(body, match):
    with pytest.raises(WireError, match=match):
        wire.decode_request(body)


def test_message_size_is_bounded_before_parsing():
    body = wire.encode_request(PredictRequest(model="m", inputs={"x": np.zeros(100, np.float64)}))
    with pytest.raises(WireError, match="at most 100"):
        wire.decode_request(body, Limits(max_message_bytes=100))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_dims"):
        Limits(max_dims=0)


def test_metadata_roundtrip():
    assert wire.decode_metadata_request(wire.encode_metadata_request("ctr")) == "ctr"
    models = {"ctr": {"versions": {"1": {"state": "AVAILABLE"}}}}
    assert wire.decode_metadata_response(wire.encode_metadata_response(models)) == models


# --------------------------------------------------------------------------- ORCA


def _orca_message_class():
    """Build OrcaLoadReport from a descriptor at run time: protobuf's own parser."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="orca_test.proto", package="xds.data.orca.v3",
                                             syntax="proto3")
    msg = fdp.message_type.add(name="OrcaLoadReport")
    f = descriptor_pb2.FieldDescriptorProto
    for num, name in [(1, "cpu_utilization"), (2, "mem_utilization"), (6, "rps_fractional"),
                      (7, "eps"), (9, "application_utilization")]:
        msg.field.add(name=name, number=num, type=f.TYPE_DOUBLE, label=f.LABEL_OPTIONAL)
    msg.field.add(name="rps", number=3, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    for num, name, entry in [(4, "request_cost", "RequestCostEntry"),
                             (5, "utilization", "UtilizationEntry"),
                             (8, "named_metrics", "NamedMetricsEntry")]:
        e = msg.nested_type.add(name=entry)
        e.options.map_entry = True
        e.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
        e.field.add(name="value", number=2, type=f.TYPE_DOUBLE, label=f.LABEL_OPTIONAL)
        msg.field.add(name=name, number=num, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                      type_name=f".xds.data.orca.v3.OrcaLoadReport.{entry}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "xds.data.orca.v3.OrcaLoadReport"))


def test_orca_report_is_readable_by_protobuf_and_back():
    cls = _orca_message_class()
    report = LoadReport(cpu_utilization=0.75, application_utilization=0.5,
                        named_metrics={"in_flight": 3.0, "queue_depth": 12.0,
                                       "batch_fill": 0.8, "ewma_latency_ms": 4.25})
    parsed = cls.FromString(wire.encode_load_report(report))
    assert parsed.cpu_utilization == 0.75 and parsed.application_utilization == 0.5
    assert dict(parsed.named_metrics) == report.named_metrics
    # and the other way: protobuf writes (with a field we ignore), we read
    theirs = cls(cpu_utilization=0.25, rps=7, utilization={"gpu": 0.5},
                 named_metrics={"queue_depth": 2.0})
    back = wire.decode_load_report(theirs.SerializeToString())
    assert back.cpu_utilization == 0.25 and back.utilization == {"gpu": 0.5}
    assert back.named_metrics == {"queue_depth": 2.0}


def test_orca_decode_rejects_truncated_bytes():
    data = wire.encode_load_report(LoadReport(named_metrics={"in_flight": 1.0}))
    with pytest.raises(ValueError):
        wire.decode_load_report(data[:-3])


def test_trailing_bytes_after_the_payload_are_refused():
    body = wire.encode_request(PredictRequest(model="m", inputs={"x": np.zeros(2, np.float32)}))
    with pytest.raises(WireError, match="3 trailing bytes"):
        wire.decode_request(body + b"\x01\x02\x03")


def test_load_report_metadata_roundtrip_prefers_either_key():
    report = LoadReport(named_metrics={"in_flight": 2.0})
    md = wire.load_report_metadata(report)
    assert [k for k, _ in md] == [wire.LOAD_REPORT_KEY, wire.LOAD_REPORT_MIRROR_KEY]
    assert wire.load_report_from_metadata(md[1:]) == report
    assert wire.load_report_from_metadata([("other", b"x")]) is None
    assert wire.load_report_from_metadata([(wire.LOAD_REPORT_MIRROR_KEY, b"\x09\x00")]) is None
