"""The gRPC model server: ``weiserving.v1.Inference``, OIP and ``grpc.health.v1.Health``.

One gRPC port serves ``weiserving.v1.Inference`` (msgpack) and the Open
Inference Protocol's ``inference.GRPCInferenceService``
(:mod:`serving.oip_grpc`); the HTTP status port also serves OIP REST
``/v2`` (:mod:`serving.oip_rest`). Every inference call, whichever protocol,
runs through :meth:`serving.inference.Inference.execute`.

Lifecycle (staged, idempotent, observable through :attr:`ModelServer.phase`):
``start`` loads and warms every model, then binds and reports SERVING;
``drain`` sets health to NOT_SERVING, answers new calls UNAVAILABLE, waits
for in-flight calls up to the grace period; ``stop`` cancels what is left,
stops the status endpoint and unloads the models.

Health: service ``""``, ``weiserving.v1.Inference`` and ``inference.GRPCInferenceService`` are SERVING while the
server is ready (started, not draining, at least one model loaded); each
model name is SERVING while it has a loaded version.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocol import oip, wire
from protocol.status import StatusDoc
from serving.config import ServerConfig
from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.http import StatusHttp
from serving.inference import Call, Inference, InFlight, abort, call_options, finish
from serving.metrics import ServerMetrics
from serving.oip_grpc import OipGrpc
from serving.oip_rest import OipRest
from serving.reports import build_status
from serving.repository import LoadedModels, ModelManager

log = logging.getLogger("serving.server")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class InferenceService(Inference):
    """``weiserving.v1.Inference``: Predict (msgpack, through :meth:`Inference.execute`) and Metadata."""

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(wire.SERVICE, {
            "Predict": grpc.unary_unary_rpc_method_handler(self.predict),
            "Metadata": grpc.unary_unary_rpc_method_handler(self.metadata),
        })

    def predict(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        def decode() -> Call:
            deadline, priority = call_options(context)
            try:
                req = wire.decode_request(request, self.limits)
            except wire.WireError as exc:
                raise InvalidInput(f"malformed Predict request: {exc}") from None
            return Call(targets=req.targets(), inputs=req.inputs, outputs=req.outputs, deadline=deadline,
                        priority=priority)

        def encode(_call: Call, results: dict[str, wire.ModelResult]) -> bytes:
            return wire.encode_response(wire.PredictResponse(results=results), self.limits)

        return finish(context, self.execute(decode, encode))

    def metadata(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            try:
                model = wire.decode_metadata_request(request, self.limits)
            except wire.WireError as exc:
                raise InvalidInput(f"malformed Metadata request: {exc}") from None
            snap = self.manager.snapshot
            if model is not None and model not in snap:
                raise ModelNotFound(f"model {model!r} is not loaded; loaded models: "
                                    f"{sorted(snap)}")
            names = [model] if model is not None else sorted(snap)
            context.set_trailing_metadata(self.trailers([]))
            return wire.encode_metadata_response({m: describe_model(snap, m) for m in names})
        except ServingError as exc:
            context.set_trailing_metadata(self.trailers([]))
            abort(context, exc.code, str(exc))


def describe_model(snap: LoadedModels, model: str) -> dict[str, Any]:
    versions = snap[model]
    latest = versions[max(versions)]
    b = latest.config.batching
    return {
        "versions": {str(v): {"state": str(lv.state), "signature": lv.signature.to_wire()}
                     for v, lv in sorted(versions.items())},
        "batching": {"enabled": b.enabled, "max_batch_size": b.max_batch_size,
                     "batch_timeout_micros": b.batch_timeout_micros,
                     "max_enqueued_batches": b.max_enqueued_batches,
                     "num_batch_threads": b.num_batch_threads,
                     "allowed_batch_sizes": list(b.allowed_batch_sizes),
                     "slo_p99_ms": b.slo_p99_ms},
    }


class ModelServer:
    """One serving process: models, gRPC, health and (optionally) the status endpoint."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.health = health.HealthServicer()
        self.manager = ModelManager(config, on_change=self._on_models_changed)
        self._in_flight = InFlight()
        self.metrics = ServerMetrics(lambda: self.manager.snapshot, lambda: self._in_flight.count)
        self.service = InferenceService(self.manager, config, self.metrics, self._in_flight)
        self.oip_grpc = OipGrpc(self.service, lambda: self.ready)
        self.oip_rest = OipRest(self.service, lambda: self.ready)
        self._grpc: grpc.Server | None = None
        self._status: StatusHttp | None = None
        self._lock = threading.Lock()
        self._models_seen: set[str] = set()
        self.phase = "created"
        self.draining = threading.Event()   # set when drain() begins; tests and the CLI wait on it
        self.port = 0
        self.status_port: int | None = None

    def __repr__(self) -> str:
        return f"ModelServer(phase={self.phase}, port={self.port}, in_flight={self.in_flight})"

    @property
    def in_flight(self) -> int:
        return self._in_flight.count

    @property
    def ready(self) -> bool:
        return self.phase == "serving" and bool(self.manager.snapshot)

    def _on_models_changed(self, snap: LoadedModels) -> None:
        for model in self._models_seen - set(snap):
            self.health.set(model, NOT_SERVING)
        for model in snap:
            self.health.set(model, SERVING)
        self._models_seen |= set(snap)
        self._set_overall()

    def _set_overall(self) -> None:
        status = SERVING if self.ready else NOT_SERVING
        for name in ("", wire.SERVICE, oip.SERVICE):
            self.health.set(name, status)

    def start(self) -> ModelServer:
        with self._lock:
            if self.phase != "created":
                return self
            self.phase = "loading"
            self._set_overall()
            self.manager.poll_once()
            opts = [("grpc.max_receive_message_length", self.config.max_message_bytes),
                    ("grpc.max_send_message_length", self.config.max_message_bytes),
                    ("grpc.so_reuseport", 0)]
            self._grpc = grpc.server(futures.ThreadPoolExecutor(
                self.config.grpc_workers, thread_name_prefix="grpc"), options=opts)
            self._grpc.add_generic_rpc_handlers((self.service.handler(), self.oip_grpc.handler()))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
            self.port = self._grpc.add_insecure_port(f"{self.config.host}:{self.config.port}")
            self._grpc.start()
            if self.config.status_port is not None:
                self._status = StatusHttp(self.config.status_host, self.config.status_port,
                                          status=self.status, ready=lambda: self.ready,
                                          metrics=self.metrics.exposition, v2=self.oip_rest.handle,
                                          max_body_bytes=self.config.max_message_bytes)
                self.status_port = self._status.port
            self.manager.start()
            self.phase = "serving"
            self._set_overall()
            log.info("serving %d models on port %d", len(self.manager.snapshot), self.port)
            return self

    def drain(self, grace_s: float | None = None) -> bool:
        """NOT_SERVING, refuse new calls, wait for in-flight ones. True if all finished."""
        with self._lock:
            if self.phase in ("draining", "stopped"):
                return self.in_flight == 0
            self.phase = "draining"
        self._in_flight.refuse_new()     # first: a caller that sees NOT_SERVING must be refused
        self.health.enter_graceful_shutdown()
        self.draining.set()
        grace = self.config.grace_s if grace_s is None else grace_s
        clean = self._in_flight.wait_idle(grace)
        if not clean:
            log.warning("grace period over with %d calls in flight; cancelling them",
                        self.in_flight)
        return clean

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop gRPC (cancelling calls still running after ``grace_s``), status, models."""
        with self._lock:
            if self.phase == "stopped":
                return
            self.phase = "stopped"
        self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait()
        if self._status is not None:
            self._status.close()
        self.manager.close()

    def status(self) -> StatusDoc:
        """What the sidecar agent reads (``GET /status``): see :mod:`protocol.status`."""
        return build_status(self.manager.snapshot, phase=self.phase, ready=self.ready,
                            draining=self._in_flight.draining, port=self.port, in_flight=self.in_flight,
                            failures=self.manager.failures)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

