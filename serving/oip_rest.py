"""OIP REST (``/v2``) on the model server's HTTP status port.

Routes (the specification's health, metadata and inference)::

    GET  /v2                                         server metadata
    GET  /v2/health/live                             200 while the process serves
    GET  /v2/health/ready                            200 ready, 503 not (loading, draining)
    GET  /v2/models/{name}[/versions/{v}]            model metadata (404 unknown)
    GET  /v2/models/{name}[/versions/{v}]/ready      200 ready, 503 loaded but not (draining), 404 unknown
    POST /v2/models/{name}[/versions/{v}]/infer      JSON tensors, binary extension (protocol.oip.rest)

An infer call runs through :meth:`serving.inference.Inference.execute`, the
``weiserving.v1`` path: batching, admission, deadline (Triton's ``timeout``
parameter), priority (header ``wei-priority``), error codes and metrics.
Headers carry what gRPC puts in trailing metadata: the ORCA load report as
``endpoint-load-metrics-bin`` (base64 of the protobuf, as gRPC carries a
``-bin`` value) and, on an overload refusal, ``wei-retry-after-ms`` and
``Retry-After`` (whole seconds, at least 1).

Errors are ``{"error": message}`` with the HTTP status of the gRPC code, as
Google's API mapping gives it (:data:`HTTP_STATUS`): 400 bad input, 404
unknown model or version, 429 overloaded, 503 draining, 504 deadline, 500 a
bug. The routes use only the listed methods (405 otherwise).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc

from protocol import wire
from protocol.oip.infer import InferRequest
from protocol.oip.rest import HEADER_LENGTH, decode_infer, encode_infer
from protocol.tensor import WireError
from serving import oip as facts
from serving.errors import InvalidInput, ServingError
from serving.http import HttpRequest, HttpResponse
from serving.inference import Call, Inference, Outcome, check_priority
from serving.repository import VersionState

__all__ = ["HTTP_STATUS", "OipRest"]

C = grpc.StatusCode
HTTP_STATUS = {C.OK: 200, C.INVALID_ARGUMENT: 400, C.FAILED_PRECONDITION: 400, C.OUT_OF_RANGE: 400,
               C.NOT_FOUND: 404, C.RESOURCE_EXHAUSTED: 429, C.UNAVAILABLE: 503, C.DEADLINE_EXCEEDED: 504,
               C.UNIMPLEMENTED: 501, C.CANCELLED: 499}


class OipRest:
    """``handle`` answers one ``/v2`` request; given to :class:`~serving.http.StatusHttp` as ``v2``."""

    def __init__(self, inference: Inference, ready: Callable[[], bool]) -> None:
        self._inference = inference
        self._ready = ready

    def handle(self, req: HttpRequest) -> HttpResponse:
        try:
            return self._route(req)
        except _MethodNotAllowed as exc:
            return HttpResponse(status=405, body=json.dumps({"error": str(exc)}).encode())
        except ServingError as exc:
            return _error(exc.code, str(exc))

    def _route(self, req: HttpRequest) -> HttpResponse:
        parts = [unquote(p) for p in req.path.rstrip("/").split("/")[2:]]   # after "/v2"
        snap = self._inference.manager.snapshot
        if parts == [] or parts[0] == "health":
            want = {(): "server", ("health", "live"): "live", ("health", "ready"): "ready"}.get(tuple(parts))
            if want is None:
                return _error(C.NOT_FOUND, f"no route {req.path}; try /v2/health/live or /v2/health/ready")
            _method(req, "GET")
            if want == "server":
                return _json(200, facts.server_metadata())
            ok = want == "live" or self._ready()
            return HttpResponse(status=200 if ok else 503, body=b"" if ok else b'{"error":"not ready"}')
        if parts[0] != "models" or len(parts) < 2:
            return _error(C.NOT_FOUND, f"no route {req.path}; the OIP routes are /v2, /v2/health/..., /v2/models/...")
        name, rest, version = parts[1], parts[2:], None
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                return _error(C.NOT_FOUND, f"no route {req.path}: /versions/ needs a version")
            version, rest = facts.version_of(rest[1]), rest[2:]
        if rest == []:
            _method(req, "GET")
            return _json(200, facts.model_metadata(snap, name, version))
        if rest == ["ready"]:
            _method(req, "GET")
            ok = self._ready() and facts.lookup(snap, name, version).state is VersionState.AVAILABLE
            return HttpResponse(status=200 if ok else 503, body=b"" if ok else b'{"error":"not ready"}')
        if rest == ["infer"]:
            _method(req, "POST")
            return self._infer(req, name, version)
        return _error(C.NOT_FOUND, f"no route {req.path}; a model has /ready, /infer and its metadata")

    def _infer(self, req: HttpRequest, model: str, version: int | None) -> HttpResponse:
        asked: list[tuple[InferRequest, Callable[[str], bool]]] = []

        def decode() -> Call:
            priority = check_priority(req.headers.get(wire.PRIORITY_KEY))
            if req.headers.get("Content-Encoding", "identity") != "identity":
                raise InvalidInput("compressed requests are not supported; send the body uncompressed")
            try:
                header_length = _header_length(req.headers.get(HEADER_LENGTH))
                call, binary = decode_infer(model, version, req.body, header_length, self._inference.limits)
            except WireError as exc:
                raise InvalidInput(f"malformed infer request: {exc}") from None
            asked.append((call, binary))
            return facts.infer_call(call, None, priority)   # REST has no deadline but Triton's timeout

        def encode(_call: Call, results: dict[str, wire.ModelResult]) -> tuple[bytes, int | None]:
            ((name, result),) = results.items()
            call, binary = asked[0]
            return encode_infer(name, result.version, result.outputs, binary, call.id)

        return _infer_answer(self._inference.execute(decode, encode))


def _infer_answer(out: Outcome[tuple[bytes, int | None]]) -> HttpResponse:
    headers = [(k, base64.b64encode(v).decode() if isinstance(v, bytes) else str(v))
               for k, v in out.trailers if k != wire.LOAD_REPORT_MIRROR_KEY]
    if out.retry_after_s is not None:
        headers.append(("Retry-After", str(max(1, math.ceil(out.retry_after_s)))))
    if out.code is not C.OK:
        return _error(out.code, out.message, tuple(headers))
    assert out.body is not None
    body, json_length = out.body
    if json_length is None:
        return HttpResponse(status=200, body=body, headers=tuple(headers))
    headers.append((HEADER_LENGTH, str(json_length)))
    return HttpResponse(status=200, body=body, content_type="application/octet-stream", headers=tuple(headers))


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise WireError(f"{HEADER_LENGTH} must be a byte count, got {value[:32]!r}") from None


def _method(req: HttpRequest, allowed: str) -> None:
    if req.method != allowed:
        raise _MethodNotAllowed(f"{req.path} takes {allowed}, not {req.method}")


class _MethodNotAllowed(InvalidInput):
    """Answered 405."""


def _json(status: int, doc: Any) -> HttpResponse:
    return HttpResponse(status=status, body=json.dumps(doc, separators=(",", ":")).encode())


def _error(code: grpc.StatusCode, message: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status=HTTP_STATUS.get(code, 500), body=json.dumps({"error": message}).encode(),
                        headers=headers)
