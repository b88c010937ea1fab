"""OIP REST bodies: the infer request and response as JSON, with the binary tensor extension.

Request (``POST /v2/models/{name}[/versions/{v}]/infer``)::

    {"id": str?, "parameters": {"binary_data_output": bool?, "timeout": int?}?,
     "inputs": [{"name": str, "datatype": str, "shape": [int],
                 "data": [...]                    # nested or flat, row-major
                 | "parameters": {"binary_data_size": int}}],
     "outputs": [{"name": str, "parameters": {"binary_data": bool}?}]?}

Binary tensor extension: when the header :data:`HEADER_LENGTH`
(``Inference-Header-Content-Length``) is present, the body's first that
many bytes are the JSON and the rest is the inputs' raw buffers (as in
gRPC's ``raw_input_contents``, BYTES length-prefixed), in the order of the
inputs that declare a ``binary_data_size``. An output goes back binary when
it asks (``binary_data``) or, without a word of its own, when the request
asks for all (``binary_data_output``; what tritonclient sends when it names
no outputs): the response JSON then gives its ``binary_data_size`` instead
of ``data``, the buffers follow the JSON, and the response carries the same
header. JSON ``data`` is flat, BYTES elements as UTF-8 strings.

Errors raise :class:`~protocol.tensor.WireError`; the server answers them
400 with ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from protocol.oip.infer import InferRequest
from protocol.oip.tensors import bytes_array, check_shape, datatype_of, dtype_of, from_raw, narrow, to_raw
from protocol.tensor import DEFAULT_LIMITS, Limits, WireError

__all__ = ["HEADER_LENGTH", "decode_infer", "encode_infer"]

HEADER_LENGTH = "Inference-Header-Content-Length"


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise WireError(what)


def _json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"the request is not JSON: {exc}") from None
    _expect(isinstance(obj, dict), "the request must be a JSON object")
    return obj


def _params(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    _expect(isinstance(params, dict), f"{what} parameters must be an object")
    return params


def decode_infer(model: str, version: int | None, body: bytes, header_length: int | None,
                 limits: Limits = DEFAULT_LIMITS) -> tuple[InferRequest, Callable[[str], bool]]:
    """The request, and which outputs go back binary (a predicate on the output's name)."""
    _expect(len(body) <= limits.max_message_bytes,
            f"the request is {len(body)} bytes; at most {limits.max_message_bytes}")
    if header_length is not None:
        _expect(0 <= header_length <= len(body), f"{HEADER_LENGTH} is {header_length} but the body is "
                f"{len(body)} bytes")
    split = len(body) if header_length is None else header_length
    obj, binary = _json(body[:split]), memoryview(body)[split:]
    params = _params(obj, "request")
    raw_inputs = obj.get("inputs")
    _expect(isinstance(raw_inputs, list) and 0 < len(raw_inputs) <= limits.max_tensors,
            f"inputs must be a list of 1 to {limits.max_tensors} tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for t in raw_inputs:
        _expect(isinstance(t, dict), "each input must be an object with name, datatype, shape and data")
        name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
        _expect(isinstance(name, str) and 0 < len(name) <= limits.max_name_len,
                f"input names must be non-empty strings of <= {limits.max_name_len} chars")
        _expect(name not in inputs, f"input {name!r} appears twice")
        _expect(isinstance(datatype, str), f"input {name!r}: datatype must be a string")
        _expect(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape),
                f"input {name!r}: shape must be a list of integers")
        size = _params(t, f"input {name!r}").get("binary_data_size")
        if size is not None:
            _expect(isinstance(size, int) and 0 <= size <= len(binary) - offset,
                    f"input {name!r}: binary_data_size {size!r} but {len(binary) - offset} binary bytes are left")
            inputs[name] = from_raw(name, datatype, shape, binary[offset:offset + size].tobytes(), limits)
            offset += size
        else:
            _expect("data" in t, f"input {name!r} has neither data nor a binary_data_size parameter")
            inputs[name] = _from_json(name, datatype, check_shape(shape, name, limits), t["data"], limits)
    _expect(offset == len(binary), f"{len(binary) - offset} binary bytes after the last binary input")
    outputs, binary_out = _outputs(obj.get("outputs"), params, limits)
    rid = obj.get("id", "")
    _expect(isinstance(rid, str), "id must be a string")
    timeout = params.get("timeout")
    _expect(timeout is None or (isinstance(timeout, int) and timeout >= 0),
            "parameter 'timeout' must be a non-negative integer (microseconds)")
    return InferRequest(model=model, version=version, inputs=inputs, outputs=outputs, id=rid,
                        timeout_s=timeout / 1e6 if timeout else None), binary_out


def _outputs(raw: Any, params: Mapping[str, Any],
             limits: Limits) -> tuple[tuple[str, ...] | None, Callable[[str], bool]]:
    default = params.get("binary_data_output", False)
    _expect(isinstance(default, bool), "parameter 'binary_data_output' must be true or false")
    if raw is None:
        return None, lambda _name: default
    _expect(isinstance(raw, list) and len(raw) <= limits.max_tensors,
            f"outputs must be a list of at most {limits.max_tensors} objects")
    binary: dict[str, bool] = {}
    for o in raw:
        _expect(isinstance(o, dict) and isinstance(o.get("name"), str), "each output must be an object with a name")
        _expect(o["name"] not in binary, f"output {o['name']!r} is requested twice")
        flag = _params(o, f"output {o['name']!r}").get("binary_data", default)
        _expect(isinstance(flag, bool), f"output {o['name']!r}: binary_data must be true or false")
        binary[o["name"]] = flag
    return tuple(binary) or None, lambda name: binary.get(name, default)


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any, limits: Limits) -> np.ndarray:
    _expect(isinstance(data, list), f"input {name!r}: data must be a list")
    try:
        values = np.asarray(data)
    except ValueError as exc:   # ragged nesting
        raise WireError(f"input {name!r}: data is not a regular array: {exc}") from None
    n = math.prod(shape)
    _expect(values.size == n, f"input {name!r}: data has {values.size} values but shape {list(shape)} needs {n}")
    values = values.reshape(-1)
    if datatype == "BYTES":
        _expect(n == 0 or values.dtype.kind == "U", f"input {name!r}: BYTES data must be strings")
        return bytes_array(name, [s.encode("utf-8") for s in values.tolist()], shape, limits)
    dtype = dtype_of(datatype)
    if n == 0:
        return np.zeros(shape, dtype)
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]
    _expect(values.dtype.kind in allowed, f"input {name!r}: {datatype} data must be "
            f"{'true/false' if dtype.kind == 'b' else 'integers' if dtype.kind in 'iu' else 'numbers'}, "
            f"got {type(values.reshape(-1)[0].item()).__name__} values")
    out = values.astype(dtype) if dtype.kind == "f" else narrow(name, datatype, values)
    return out.reshape(shape)


def encode_infer(model: str, version: int, outputs: Mapping[str, np.ndarray], binary: Callable[[str], bool],
                 id: str = "") -> tuple[bytes, int | None]:  # noqa: A002
    """The response body, and the JSON's length when binary buffers follow it (else None)."""
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if id:
        doc["id"] = id
    tensors, buffers = [], []
    for name, arr in outputs.items():
        t: dict[str, Any] = {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape)}
        if binary(name):
            buffers.append(to_raw(arr))
            t["parameters"] = {"binary_data_size": len(buffers[-1])}
        elif arr.dtype.kind == "S":
            t["data"] = [e.decode("utf-8", "replace") for e in arr.reshape(-1).tolist()]
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    doc["outputs"] = tensors
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not buffers:
        return head, None
    return b"".join([head, *buffers]), len(head)
