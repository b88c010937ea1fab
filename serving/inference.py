"""The one inference path, whatever protocol brought the call.

:class:`Inference` runs a :class:`Call` (the models, their inputs, the outputs
wanted, the deadline and the priority) and answers an :class:`Outcome`: the
encoded body or an error's status code and message, plus the trailers every
answer carries (the ORCA load report; on an overload refusal, the
retry-after). It owns what must be the same for every protocol: in-flight
accounting and draining, version lookup, signature checks, the per-request
row limit, the batcher with deadline and priority, error counting for the
load report, and the request metrics. A protocol brings only its ``decode``
(bytes to a :class:`Call`, raising :class:`~serving.errors.InvalidInput` on
a malformed one) and its ``encode`` (results to bytes):

- ``weiserving.v1`` msgpack: :class:`serving.server.InferenceService`;
- OIP gRPC (``inference.GRPCInferenceService``): :mod:`serving.oip_grpc`;
- OIP REST (``/v2``): :mod:`serving.oip_rest`.

Errors are translated to status codes once, here (``ServingError.code``);
:func:`finish` turns an outcome into a gRPC answer, :mod:`serving.oip_rest`
into an HTTP one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np

from protocol import wire
from serving.config import ServerConfig
from serving.errors import DeadlineExpired, Draining, InvalidInput, RowLimitExceeded, ServingError, status_message
from serving.loadcache import ReportCache
from serving.metrics import ServerMetrics
from serving.repository import LoadedVersion, ModelManager

__all__ = ["POD_ERRORS", "Call", "InFlight", "Inference", "Outcome", "abort", "call_options", "check_priority",
           "check_row_limit", "finish", "priority_of"]

log = logging.getLogger("serving.server")
T = TypeVar("T")

# What counts as an error in the load report's ``eps`` (what ``orca_wrr`` penalises): the pod's own
# failures and refusals, never a caller's mistake (INVALID_ARGUMENT, NOT_FOUND, ...).
POD_ERRORS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN})


class InFlight:
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


@dataclass(frozen=True, kw_only=True)
class Call:
    """One inference call, whatever protocol brought it: the models to run, their inputs, the
    outputs wanted (None: all), the deadline (``time.monotonic()``; None: none), the priority."""

    targets: Mapping[str, int | None]
    inputs: Mapping[str, np.ndarray]
    outputs: tuple[str, ...] | None = None
    deadline: float | None = None
    priority: str = "default"


@dataclass(frozen=True, kw_only=True)
class Outcome(Generic[T]):
    """How a call ended: its encoded ``body`` (when ``code`` is OK) or an error ``message``, and
    the trailers every answer carries (the load report; on an overload refusal, the retry-after)."""

    code: grpc.StatusCode
    body: T | None = None
    message: str = ""
    trailers: tuple[tuple[str, Any], ...] = ()
    retry_after_s: float | None = None


class Inference:
    """Runs calls (:meth:`execute`); never raises for a call's sake: its outcome says how it ended."""

    def __init__(self, manager: ModelManager, config: ServerConfig, metrics: ServerMetrics,
                 in_flight: InFlight) -> None:
        self.manager = manager
        self.limits = wire.Limits(max_message_bytes=config.max_message_bytes)
        self._metrics = metrics
        self._in_flight = in_flight
        self._reports = ReportCache(lambda: manager.snapshot)

    def trailers(self, used: list[LoadedVersion], error: ServingError | None = None) -> tuple[tuple[str, Any], ...]:
        md = self._reports.metadata(used, self._in_flight.count)
        retry_after = getattr(error, "retry_after_s", None)
        if retry_after is not None:  # an overload refusal: when to come back (protocol.wire, Overload)
            md = (*md, (wire.RETRY_AFTER_KEY, str(max(1, round(retry_after * 1000)))))
        return md

    def _failed(self, used: list[LoadedVersion], exc: ServingError) -> Outcome[Any]:
        return Outcome(code=exc.code, message=str(exc), trailers=self.trailers(used, exc),
                       retry_after_s=getattr(exc, "retry_after_s", None))

    def execute(self, decode: Callable[[], Call],
                encode: Callable[[Call, dict[str, wire.ModelResult]], T]) -> Outcome[T]:
        """Run one call; never raises: any error is in the outcome (a bug is logged, INTERNAL)."""
        start = time.monotonic()
        used: list[LoadedVersion] = []
        try:
            self._in_flight.enter()
        except Draining as exc:
            return self._failed(used, exc)
        code = grpc.StatusCode.OK
        try:
            call = decode()
            body = encode(call, self._run(call, used))
            return Outcome(code=code, body=body, trailers=self.trailers(used))
        except ServingError as exc:
            code = exc.code
            return self._failed(used, exc)
        except Exception as exc:   # a bug, not the caller's fault: log it, answer INTERNAL
            code = grpc.StatusCode.INTERNAL
            log.exception("inference call failed")
            return Outcome(code=code, message=f"internal error: {type(exc).__name__}: {exc}",
                           trailers=self.trailers(used))
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

    def _run(self, call: Call, used: list[LoadedVersion]) -> dict[str, wire.ModelResult]:
        deadline, priority = call.deadline, call.priority
        for model, version in call.targets.items():
            used.append(self.manager.acquire(model, version))
        checked = [(lv, lv.signature.validate(call.inputs, lv.model),
                    lv.signature.check_outputs(call.outputs, lv.model)) for lv in used]
        for lv, rows, _ in checked:
            check_row_limit(lv, rows)
        # every model but the last goes to its batch threads; the last runs on this thread,
        # which a single-model call (the common case) then never leaves while a slot is free
        others = [(lv, names, lv.runner.submit(call.inputs, rows, deadline, priority))
                  for lv, rows, names in checked[:-1]]
        last, rows, names = checked[-1]
        outputs = last.runner.run(call.inputs, rows, deadline, priority)
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
        return {lv.model: results[lv.model] for lv in used}     # in the order asked


def finish(context: grpc.ServicerContext, out: Outcome[T]) -> T:
    """Answer a gRPC call with an outcome: its trailers, then its body or its error."""
    context.set_trailing_metadata(out.trailers)
    if out.code is not grpc.StatusCode.OK:
        abort(context, out.code, out.message)
    return out.body  # type: ignore[return-value]


def call_options(context: grpc.ServicerContext) -> tuple[float | None, str]:
    """A gRPC call's deadline (``time.monotonic()``; None: none) and priority."""
    remaining = context.time_remaining()
    # grpcio reports "no deadline" as a huge number rather than None
    deadline = None if remaining is None or remaining > 1e7 else time.monotonic() + remaining
    return deadline, priority_of(context)


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """The one place a call ends in an error: the message cut to what every client accepts."""
    context.abort(code, status_message(message))


def priority_of(context: grpc.ServicerContext) -> str:
    """The call's ``wei-priority`` (see :mod:`protocol.wire`); none is ``default``."""
    for key, value in context.invocation_metadata() or ():
        if key == wire.PRIORITY_KEY:
            return check_priority(value)
    return "default"


def check_priority(value: object) -> str:
    """A ``wei-priority`` value (metadata or HTTP header) checked; None (absent) is ``default``."""
    if value is None:
        return "default"
    if value not in wire.PRIORITIES:
        raise InvalidInput(f"{wire.PRIORITY_KEY}: expected one of {', '.join(wire.PRIORITIES)}, "
                           f"got {str(value)[:64]!r}")
    return str(value)


def check_row_limit(lv: LoadedVersion, rows: int) -> None:
    """A request larger than the batch queue can hold would never be admitted: the caller's to split."""
    b = lv.config.batching
    if b.enabled and rows > b.max_queued_rows:
        raise RowLimitExceeded(
            f"model {lv.model!r}: the request has {rows} rows, over this model's limit of {b.max_queued_rows} "
            f"rows per request (max_enqueued_batches {b.max_enqueued_batches} x max_batch_size "
            f"{b.max_batch_size}); split it into calls of at most {b.max_queued_rows} rows")


