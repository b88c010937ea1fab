"""The gRPC model server: ``weiserving.v1.Inference`` + ``grpc.health.v1.Health``.

Lifecycle (staged, idempotent, observable through :attr:`ModelServer.phase`):
``start`` loads and warms every model, then binds and reports SERVING;
``drain`` sets health to NOT_SERVING, answers new calls UNAVAILABLE, waits
for in-flight calls up to the grace period; ``stop`` cancels what is left,
stops the status endpoint and unloads the models.

Health: service ``""`` and ``weiserving.v1.Inference`` are SERVING while the
server is ready (started, not draining, at least one model loaded); each
model name is SERVING while it has a loaded version.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocol import wire
from protocol.status import StatusDoc
from serving.config import ServerConfig
from serving.errors import (
    DeadlineExpired,
    Draining,
    InvalidInput,
    ModelNotFound,
    RowLimitExceeded,
    ServingError,
    status_message,
)
from serving.http import StatusHttp
from serving.loadcache import ReportCache
from serving.metrics import ServerMetrics
from serving.reports import build_status
from serving.repository import LoadedModels, LoadedVersion, ModelManager

log = logging.getLogger("serving.server")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# What counts as an error in the load report's ``eps`` (what ``orca_wrr`` penalises): the pod's own
# failures and refusals, never a caller's mistake (INVALID_ARGUMENT, NOT_FOUND, ...).
POD_ERRORS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN})


class _InFlight:
    """Counts calls in progress; refuses new ones once draining; lets drain wait for zero."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0
        self.draining = False

    def enter(self) -> None:
        with self._cond:
            if self.draining:
                raise Draining("server is draining (shutting down); retry on another endpoint")
            self.count += 1

    def leave(self) -> None:
        with self._cond:
            self.count -= 1
            if self.count == 0:
                self._cond.notify_all()

    def refuse_new(self) -> None:
        with self._cond:
            self.draining = True

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count == 0, timeout)


class InferenceService:
    """Predict and Metadata; errors are translated to status codes here, once."""

    def __init__(self, manager: ModelManager, config: ServerConfig, metrics: ServerMetrics,
                 in_flight: _InFlight) -> None:
        self._manager = manager
        self._limits = wire.Limits(max_message_bytes=config.max_message_bytes)
        self._metrics = metrics
        self._in_flight = in_flight
        self._reports = ReportCache(lambda: manager.snapshot)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(wire.SERVICE, {
            "Predict": grpc.unary_unary_rpc_method_handler(self.predict),
            "Metadata": grpc.unary_unary_rpc_method_handler(self.metadata),
        })

    def _report(self, context: grpc.ServicerContext, used: list[LoadedVersion],
                error: ServingError | None = None) -> None:
        md = self._reports.metadata(used, self._in_flight.count)
        retry_after = getattr(error, "retry_after_s", None)
        if retry_after is not None:  # an overload refusal: when to come back (protocol.wire, Overload)
            md = (*md, (wire.RETRY_AFTER_KEY, str(max(1, round(retry_after * 1000)))))
        context.set_trailing_metadata(md)

    def predict(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        start = time.monotonic()
        used: list[LoadedVersion] = []
        code = grpc.StatusCode.OK
        try:
            self._in_flight.enter()
        except Draining as exc:
            self._report(context, used)
            _abort(context, exc.code, str(exc))
        try:
            return self._predict(self._decode(request), context, used, start)
        except ServingError as exc:
            code = exc.code
            self._report(context, used, exc)
            _abort(context, exc.code, str(exc))
        except Exception as exc:   # a bug, not the caller's fault: log it, answer INTERNAL
            code = grpc.StatusCode.INTERNAL
            log.exception("Predict failed")
            self._report(context, used)
            _abort(context, code, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if code in POD_ERRORS:
                for lv in used:
                    lv.runner.stats.record_error()
            for lv in used:
                lv.release()
            self._in_flight.leave()
            # labelled by loaded models only: a caller must not be able to mint label values
            elapsed = time.monotonic() - start
            for model in {lv.model for lv in used} or {""}:
                self._metrics.observe(model, code, elapsed)

    def _decode(self, request: bytes) -> wire.PredictRequest:
        try:
            return wire.decode_request(request, self._limits)
        except wire.WireError as exc:
            raise InvalidInput(f"malformed Predict request: {exc}") from None

    def _predict(self, req: wire.PredictRequest, context: grpc.ServicerContext,
                 used: list[LoadedVersion], start: float) -> bytes:
        remaining = context.time_remaining()
        # grpcio reports "no deadline" as a huge number rather than None
        deadline = None if remaining is None or remaining > 1e7 else start + remaining
        priority = _priority(context)
        for model, version in req.targets().items():
            used.append(self._manager.acquire(model, version))
        checked = [(lv, lv.signature.validate(req.inputs, lv.model),
                    lv.signature.check_outputs(req.outputs, lv.model)) for lv in used]
        for lv, rows, _ in checked:
            _check_row_limit(lv, rows)
        # every model but the last goes to its batch threads; the last runs on this thread,
        # which a single-model call (the common case) then never leaves while a slot is free
        others = [(lv, names, lv.runner.submit(req.inputs, rows, deadline, priority))
                  for lv, rows, names in checked[:-1]]
        last, rows, names = checked[-1]
        outputs = last.runner.run(req.inputs, rows, deadline, priority)
        results = {last.model: wire.ModelResult(version=last.version,
                                                outputs={n: outputs[n] for n in names})}
        for lv, names, fut in others:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                outputs = fut.result(timeout)
            except futures.TimeoutError:
                raise DeadlineExpired(f"deadline exceeded waiting for model {lv.model!r}") \
                    from None
            results[lv.model] = wire.ModelResult(version=lv.version,
                                                 outputs={n: outputs[n] for n in names})
        results = {lv.model: results[lv.model] for lv in used}     # in the order asked
        body = wire.encode_response(wire.PredictResponse(results=results), self._limits)
        self._report(context, used)
        return body

    def metadata(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            try:
                model = wire.decode_metadata_request(request, self._limits)
            except wire.WireError as exc:
                raise InvalidInput(f"malformed Metadata request: {exc}") from None
            snap = self._manager.snapshot
            if model is not None and model not in snap:
                raise ModelNotFound(f"model {model!r} is not loaded; loaded models: "
                                    f"{sorted(snap)}")
            names = [model] if model is not None else sorted(snap)
            self._report(context, [])
            return wire.encode_metadata_response({m: describe_model(snap, m) for m in names})
        except ServingError as exc:
            self._report(context, [])
            _abort(context, exc.code, str(exc))


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """The one place a call ends in an error: the message cut to what every client accepts."""
    context.abort(code, status_message(message))


def _priority(context: grpc.ServicerContext) -> str:
    """The call's ``wei-priority`` (see :mod:`protocol.wire`); none is ``default``."""
    for key, value in context.invocation_metadata() or ():
        if key == wire.PRIORITY_KEY:
            if value not in wire.PRIORITIES:
                raise InvalidInput(f"{wire.PRIORITY_KEY}: expected one of {', '.join(wire.PRIORITIES)}, "
                                   f"got {str(value)[:64]!r}")
            return str(value)
    return "default"


def _check_row_limit(lv: LoadedVersion, rows: int) -> None:
    """A request larger than the batch queue can hold would never be admitted: the caller's to split."""
    b = lv.config.batching
    if b.enabled and rows > b.max_queued_rows:
        raise RowLimitExceeded(
            f"model {lv.model!r}: the request has {rows} rows, over this model's limit of {b.max_queued_rows} "
            f"rows per request (max_enqueued_batches {b.max_enqueued_batches} x max_batch_size "
            f"{b.max_batch_size}); split it into calls of at most {b.max_queued_rows} rows")


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
        self._in_flight = _InFlight()
        self.metrics = ServerMetrics(lambda: self.manager.snapshot, lambda: self._in_flight.count)
        self.service = InferenceService(self.manager, config, self.metrics, self._in_flight)
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
        for name in ("", wire.SERVICE):
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
            self._grpc.add_generic_rpc_handlers((self.service.handler(),))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
            self.port = self._grpc.add_insecure_port(f"{self.config.host}:{self.config.port}")
            self._grpc.start()
            if self.config.status_port is not None:
                self._status = StatusHttp(self.config.status_host, self.config.status_port,
                                          status=self.status, ready=lambda: self.ready,
                                          metrics=self.metrics.exposition)
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

