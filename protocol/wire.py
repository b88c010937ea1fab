"""The WeiServing wire protocol, shared by the client SDK and the model server.

Transport
---------
gRPC service ``weiserving.v1.Inference`` with two unary methods, registered
through ``grpc.method_handlers_generic_handler`` (no protoc step). Payloads
are msgpack maps; the gRPC serializers are the identity on ``bytes`` and the
codecs below do the work, so that a malformed payload becomes a clean
``INVALID_ARGUMENT`` rather than gRPC's generic deserialisation failure.

- ``/weiserving.v1.Inference/Predict``  (:data:`PREDICT_METHOD`)
- ``/weiserving.v1.Inference/Metadata`` (:data:`METADATA_METHOD`)

Tensors
-------
A tensor is the msgpack ExtType with code :data:`TENSOR_EXT_CODE` (84, ``'T'``).
Its data is a fixed little-endian header followed by the raw buffer::

    u8  format version (1)
    u8  len(dtype)       then that many ASCII bytes: numpy dtype.str, e.g. b'<f4'
    u8  ndim             then ndim x u64 dims
    ... raw C-order little-endian buffer, prod(dims) * itemsize bytes

Accepted dtypes (:data:`ALLOWED_DTYPES`): ``|b1``; ``|i1 <i2 <i4 <i8``;
``|u1 <u2 <u4 <u8``; ``<f2 <f4 <f8``; and fixed-width bytes ``|S{n}``
(1 <= n <= :attr:`Limits.max_bytes_itemsize`). Object, unicode, big-endian,
structured and any other dtype are refused. The encoder converts big-endian
arrays to little-endian. Decoding is zero-copy: :func:`unpack_tensor` returns
``numpy.frombuffer`` over the ext payload, a **read-only** array; copy it if
you need to write.

Predict request (map)::

    {"model": str, "version": int | None,      # one model (None = latest)
     "models": {str: int | None} | None,       # or several models, one input
     "inputs": {str: tensor},
     "outputs": [str] | None}                   # None = all outputs

Exactly one of ``model`` and ``models`` is set; ``outputs`` applies to every
model named. Predict response (map)::

    {"results": {model: {"version": int, "outputs": {str: tensor}}}}

one entry per requested model (one for a single-model call).

Metadata request: ``{"model": str | None}``. Response::

    {"models": {name: {"versions": {"1": {"state": "AVAILABLE",
                                           "signature": {"inputs": {...},
                                                         "outputs": {...}}}},
                       "batching": {...}}}}

with each signature entry ``{"dtype": "<f4", "shape": [-1, 13]}`` (-1 = any).

Load report
-----------
Every response (errors included) carries trailing metadata
:data:`LOAD_REPORT_KEY` (``endpoint-load-metrics-bin``): an ORCA
``xds.data.orca.v3.OrcaLoadReport`` protobuf (see :mod:`protocol.orca`) with
``cpu_utilization`` and named metrics ``in_flight``, ``queue_depth`` (rows
waiting in batch queues), ``batch_fill`` and ``ewma_latency_ms``.

The same bytes are sent again under :data:`LOAD_REPORT_MIRROR_KEY`
(``weiserving-load-bin``): grpc-core's client channel, and so grpcio,
consumes ``endpoint-load-metrics-bin`` itself and never hands it to the
application (checked with grpcio 1.85: the key is on the wire, the Python
call's trailing metadata lacks it). Envoy and gRPC C++/Java/Go ORCA
listeners read the standard key; Python clients read the mirror through
:func:`load_report_from_metadata`.

Errors
------
gRPC status codes: NOT_FOUND (model/version), INVALID_ARGUMENT (names,
shapes, dtypes, malformed payload), RESOURCE_EXHAUSTED (queue full, payload
too large; retry on another endpoint), UNAVAILABLE (draining),
DEADLINE_EXCEEDED. Decoding errors raise :class:`WireError`.

Overload
--------
A call may say how much it matters in request metadata :data:`PRIORITY_KEY`
(``wei-priority``): one of :data:`PRIORITIES`, ``critical``, ``default``
(the same as no header) or ``sheddable``. Under overload a server refuses
``sheddable`` calls first and ``critical`` ones last. Metadata, not the
payload, so a server can refuse before it decodes a 100 KB body.

A server that refuses a call because it is overloaded answers
RESOURCE_EXHAUSTED with trailing metadata :data:`RETRY_AFTER_KEY`
(``wei-retry-after-ms``): a decimal integer, the milliseconds after which
this server expects to have room. A client should take the refusal as a
signal about the pod's load (raise its cost, back off from it for about
that long), never as a failure of the pod, and may retry the call at once
on another pod. A RESOURCE_EXHAUSTED without the key (a payload too large)
is about the call, not the pod. (gRFC A6's ``grpc-retry-pushback-ms`` is
reserved to gRPC itself: grpcio applications may not set ``grpc-`` keys.)

Bounds on decoding (:class:`Limits`): the message size is checked before
parsing; msgpack's ``max_*_len`` limits cap every string, bin, ext, array
and map; a tensor has at most ``max_dims`` dims and its buffer must be
exactly ``prod(shape) * itemsize`` bytes; trailing bytes are refused.

Client sketch::

    channel = grpc.insecure_channel("pod:8500")
    predict = channel.unary_unary(PREDICT_METHOD)          # bytes in, bytes out
    body, call = predict.with_call(encode_request(PredictRequest(
        model="ctr", inputs={"dense": dense, "sparse": sparse})), timeout=0.1)
    scores = decode_response(body).outputs()["ctr"]
    load = load_report_from_metadata(call.trailing_metadata())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from .orca import LoadReport, decode_load_report, encode_load_report
from .tensor import (
    ALLOWED_DTYPES,
    DEFAULT_LIMITS,
    TENSOR_EXT_CODE,
    Limits,
    WireError,
    pack_tensor,
    unpack_tensor,
)

__all__ = [
    "ALLOWED_DTYPES", "LOAD_REPORT_KEY", "LOAD_REPORT_MIRROR_KEY", "METADATA_METHOD",
    "PREDICT_METHOD", "PRIORITIES", "PRIORITY_KEY", "RETRY_AFTER_KEY", "SERVICE",
    "TENSOR_EXT_CODE", "Limits", "LoadReport", "ModelResult", "PredictRequest",
    "PredictResponse", "WireError", "decode_load_report", "decode_metadata_request",
    "decode_metadata_response", "decode_request", "decode_response", "encode_load_report",
    "encode_metadata_request", "encode_metadata_response", "encode_request",
    "encode_response", "load_report_from_metadata", "load_report_metadata", "pack_tensor",
    "unpack_tensor",
]

SERVICE = "weiserving.v1.Inference"
PREDICT_METHOD = f"/{SERVICE}/Predict"
METADATA_METHOD = f"/{SERVICE}/Metadata"
LOAD_REPORT_KEY = "endpoint-load-metrics-bin"
LOAD_REPORT_MIRROR_KEY = "weiserving-load-bin"
PRIORITY_KEY = "wei-priority"
PRIORITIES = ("sheddable", "default", "critical")  # least to most important
RETRY_AFTER_KEY = "wei-retry-after-ms"

# --------------------------------------------------------------------------- envelopes


def _packb(obj: Any, limits: Limits) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=lambda o: _default(o, limits))


def _default(obj: Any, limits: Limits) -> Any:
    if isinstance(obj, np.ndarray):
        return pack_tensor(obj, limits)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _unpackb(data: bytes, limits: Limits) -> Any:
    if len(data) > limits.max_message_bytes:
        raise WireError(f"message is {len(data)} bytes; at most {limits.max_message_bytes}")

    def ext_hook(code: int, payload: bytes) -> Any:
        if code != TENSOR_EXT_CODE:
            raise WireError(f"unknown msgpack ext type {code}; expected {TENSOR_EXT_CODE}")
        return unpack_tensor(payload, limits)

    n = limits.max_message_bytes
    try:
        unpacker = msgpack.Unpacker(
            raw=False, ext_hook=ext_hook, strict_map_key=True,
            max_buffer_size=max(n, len(data)), max_str_len=n, max_bin_len=n, max_ext_len=n,
            max_array_len=limits.max_tensors * 4, max_map_len=limits.max_tensors * 4,
        )
        unpacker.feed(data)
        obj = unpacker.unpack()
        if unpacker.tell() != len(data):
            raise WireError(f"{len(data) - unpacker.tell()} trailing bytes after the payload")
        return obj
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage input
        raise WireError(f"malformed msgpack payload: {type(exc).__name__}: {exc}") from None


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise WireError(what)


def _tensor_map(obj: Any, what: str, limits: Limits) -> dict[str, np.ndarray]:
    _expect(isinstance(obj, dict), f"{what} must be a map of name -> tensor")
    _expect(len(obj) <= limits.max_tensors, f"{what} has more than {limits.max_tensors} entries")
    for name, value in obj.items():
        _expect(isinstance(name, str) and 0 < len(name) <= limits.max_name_len,
                f"{what} names must be non-empty strings of <= {limits.max_name_len} chars")
        _expect(isinstance(value, np.ndarray), f"{what}[{name!r}] must be a tensor ext type")
    return obj


def _version(obj: Any, what: str) -> int | None:
    _expect(obj is None or (isinstance(obj, int) and not isinstance(obj, bool) and obj >= 0),
            f"{what} must be a non-negative integer or nil")
    return obj


@dataclass(frozen=True, kw_only=True)
class PredictRequest:
    """One Predict call: either ``model`` (+ ``version``) or ``models``."""

    inputs: dict[str, np.ndarray]
    model: str | None = None
    version: int | None = None
    models: dict[str, int | None] | None = None
    outputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.models is None):
            raise WireError("set exactly one of 'model' and 'models'")
        if self.models is not None and not self.models:
            raise WireError("'models' must name at least one model")

    def targets(self) -> dict[str, int | None]:
        """The models to run, each with its requested version (None = latest)."""
        if self.models is not None:
            return dict(self.models)
        assert self.model is not None
        return {self.model: self.version}


@dataclass(frozen=True, kw_only=True)
class ModelResult:
    version: int
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class PredictResponse:
    results: dict[str, ModelResult] = field(default_factory=dict)

    def outputs(self, model: str | None = None) -> dict[str, np.ndarray]:
        """The outputs of ``model``, or of the only model when there is one."""
        if model is None:
            if len(self.results) != 1:
                raise KeyError("several models answered; name one")
            return next(iter(self.results.values())).outputs
        return self.results[model].outputs


def encode_request(req: PredictRequest, limits: Limits = DEFAULT_LIMITS) -> bytes:
    body: dict[str, Any] = {"inputs": req.inputs,
                            "outputs": list(req.outputs) if req.outputs is not None else None}
    if req.models is not None:
        body["models"] = req.models
    else:
        body["model"], body["version"] = req.model, req.version
    return _packb(body, limits)


def decode_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> PredictRequest:
    obj = _unpackb(data, limits)
    _expect(isinstance(obj, dict), "Predict request must be a msgpack map")
    inputs = _tensor_map(obj.get("inputs"), "inputs", limits)
    outputs = obj.get("outputs")
    _expect(outputs is None or (isinstance(outputs, list)
                                and all(isinstance(o, str) for o in outputs)),
            "outputs must be nil or a list of output names")
    models = obj.get("models")
    if models is not None:
        _expect(isinstance(models, dict) and all(isinstance(k, str) for k in models),
                "models must be a map of model name -> version (int or nil)")
        models = {k: _version(v, f"models[{k!r}]") for k, v in models.items()}
        _expect(len(models) <= limits.max_tensors, "too many models in one request")
    model = obj.get("model")
    _expect(model is None or isinstance(model, str), "model must be a string")
    return PredictRequest(inputs=inputs, model=model, version=_version(obj.get("version"),
                          "version"), models=models,
                          outputs=tuple(outputs) if outputs is not None else None)


def encode_response(resp: PredictResponse, limits: Limits = DEFAULT_LIMITS) -> bytes:
    return _packb({"results": {m: {"version": r.version, "outputs": r.outputs}
                               for m, r in resp.results.items()}}, limits)


def decode_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> PredictResponse:
    obj = _unpackb(data, limits)
    _expect(isinstance(obj, dict) and isinstance(obj.get("results"), dict),
            "Predict response must be a map with 'results'")
    results = {}
    for name, r in obj["results"].items():
        _expect(isinstance(r, dict), f"results[{name!r}] must be a map")
        results[name] = ModelResult(version=_version(r.get("version"), "version") or 0,
                                    outputs=_tensor_map(r.get("outputs"), "outputs", limits))
    return PredictResponse(results=results)


def encode_metadata_request(model: str | None = None) -> bytes:
    return msgpack.packb({"model": model}, use_bin_type=True)


def decode_metadata_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> str | None:
    obj = _unpackb(data, limits)
    _expect(isinstance(obj, dict), "Metadata request must be a msgpack map")
    model = obj.get("model")
    _expect(model is None or isinstance(model, str), "model must be a string or nil")
    return model


def encode_metadata_response(models: dict[str, Any]) -> bytes:
    return msgpack.packb({"models": models}, use_bin_type=True)


def decode_metadata_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    obj = _unpackb(data, limits)
    _expect(isinstance(obj, dict) and isinstance(obj.get("models"), dict),
            "Metadata response must be a map with 'models'")
    return obj["models"]


def load_report_metadata(report: LoadReport) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata entries carrying ``report`` (standard key and mirror)."""
    data = encode_load_report(report)
    return ((LOAD_REPORT_KEY, data), (LOAD_REPORT_MIRROR_KEY, data))


def load_report_from_metadata(metadata: Any) -> LoadReport | None:
    """The load report in a call's trailing metadata, or None (absent or malformed)."""
    for key, value in metadata or ():
        if key in (LOAD_REPORT_MIRROR_KEY, LOAD_REPORT_KEY) and isinstance(value, bytes):
            try:
                return decode_load_report(value)
            except ValueError:
                return None
    return None
