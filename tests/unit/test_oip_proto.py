"""protocol.oip: the committed generated code matches the .proto, the .proto matches what OIP clients
send (Triton's own messages, field by field), and the tensor codec's table (pure, no I/O)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.oip import METHODS, SERVICE, pb, rest
from protocol.oip.infer import decode_infer_request, decode_infer_response, encode_infer_request, parse_version
from protocol.oip.tensors import DATATYPES, datatype_of, from_contents, from_raw, to_raw
from protocol.tensor import WireError

ROOT = Path(__file__).resolve().parents[2]
PROTO = "protocol/oip/grpc_predict_v2.proto"


def test_the_committed_module_is_what_protoc_makes_of_the_proto(tmp_path):
    pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is in the dev extra")
    from google.protobuf import descriptor_pb2
    out = tmp_path / "set.pb"
    # in a process of its own: protoc's compiler in a process that has loaded gRPC, TF and friends can crash
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--descriptor_set_out={out}",
                    str(ROOT / PROTO)], check=True, timeout=120)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    for message in _all_messages(fresh.message_type):
        for field in message.field:
            field.ClearField("json_name")    # protoc's descriptor set has it, its Python output drops it
    assert committed == fresh, "protocol/oip/grpc_predict_v2_pb2.py is stale: run `make proto`"


def _all_messages(messages):
    for m in messages:
        yield m
        yield from _all_messages(m.nested_type)


def _fields(descriptor) -> dict:
    out = {}
    for f in descriptor.fields:
        out[f.name] = (f.number, f.type, f.is_repeated,
                       f.message_type.full_name if f.message_type is not None else None)
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            out[nested.name] = _fields(nested)
    return out


def test_every_message_and_method_is_triton_s_own_to_the_field_number():
    triton = pytest.importorskip("tritonclient.grpc.service_pb2", reason="tritonclient is in the dev extra")
    ours = pb.DESCRIPTOR.message_types_by_name
    assert len(ours) == 14
    for name, descriptor in ours.items():
        assert _fields(descriptor) == _fields(triton.DESCRIPTOR.message_types_by_name[name]), name
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert theirs.full_name == SERVICE
    for name, path in METHODS.items():
        method = theirs.methods_by_name[name]
        assert path == f"/{theirs.full_name}/{name}"
        ours_m = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[name]
        assert (ours_m.input_type.full_name, ours_m.output_type.full_name) == (
            method.input_type.full_name, method.output_type.full_name)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_fixed_width_datatype_round_trips_raw_and_zero_copy(datatype):
    arr = (np.arange(6) % 2 == 1) if datatype == "BOOL" else np.arange(6).astype(DATATYPES[datatype])
    arr = arr.reshape(2, 3)
    assert datatype_of(arr.dtype) == datatype
    back = from_raw("t", datatype, [2, 3], to_raw(arr))
    assert back.dtype == DATATYPES[datatype] and not back.flags.writeable
    np.testing.assert_array_equal(back, arr)


def test_bytes_are_length_prefixed_and_become_fixed_width():
    arr = np.array([[b"ab", b""], [b"xyz", b"q"]])
    raw = to_raw(arr)
    assert raw[:6] == struct.pack("<I", 2) + b"ab" and len(raw) == 4 * 4 + 6
    np.testing.assert_array_equal(from_raw("s", "BYTES", [2, 2], raw), arr)
    with pytest.raises(WireError, match="BYTES data holds 4 elements but the shape needs 3"):
        from_raw("s", "BYTES", [3], raw)
    with pytest.raises(WireError, match="claims 9 bytes"):
        from_raw("s", "BYTES", [1], struct.pack("<I", 9) + b"ab")


@pytest.mark.parametrize(("datatype", "shape", "raw", "match"), [
    ("FP32", [2, 3], b"\0" * 20, "raw data is 20 bytes but shape \\[2, 3\\] x FP32 needs 24"),
    ("FP23", [1], b"\0" * 4, "datatype 'FP23' is not supported; expected one of BOOL"),
    ("BF16", [1], b"\0" * 2, "not supported"),
    ("INT8", [-1], b"", "dimensions must be >= 0"),
])
def test_a_raw_buffer_that_does_not_fit_says_what_was_expected(datatype, shape, raw, match):
    with pytest.raises(WireError, match=match):
        from_raw("t", datatype, shape, raw)


def test_typed_contents_use_the_datatype_s_field_and_refuse_what_does_not_fit():
    c = pb.InferTensorContents(int_contents=[1, -2, 3, 4])
    np.testing.assert_array_equal(from_contents("t", "INT8", [2, 2], c), np.array([[1, -2], [3, 4]], np.int8))
    with pytest.raises(WireError, match="out of the range of UINT8"):
        from_contents("t", "UINT8", [4], pb.InferTensorContents(uint_contents=[1, 256, 3, 4]))
    with pytest.raises(WireError, match=r"fp32_contents has 0 values .* \(data found in fp64_contents instead\)"):
        from_contents("t", "FP32", [2], pb.InferTensorContents(fp64_contents=[1.0, 2.0]))
    with pytest.raises(WireError, match="FP16 has no typed contents field; send it in raw_input_contents"):
        from_contents("t", "FP16", [1], pb.InferTensorContents())


def test_infer_request_round_trip_and_its_checks():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    req = decode_infer_request(encode_infer_request("m", {"x": x}, version=4, outputs=["y"], id="r1"))
    assert (req.model, req.version, req.outputs, req.id) == ("m", 4, ("y",), "r1")
    np.testing.assert_array_equal(req.inputs["x"], x)
    mixed = pb.ModelInferRequest.FromString(encode_infer_request("m", {"x": x}))
    mixed.inputs[0].contents.fp32_contents.extend([0.0] * 6)
    with pytest.raises(WireError, match="has contents and raw_input_contents is used"):
        decode_infer_request(mixed.SerializeToString())
    short = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"", b""])
    short.inputs.add(name="x", datatype="FP32", shape=[0])
    with pytest.raises(WireError, match="2 buffers for 1 inputs"):
        decode_infer_request(short.SerializeToString())
    with pytest.raises(WireError, match="malformed ModelInferRequest"):
        decode_infer_request(b"\xff\xff\xff")
    timed = pb.ModelInferRequest.FromString(encode_infer_request("m", {"x": x}))
    timed.parameters["timeout"].int64_param = 250_000
    assert decode_infer_request(timed.SerializeToString()).timeout_s == 0.25


@pytest.mark.parametrize(("text", "version"), [("", None), ("0", 0), ("12", 12)])
def test_versions_are_empty_for_the_latest_or_a_number(text, version):
    assert parse_version(text) == version


@pytest.mark.parametrize("text", ["-1", "v1", "1.0", " 1", "١"])
def test_a_version_that_is_not_a_number_is_refused(text):
    with pytest.raises(WireError, match="model version must be empty"):
        parse_version(text)


def test_typed_outputs_are_read_too():
    resp = pb.ModelInferResponse(model_name="m", model_version="2")
    resp.outputs.add(name="y", datatype="INT64", shape=[2]).contents.int64_contents.extend([5, 6])
    out = decode_infer_response(resp.SerializeToString())
    assert out.version == 2 and out.outputs["y"].tolist() == [5, 6]


def test_rest_json_and_binary_inputs_and_outputs():
    x = np.arange(4, dtype=np.float32)
    head = (b'{"id":"a","parameters":{"binary_data_output":true},"inputs":['
            b'{"name":"x","datatype":"FP32","shape":[4],"parameters":{"binary_data_size":16}},'
            b'{"name":"s","datatype":"BYTES","shape":[1,2],"data":[["ab","c"]]},'
            b'{"name":"i","datatype":"INT16","shape":[2],"data":[1,2]}]}')
    req, binary = rest.decode_infer("m", None, head + x.tobytes(), len(head))
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.inputs["s"].tolist() == [[b"ab", b"c"]] and req.inputs["i"].dtype == np.int16
    assert req.id == "a" and binary("anything") is True
    body, n = rest.encode_infer("m", 3, {"y": x, "z": np.array([b"q"])}, lambda name: name == "y", "a")
    assert body[n:] == x.tobytes()
    assert body[:n] == (b'{"model_name":"m","model_version":"3","id":"a","outputs":['
                        b'{"name":"y","datatype":"FP32","shape":[4],"parameters":{"binary_data_size":16}},'
                        b'{"name":"z","datatype":"BYTES","shape":[1],"data":["q"]}]}')


@pytest.mark.parametrize(("body", "match"), [
    (b"[1]", "must be a JSON object"),
    (b"{", "not JSON"),
    (b'{"inputs":[]}', "inputs must be a list of 1 to"),
    (b'{"inputs":[{"name":"x","datatype":"INT32","shape":[2],"data":[1.5,2]}]}', "INT32 data must be integers"),
    (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[1,2]}]}', "data has 2 values but shape"),
    (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[[1],[2,3]]}]}', "not a regular array"),
    (b'{"inputs":[{"name":"x","datatype":"BOOL","shape":[1],"data":[1]}]}', "BOOL data must be true/false"),
    (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}', "neither data nor a binary_data_size"),
    (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]}',
     "binary_data_size 4 but 0 binary bytes are left"),
])
def test_rest_bodies_that_do_not_parse_say_why(body, match):
    with pytest.raises(WireError, match=match):
        rest.decode_infer("m", None, body, None)


def test_a_response_version_that_is_not_an_integer_is_refused_unless_any_version():
    from protocol.oip import pb
    from protocol.oip.infer import decode_infer_response
    from protocol.tensor import WireError

    body = pb.ModelInferResponse(model_name="m", model_version="v1").SerializeToString()
    with pytest.raises(WireError, match="non-negative integer"):
        decode_infer_response(body)
    assert decode_infer_response(body, any_version=True).version is None
