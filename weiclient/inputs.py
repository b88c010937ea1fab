"""A call's arguments checked and encoded, and its answer taken apart: pure functions.

Everything a caller can pass to ``predict`` is checked here before anything
is sent, and a wrong value is an :class:`~weiclient.errors.InvalidInput`
that says what was expected (never an AttributeError from deep inside
numpy). A request over the channel's message size limit is refused here,
before it is sent (:class:`~weiclient.errors.RequestTooLarge`): gRPC would
refuse it on this side with RESOURCE_EXHAUSTED, the code of an overloaded
pod, and it would be retried elsewhere and charged to the pod.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from protocol import wire

from .errors import InvalidInput, RequestTooLarge, WeiClientError

__all__ = [
    "Outputs", "check_model", "check_models", "check_outputs", "check_priority", "check_split", "check_timeout",
    "concat", "encode", "many_label", "many_outputs", "rows", "single_outputs", "slice_inputs", "to_arrays",
]

Outputs = dict[str, np.ndarray]


def check_model(model: object, what: str = "model") -> str:
    if not isinstance(model, str) or not model:
        raise InvalidInput(f"{what}: expected a non-empty model name (str), got {_show(model)}")
    return model


def check_models(models: object) -> Mapping[str, Any]:
    if not isinstance(models, Mapping) or not models:
        raise InvalidInput(f"models: expected a non-empty mapping of model name -> version (int or None), "
                           f"got {_show(models)}")
    for name in models:
        check_model(name, "models")
    return models


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise InvalidInput(f"timeout: expected seconds as a finite number > 0, or None, got {_show(timeout)}")
    return float(timeout)


def check_outputs(outputs: object) -> list[str] | None:
    if outputs is None:
        return None
    if isinstance(outputs, str | bytes) or not isinstance(outputs, list | tuple) \
            or not all(isinstance(o, str) for o in outputs):
        raise InvalidInput(f"outputs: expected a list of output names (str), or None, got {_show(outputs)}")
    return list(outputs)


def check_priority(priority: object) -> str:
    if not isinstance(priority, str) or priority not in wire.PRIORITIES:
        raise InvalidInput(f"priority: expected one of {', '.join(wire.PRIORITIES)} (least to most important), "
                           f"got {_show(priority)}")
    return priority


def check_split(split: object) -> bool | None:
    if split is not None and not isinstance(split, bool):
        raise InvalidInput(f"split: expected True, False or None, got {_show(split)}")
    return split


def to_arrays(inputs: object) -> dict[str, np.ndarray]:
    """``{name: array}`` from a mapping of names to array-likes (lists, numpy arrays)."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInput(f"inputs: expected a non-empty mapping of name -> array, got {_show(inputs)}")
    out = {}
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise InvalidInput(f"inputs: expected input names as str, got {_show(name)}")
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:  # ragged lists, objects numpy cannot hold
            raise InvalidInput(f"input {name!r}: expected an array (every row of the same shape), "
                               f"numpy cannot make one: {e}") from None
        if arr.dtype == object:
            raise InvalidInput(f"input {name!r}: object arrays cannot be sent; expected a numeric, bool or "
                               f"fixed-width bytes dtype")
        out[name] = arr
    return out


def sized(body: bytes, max_bytes: int, what: str = "request") -> bytes:
    """``body`` unless it is over ``max_bytes``: then :class:`RequestTooLarge`, nothing sent."""
    if len(body) > max_bytes:
        raise RequestTooLarge(
            f"the {what} is {len(body):,} bytes encoded, over the limit of {max_bytes:,} bytes "
            f"(ChannelConfig.max_message_bytes); it was not sent. Send fewer rows per call, or "
            f"predict(..., split=True) to scatter them over several instances", size=len(body), limit=max_bytes)
    return body


def encode(req: wire.PredictRequest, max_bytes: int) -> bytes:
    """The request's bytes; refused before sending when over ``max_bytes``."""
    try:
        payload = wire.encode_request(req)
    except wire.WireError as e:
        raise InvalidInput(f"cannot encode the request: {e}") from None
    return sized(payload, max_bytes)


class LazyBody:
    """A plan's body in one protocol, encoded by the first attempt that goes to a pod of that
    protocol and kept for the later ones: a call that meets pods of one protocol encodes once.
    :meth:`body` raises what the encoding raises (a caller's error), before anything is sent."""

    __slots__ = ("_body",)

    def __init__(self) -> None:
        self._body: bytes | None = None

    def body(self) -> bytes:
        body = self._body
        if body is None:  # two threads racing here build equal bytes; either may stay
            body = self._body = self._encode()
        return body

    @property
    def encoded(self) -> bool:
        return self._body is not None

    def _encode(self) -> bytes:
        raise NotImplementedError


class MsgpackBody(LazyBody):
    """The ``weiserving.v1`` body (its OIP twin: :class:`weiclient.oip.OipRequest`)."""

    __slots__ = ("max_bytes", "request")

    def __init__(self, request: wire.PredictRequest, max_bytes: int) -> None:
        super().__init__()
        self.request = request
        self.max_bytes = max_bytes

    def _encode(self) -> bytes:
        return encode(self.request, self.max_bytes)


def rows(arrays: Mapping[str, np.ndarray]) -> int:
    """The batch size the inputs agree on (0 when they do not, or are scalars): a call's cost in rows."""
    sizes = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    return sizes.pop() if len(sizes) == 1 else 0


def slice_inputs(arrays: Mapping[str, np.ndarray], sl: slice) -> dict[str, np.ndarray]:
    return {k: v[sl] for k, v in arrays.items()}


def single_outputs(resp: wire.PredictResponse, model: str) -> Outputs:
    result = resp.results.get(model)
    if result is None:
        raise WeiClientError(f"the server answered without a result for {model!r}: {sorted(resp.results)}")
    return dict(result.outputs)


def many_outputs(resp: wire.PredictResponse) -> dict[str, Outputs]:
    return {m: dict(r.outputs) for m, r in resp.results.items()}


def concat(model: str, shards: Any, parts: list[Outputs]) -> Outputs:
    names = set(parts[0])
    out = {}
    for name in names:
        pieces = []
        for shard, part in zip(shards, parts, strict=True):
            arr = part.get(name)
            if arr is None or np.ndim(arr) == 0 or len(arr) != shard.size:
                raise WeiClientError(f"{model}: output {name!r} from {shard.endpoint.address} does not have "
                                     f"{shard.size} rows; cannot reassemble a scattered call")
            pieces.append(arr)
        out[name] = np.concatenate(pieces)
    return out


def many_label(models: object) -> str:
    """The metrics label of a ``predict_many`` call."""
    if isinstance(models, Mapping) and all(isinstance(m, str) for m in models):
        return "+".join(models)
    return "<invalid>"


def _show(value: object) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{type(value).__name__} {shown}"
