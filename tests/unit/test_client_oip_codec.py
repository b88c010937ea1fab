"""weiclient.oip: a plan's OIP ModelInfer body and the answer's translation, pure (no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import wire
from protocol.oip import pb
from protocol.oip.infer import decode_infer_request, encode_infer_response
from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, Protocol, State
from weiclient.attempts import CUT, Kind, blames_endpoint, classify, code_name
from weiclient.balancer import Balancer
from weiclient.errors import InvalidInput, NoEndpointAvailable, RequestTooLarge, Unavailable
from weiclient.oip import OipRequest, decode_response, encode_request

X = np.arange(6, dtype=np.float32).reshape(2, 3)


# -- the request ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "sent"), [(None, ""), (0, "0"), (7, "7")])
def test_the_request_carries_model_version_inputs_and_outputs(version, sent):
    ids = np.array([[1, 2], [3, 4]], dtype=">i8")  # big-endian goes out little-endian
    body = encode_request("ctr", version, {"x": X, "ids": ids, "tag": np.array([b"a", b"bc"])}, ["y"], 1 << 20)
    msg = pb.ModelInferRequest.FromString(body)
    assert (msg.model_name, msg.model_version) == ("ctr", sent)
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.inputs] == [
        ("x", "FP32", [2, 3]), ("ids", "INT64", [2, 2]), ("tag", "BYTES", [2])]
    assert len(msg.raw_input_contents) == 3  # every input raw, as tritonclient sends
    req = decode_infer_request(body)  # what the server reads
    np.testing.assert_array_equal(req.inputs["x"], X)
    np.testing.assert_array_equal(req.inputs["ids"], ids)
    assert req.inputs["tag"].tolist() == [b"a", b"bc"]
    assert req.version == version and req.outputs == ("y",)


def test_no_outputs_asked_means_every_output():
    assert decode_infer_request(encode_request("ctr", None, {"x": X}, None, 1 << 20)).outputs is None


def test_the_body_is_built_on_first_use_and_kept():
    req = OipRequest("ctr", 3, {"x": X}, None, 1 << 20)
    assert not req.encoded and "not encoded" in repr(req)
    body = req.body()
    assert req.encoded and req.body() is body  # one encoding per plan, whatever the attempts
    assert "version '3'" in repr(req) and f"{len(body)} bytes" in repr(req)


def test_a_request_over_the_size_limit_is_refused_before_sending():
    req = OipRequest("ctr", None, {"x": np.zeros((1000, 3), np.float32)}, None, 4_000)
    with pytest.raises(RequestTooLarge, match="OIP request is .* over the limit of 4,000") as e:
        req.body()
    assert e.value.limit == 4_000 and e.value.size > 12_000 and not req.encoded


def test_an_array_oip_cannot_carry_is_the_callers_error():
    with pytest.raises(InvalidInput, match="cannot encode the OIP request"):
        encode_request("ctr", None, {"s": np.array(["text"])}, None, 1 << 20)


# -- the answer ----------------------------------------------------------------------------------

def test_the_answer_becomes_the_msgpack_paths_response():
    y = X * 2 + 1
    resp = decode_response(encode_infer_response("ctr", 4, {"y": y, "n": np.arange(2)}), "ctr", None)
    assert isinstance(resp, wire.PredictResponse) and set(resp.results) == {"ctr"}
    result = resp.results["ctr"]
    assert result.version == 4 and set(result.outputs) == {"y", "n"}
    np.testing.assert_array_equal(result.outputs["y"], y)
    assert not result.outputs["y"].flags.writeable  # zero-copy over the reply, as on msgpack


def _answer(**fields) -> bytes:
    msg = pb.ModelInferResponse(**fields)
    msg.outputs.add(name="y", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(X.ravel().tolist())
    return msg.SerializeToString()


@pytest.mark.parametrize(("fields", "asked", "version"), [
    ({"model_name": "ctr", "model_version": ""}, 5, 5),       # no version said: the one asked for
    ({"model_name": "", "model_version": ""}, None, 0),       # neither: 0, as a nil msgpack version reads
    ({"model_name": "ctr", "model_version": "2"}, None, 2),
    ({"model_name": "ctr", "model_version": "v1"}, None, 0),  # MLServer's versions are names
    ({"model_name": "ctr", "model_version": "v1"}, 3, 3),
])
def test_typed_contents_and_a_missing_name_or_version(fields, asked, version):
    result = decode_response(_answer(**fields), "ctr", asked).results["ctr"]
    assert result.version == version
    np.testing.assert_array_equal(result.outputs["y"], X)


@pytest.mark.parametrize(("body", "match"), [
    (b"\xff\xff\xff", "malformed ModelInferResponse"),
    (_answer(model_name="other"), "for model 'other', asked for 'ctr'"),
    (_answer(model_name="ctr", model_version="v1")[:-3], "malformed ModelInferResponse"),
    (pb.ModelInferResponse(outputs=[pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[2])],
                           raw_output_contents=[b"\0" * 4]).SerializeToString(), "raw data is 4 bytes"),
    (pb.ModelInferResponse(outputs=[pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[1])],
                           raw_output_contents=[b"\0" * 4, b""]).SerializeToString(), "2 buffers for 1 outputs"),
])
def test_a_malformed_answer_is_a_wire_error(body, match):
    with pytest.raises(wire.WireError, match=match):
        decode_response(body, "ctr", None)


def test_a_named_version_does_not_hide_another_fault():
    msg = pb.ModelInferResponse(model_name="ctr", model_version="v1", raw_output_contents=[b"\0" * 4])
    msg.outputs.add(name="y", datatype="FP32", shape=[2])
    with pytest.raises(wire.WireError, match="raw data is 4 bytes"):
        decode_response(msg.SerializeToString(), "ctr", None)


# -- predict_many stays off OIP pods ---------------------------------------------------------------

def rec(i: int, protocol: Protocol, *, models=("a", "b"), state: State = State.SERVING) -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=1.0, state=state,
                          models={m: [1] for m in models}, protocol=protocol)


def balancer(*records: InstanceRecord) -> Balancer:
    b = Balancer()
    b.update(snapshot_from_records("ctr", list(records), version=1), now=0.0)
    return b


def test_a_multi_model_call_goes_only_to_weiserving_pods():
    b = balancer(rec(0, Protocol.OIP), rec(1, Protocol.WEISERVING), rec(2, Protocol.OIP))
    assert {ep.instance_id for ep in b.candidates.view("a").endpoints} == {"p0", "p1", "p2"}
    assert {ep.instance_id for ep in b.candidates.view("a", None, [("b", None)]).endpoints} == {"p1"}
    assert {b.pick("a", also=[("b", 1)], now=1.0).instance_id for _ in range(50)} == {"p1"}


def test_when_only_oip_pods_host_them_all_the_error_says_call_predict_per_model():
    b = balancer(rec(0, Protocol.OIP), rec(1, Protocol.OIP), rec(2, Protocol.WEISERVING, models=("a",)))
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("a", also=[("b", None)], now=1.0)
    assert e.value.why is Unavailable.NO_MULTI_MODEL and "a, b on p0, p1" in e.value.detail
    assert "call predict once per model" in str(e.value)
    assert b.pick("b", now=1.0).instance_id in {"p0", "p1"}  # one model at a time: OIP pods take it


def test_a_draining_weiserving_host_is_reported_as_draining_not_as_oip():
    b = balancer(rec(0, Protocol.OIP), rec(1, Protocol.WEISERVING, state=State.DRAINING))
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("a", also=[("b", None)], now=1.0)
    assert e.value.why is Unavailable.ALL_DRAINING and e.value.detail == "p1 draining"


# -- status codes: one table for both protocols ----------------------------------------------------

@pytest.mark.parametrize(("message", "name"), [
    ("CANCELLED", CUT),                                 # a server that stops cancels its calls in flight
    ("", CUT),
    ("Locally cancelled by application!", "CANCELLED"),  # grpcio's text when this process cancelled it
])
def test_a_cancellation_the_client_did_not_ask_for_is_retried_elsewhere(message, name):
    assert code_name("CANCELLED", message) == name
    assert classify(CUT) is Kind.RETRYABLE and blames_endpoint(CUT)
    assert classify("CANCELLED") is Kind.FATAL and not blames_endpoint("CANCELLED")  # ours: a loser's
