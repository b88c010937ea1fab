"""Pods that speak the Open Inference Protocol (KServe v2): the ModelInfer request and answer, pure.

A record whose ``payload.protocol`` is ``oip`` (:class:`registry.records.Protocol`)
names a pod whose port speaks ``inference.GRPCInferenceService``: Triton,
KServe, MLServer, or wei-serve itself (which speaks both on one port). The
balancer, the attempt controller and the drivers treat it as any other
endpoint; only the bytes of an attempt differ (:mod:`weiclient.transport`):

- the request: a ``ModelInferRequest`` with every input in
  ``raw_input_contents`` (what tritonclient sends). Each of a plan's two
  bodies (:class:`OipRequest`, :class:`weiclient.inputs.MsgpackBody`) is
  encoded by the first attempt that goes to a pod of its protocol and kept for
  the plan's later attempts, so a call that meets pods of one protocol
  encodes once and pays for nothing more than one small object;
- the answer becomes the :class:`protocol.wire.PredictResponse` the msgpack
  path returns (:func:`decode_response`); one that does not parse, or names
  another model, is :data:`~weiclient.attempts.MALFORMED`, as a bad msgpack
  answer is;
- versions: OIP's are strings, ``""`` the latest; a plan's ``None`` is sent
  as ``""``. An answer without a version reads as the version asked for, else
  0 (as :func:`protocol.wire.decode_response` reads a nil one), and so does
  one whose version is not an integer (MLServer's ``"v1"``; its agent
  publishes such a model with no versions, so a call asks for ``""``);
- status codes, ``wei-priority``, ``wei-retry-after-ms`` and the ORCA load
  report in trailing metadata are read exactly as on ``weiserving.v1``:
  wei-serve sends them on both. A third-party server sends neither hint nor
  report: its refusals get ``OverloadConfig.default_retry_after_s``, and the
  balancer weighs it by the client's own figures (in-flight rows, latency,
  outlier record) and the record's weight (see :mod:`weiclient.balancer.delay`).

``predict_many`` (several models on one input in one request) has no OIP
counterpart, and sending one ModelInfer per model would be several feature
passes where the caller asked for one: a multi-model call is routed only over
``weiserving`` pods (:meth:`weiclient.balancer.Candidates.view`), and when
only OIP pods host the models it raises :class:`~weiclient.errors.NoEndpointAvailable`
with :attr:`~weiclient.errors.Unavailable.NO_MULTI_MODEL`: call ``predict``
once per model. The client makes no Metadata calls, on either protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protocol import wire
from protocol.oip.infer import (
    decode_infer_response,
    encode_infer_request,
    format_version,
)

from .errors import InvalidInput
from .inputs import LazyBody, sized

__all__ = ["OipRequest", "decode_response", "encode_request"]


class OipRequest(LazyBody):
    """A plan's OIP ModelInfer body: encoded on first use, then kept (one plan, one encoding)."""

    __slots__ = ("max_bytes", "model", "inputs", "outputs", "version")

    def __init__(self, model: str, version: int | None, inputs: Mapping[str, np.ndarray],
                 outputs: Sequence[str] | None, max_bytes: int) -> None:
        super().__init__()
        self.model = model
        self.version = version
        self.inputs = inputs
        self.outputs = outputs
        self.max_bytes = max_bytes

    def _encode(self) -> bytes:
        return encode_request(self.model, self.version, self.inputs, self.outputs, self.max_bytes)

    def __repr__(self) -> str:
        size = "not encoded" if self._body is None else f"{len(self._body):,} bytes"
        return f"<OipRequest {self.model} version {format_version(self.version)!r}: {size}>"


def encode_request(model: str, version: int | None, inputs: Mapping[str, np.ndarray],
                   outputs: Sequence[str] | None, max_bytes: int) -> bytes:
    """A ModelInferRequest; refused before sending when over ``max_bytes`` (as the msgpack payload is)."""
    try:
        body = encode_infer_request(model, inputs, version=version, outputs=outputs)
    except wire.WireError as e:
        raise InvalidInput(f"cannot encode the OIP request: {e}") from None
    return sized(body, max_bytes, "OIP request")


def decode_response(body: bytes, model: str, version: int | None) -> wire.PredictResponse:
    """A ModelInferResponse as the msgpack path's answer to a call of ``model`` at ``version``;
    raises :class:`~protocol.wire.WireError` when it is malformed or names another model."""
    try:
        resp = decode_infer_response(body, any_version=True)  # MLServer's "v1": the version asked for
    except wire.WireError:
        raise
    except (ValueError, TypeError, OverflowError) as e:  # numpy's own, on a buffer that does not fit
        raise wire.WireError(f"malformed ModelInferResponse: {e}") from None
    if resp.model and resp.model != model:
        raise wire.WireError(f"ModelInferResponse for model {resp.model[:64]!r}, asked for {model!r}")
    answered = resp.version if resp.version is not None else version
    return wire.PredictResponse(results={model: wire.ModelResult(version=answered or 0, outputs=resp.outputs)})
