"""``inference.GRPCInferenceService`` (OIP gRPC) on the model server's gRPC port.

The six core methods of the specification; Triton's extensions (model
config, statistics, repository, shared memory, streaming) are not
registered and answer UNIMPLEMENTED. Registered as a generic handler whose
serializers are the identity on bytes, as ``weiserving.v1`` is: a message
that does not parse becomes INVALID_ARGUMENT saying so, not gRPC's generic
deserialisation failure.

ModelInfer runs through :meth:`serving.inference.Inference.execute`, the
path ``weiserving.v1`` Predict takes: the same version lookup, signature
checks, batcher, admission, deadline (the gRPC deadline, bounded by Triton's
``timeout`` parameter when sent), ``wei-priority`` metadata, error codes,
metrics and trailing metadata (the ORCA load report, ``wei-retry-after-ms``
on an overload refusal). Every other method answers with the load report
too. ServerLive is true while the process serves gRPC; ServerReady and
ModelReady are false while the server drains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from protocol import oip, wire
from protocol.oip import pb
from protocol.oip.infer import InferRequest, decode_infer_request, encode_infer_response, parse_message
from protocol.tensor import WireError
from serving import oip as facts
from serving.errors import InvalidInput, ServingError
from serving.inference import Call, Inference, abort, call_options, finish

__all__ = ["OipGrpc"]


class OipGrpc:
    """The OIP gRPC service over one :class:`~serving.inference.Inference`; ``ready`` is the server's."""

    def __init__(self, inference: Inference, ready: Callable[[], bool]) -> None:
        self._inference = inference
        self._ready = ready

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Callable[[bytes, grpc.ServicerContext], bytes]] = {
            "ServerLive": self._unary(pb.ServerLiveRequest, lambda _r: pb.ServerLiveResponse(live=True)),
            "ServerReady": self._unary(pb.ServerReadyRequest, lambda _r: pb.ServerReadyResponse(ready=self._ready())),
            "ModelReady": self._unary(pb.ModelReadyRequest, self._model_ready),
            "ServerMetadata": self._unary(pb.ServerMetadataRequest,
                                          lambda _r: pb.ServerMetadataResponse(**facts.server_metadata())),
            "ModelMetadata": self._unary(pb.ModelMetadataRequest, self._model_metadata),
            "ModelInfer": self.model_infer,
        }
        assert set(methods) == set(oip.METHODS), "every method of grpc_predict_v2.proto is served"
        return grpc.method_handlers_generic_handler(oip.SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()})

    def _unary(self, request_type: Any, answer: Callable[[Any], Any]) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        name = request_type.DESCRIPTOR.name

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                try:
                    message = parse_message(request_type, request, name, self._inference.limits)
                except WireError as exc:
                    raise InvalidInput(str(exc)) from None
                body = answer(message).SerializeToString()
                context.set_trailing_metadata(self._inference.trailers([]))
                return body
            except ServingError as exc:
                context.set_trailing_metadata(self._inference.trailers([]))
                abort(context, exc.code, str(exc))
                raise AssertionError("unreachable: abort raises") from None
        return handle

    def _model_ready(self, req: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        version = facts.version_of(req.version)
        return pb.ModelReadyResponse(ready=self._ready() and facts.model_ready(
            self._inference.manager.snapshot, req.name, version))

    def _model_metadata(self, req: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        doc = facts.model_metadata(self._inference.manager.snapshot, req.name, facts.version_of(req.version))
        return pb.ModelMetadataResponse(
            name=doc["name"], versions=doc["versions"], platform=doc["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc["outputs"]])

    def model_infer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        asked: list[InferRequest] = []

        def decode() -> Call:
            deadline, priority = call_options(context)
            try:
                req = decode_infer_request(request, self._inference.limits)
            except WireError as exc:
                raise InvalidInput(f"malformed ModelInferRequest: {exc}") from None
            asked.append(req)
            return facts.infer_call(req, deadline, priority)

        def encode(_call: Call, results: dict[str, wire.ModelResult]) -> bytes:
            ((model, result),) = results.items()
            return encode_infer_response(model, result.version, result.outputs, asked[0].id)

        return finish(context, self._inference.execute(decode, encode))

