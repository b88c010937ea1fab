"""OIP ModelInfer over gRPC: the request and the response, both sides.

A request's inputs come either all in ``raw_input_contents`` (one buffer per
input, in the order of ``inputs``: what tritonclient sends) or each in its
typed ``contents``; mixing them, a buffer count that differs from the input
count, a duplicate name and a shape that the data does not fill are refused
with what was expected. ``outputs`` empty means every output. Request
``parameters`` are ignored but ``timeout`` (Triton's: microseconds, a bound
on the call beside the gRPC deadline). Responses carry their data in
``raw_output_contents``, which every OIP client reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from protocol.oip import pb
from protocol.oip.tensors import datatype_of, from_contents, from_raw, to_raw
from protocol.tensor import DEFAULT_LIMITS, Limits, WireError

__all__ = ["InferRequest", "InferResponse", "decode_infer_request", "decode_infer_response", "encode_infer_request",
           "encode_infer_response", "format_version", "parse_message", "parse_version"]


@dataclass(frozen=True, kw_only=True)
class InferRequest:
    model: str
    version: int | None = None            # None: the latest loaded version
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None  # None: every output
    id: str = ""
    timeout_s: float | None = None         # Triton's ``timeout`` parameter, if sent


@dataclass(frozen=True, kw_only=True)
class InferResponse:
    model: str
    version: int | None
    outputs: dict[str, np.ndarray]
    id: str = ""


def parse_version(text: str) -> int | None:
    """An OIP version string: ``""`` is None (the latest), else a non-negative decimal integer."""
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise WireError(f"model version must be empty (the latest) or a non-negative integer, got {text[:32]!r}")
    return int(text)


def format_version(version: int | None) -> str:
    return "" if version is None else str(version)


def parse_message(message: Any, data: bytes, what: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Parse one generated message type from untrusted bytes, the size checked first."""
    if len(data) > limits.max_message_bytes:
        raise WireError(f"{what} is {len(data)} bytes; at most {limits.max_message_bytes}")
    try:
        return message.FromString(data)
    except DecodeError as exc:
        raise WireError(f"malformed {what}: {exc}") from None


def _check_name(name: str, seen: set[str], what: str, limits: Limits) -> None:
    if not 0 < len(name) <= limits.max_name_len:
        raise WireError(f"{what} names must be non-empty strings of <= {limits.max_name_len} chars")
    if name in seen:
        raise WireError(f"{what} {name!r} appears twice")
    seen.add(name)


def decode_infer_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> InferRequest:
    req = parse_message(pb.ModelInferRequest, data, "ModelInferRequest", limits)
    if not req.model_name:
        raise WireError("model_name is empty; name the model to run")
    if len(req.inputs) > limits.max_tensors or len(req.outputs) > limits.max_tensors:
        raise WireError(f"at most {limits.max_tensors} inputs and outputs in one request")
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise WireError(f"raw_input_contents has {len(raw)} buffers for {len(req.inputs)} inputs; "
                        f"send one per input, in the order of inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(req.inputs):
        _check_name(t.name, set(inputs), "input", limits)
        if raw:
            if t.HasField("contents"):
                raise WireError(f"input {t.name!r} has contents and raw_input_contents is used; use one or the other")
            inputs[t.name] = from_raw(t.name, t.datatype, t.shape, raw[i], limits)
        else:
            inputs[t.name] = from_contents(t.name, t.datatype, t.shape, t.contents, limits)
    seen: set[str] = set()
    for o in req.outputs:
        _check_name(o.name, seen, "requested output", limits)
    return InferRequest(model=req.model_name, version=parse_version(req.model_version), inputs=inputs,
                        outputs=tuple(o.name for o in req.outputs) or None, id=req.id,
                        timeout_s=_timeout_s(req.parameters))


def _timeout_s(parameters: Mapping[str, pb.InferParameter]) -> float | None:
    if "timeout" not in parameters:
        return None
    p = parameters["timeout"]
    kind = p.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param") or getattr(p, kind) < 0:
        raise WireError("parameter 'timeout' must be a non-negative integer (microseconds)")
    micros = getattr(p, kind)
    return micros / 1e6 if micros else None     # 0: none, as Triton reads it


def encode_infer_response(model: str, version: int, outputs: Mapping[str, np.ndarray], id: str = "") -> bytes:  # noqa: A002
    resp = pb.ModelInferResponse(model_name=model, model_version=str(version), id=id)
    for name, arr in outputs.items():
        resp.outputs.add(name=name, datatype=datatype_of(arr.dtype), shape=arr.shape)
        resp.raw_output_contents.append(to_raw(arr))
    return resp.SerializeToString()


def encode_infer_request(model: str, inputs: Mapping[str, np.ndarray], *, version: int | None = None,
                         outputs: Sequence[str] | None = None, id: str = "") -> bytes:  # noqa: A002
    """The client side: ``inputs`` as raw buffers (what tritonclient sends)."""
    req = pb.ModelInferRequest(model_name=model, model_version=format_version(version), id=id)
    for name, arr in inputs.items():
        arr = np.asarray(arr)
        req.inputs.add(name=name, datatype=datatype_of(arr.dtype), shape=arr.shape)
        req.raw_input_contents.append(to_raw(arr))
    for name in outputs or ():
        req.outputs.add(name=name)
    return req.SerializeToString()


def decode_infer_response(data: bytes, limits: Limits = DEFAULT_LIMITS, *,
                          any_version: bool = False) -> InferResponse:
    """The client side: raw or typed output data, as the server chose. ``any_version``: a
    version that is not an integer (MLServer allows ``"v1"``) reads as None instead of an error."""
    resp = parse_message(pb.ModelInferResponse, data, "ModelInferResponse", limits)
    raw = resp.raw_output_contents
    if raw and len(raw) != len(resp.outputs):
        raise WireError(f"raw_output_contents has {len(raw)} buffers for {len(resp.outputs)} outputs")
    outputs = {t.name: from_raw(t.name, t.datatype, t.shape, raw[i], limits) if raw
               else from_contents(t.name, t.datatype, t.shape, t.contents, limits)
               for i, t in enumerate(resp.outputs)}
    return InferResponse(model=resp.model_name, version=_version(resp.model_version, any_version), outputs=outputs,
                         id=resp.id)


def _version(text: str, any_version: bool) -> int | None:
    try:
        return parse_version(text)
    except WireError:
        if any_version:
            return None
        raise
