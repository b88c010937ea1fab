"""The agent's I/O towards its own model server: status reads, a predict call, the probe handlers.

Everything here returns a value or None and never raises to the run loop: a
server that is down, slow or answers garbage is a failed probe or an unknown
sample, not a dead agent.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from protocol.status import StatusDoc, StatusError

from .config import AgentConfig
from .drain import InFlight
from .estimator import WorkTotals
from .plugins import PluginSet
from .probes import HttpGetHandler, ProbeKind, ProbeResult, TcpSocketHandler
from .probes.grpc_health import GrpcHandler
from .probes.result import Handler, Timer
from .weight import ServerSample

__all__ = ["AllOf", "Reader", "Reading", "ServerReading", "StatusReader", "build_handlers", "grpc_batch_timer",
           "grpc_predict", "read_server"]

SERVER_ERROR_CODES = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                                "DATA_LOSS"})
"""Status codes counted against the pod's health; INVALID_ARGUMENT and NOT_FOUND are the caller's mistakes."""


def _get(url: str, timeout: float) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- our own loopback endpoint
            return resp.read(4 * 1024 * 1024)
    except (OSError, ValueError, urllib.error.URLError):
        return None


def parse_request_counts(text: str) -> tuple[int, int] | None:
    """(requests, server errors) from ``weiserving_requests_total`` in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0
    found = False
    try:
        for family in text_string_to_metric_families(text):  # the family name varies with the TYPE line
            if family.name in ("weiserving_requests", "weiserving_requests_total"):
                found = True  # declared without samples: no request yet, counts are 0
            for s in family.samples:
                if s.name != "weiserving_requests_total":
                    continue
                found = True
                requests += int(s.value)
                if s.labels.get("code") in SERVER_ERROR_CODES:
                    errors += int(s.value)
    except Exception:  # a malformed exposition: no counts, not an error
        return None
    return (requests, errors) if found else None


@dataclass(frozen=True, slots=True)
class ServerReading:
    """One poll of the server: its status document (None when unreachable or unreadable, with
    ``problem`` saying why) and its request counts from ``/metrics``."""

    status: StatusDoc | None
    requests: int | None = None
    errors: int | None = None
    problem: str | None = None

    @property
    def reachable(self) -> bool:
        """The server answered with a status we could read (else: no evidence, hold)."""
        return self.status is not None

    @property
    def in_flight(self) -> int | None:
        return self.status.in_flight if self.status is not None else None

    def busy_fraction(self) -> float | None:
        """The busiest model's busy fraction over the server's window; None when unknown."""
        return self.status.busiest_fraction() if self.status is not None else None

    def queue_delay_s(self) -> float | None:
        """The worst model's queue delay (0 for a model whose window saw no request); None when unknown."""
        if self.status is None:
            return None
        known = [0.0 if m.window.requests_per_s == 0 else m.batching.queue_delay_ms / 1000
                 for m in self.status.models.values() if m.batching.queue_delay_ms is not None]
        return max(known) if known else None

    @property
    def models(self) -> dict[str, list[int]] | None:
        """{model: [versions]} as loaded, for the registry record; None when unknown."""
        return self.status.hosted() if self.status is not None else None

    def work(self) -> WorkTotals | None:
        """Rows and full-use seconds summed over the models that report their work; None if none does."""
        models = self.status.models.values() if self.status is not None else ()
        parts = [(m.work.rows, m.work.busy_s / (m.work.batch_threads or 1)) for m in models
                 if m.work.rows is not None and m.work.busy_s is not None]
        if not parts:
            return None
        return WorkTotals(rows=sum(r for r, _ in parts), busy_s=sum(b for _, b in parts))

    def sample(self) -> ServerSample:
        """What the weight controller reads of this poll (a server that did not answer is not ready)."""
        doc = self.status
        if doc is None:
            return ServerSample(ready=False, requests=self.requests, errors=self.errors)
        return ServerSample(ready=doc.routable, p99_ms=doc.worst_latency_ms("p99"),
                            ewma_ms=doc.worst_latency_ms("ewma"), queue_rows=_float(doc.queue_rows()),
                            busy_fraction=doc.busiest_fraction(),
                            requests=self.requests, errors=self.errors)


def _float(v: int | None) -> float | None:
    return None if v is None else float(v)


def read_server(status_url: str | None, *, timeout: float = 1.0, metrics: bool = True) -> ServerReading:
    """``GET /status`` (and ``/metrics`` for the request counts); never raises."""
    if status_url is None:
        return ServerReading(None)
    body = _get(status_url + "/status", timeout)
    if body is None:
        return ServerReading(None, problem=f"{status_url}/status did not answer")
    try:
        doc = StatusDoc.from_json(body)
    except StatusError as e:
        return ServerReading(None, problem=f"{status_url}/status: {e}")
    counts = None
    if metrics:
        text = _get(status_url + "/metrics", timeout)
        counts = parse_request_counts(text.decode("utf-8", "replace")) if text is not None else None
    requests, errors = counts if counts is not None else (None, None)
    return ServerReading(doc, requests, errors)


class Reading(Protocol):
    """What the agent's loop reads of one poll, whatever the server speaks: :class:`ServerReading`
    (wei-serve's ``/status``) or :class:`server_agent.oip_io.OipReading` (an OIP server)."""

    @property
    def reachable(self) -> bool: ...
    @property
    def problem(self) -> str | None: ...
    @property
    def models(self) -> dict[str, list[int]] | None: ...
    @property
    def in_flight(self) -> int | None: ...
    @property
    def requests(self) -> int | None: ...
    def work(self) -> WorkTotals | None: ...
    def sample(self) -> ServerSample: ...
    def busy_fraction(self) -> float | None: ...
    def queue_delay_s(self) -> float | None: ...


class Reader(Protocol):
    """Polls the model server (``read``) and, while draining, counts what it still has (``in_flight``).

    ``lists_models``: a record may be written only once a reading names a model.
    ``idle_when_unknown``: an unknown in-flight count ends the drain wait (else the
    agent waits its whole ``in_flight_timeout_s``)."""

    lists_models: bool
    idle_when_unknown: bool

    def read(self, timeout: float = 1.0, *, metrics: bool = True) -> Reading: ...
    def in_flight(self, timeout: float = 0.5) -> InFlight: ...


class StatusReader:
    """wei-serve's: ``/status`` and ``/metrics`` under ``status_url`` (None: nothing to read).

    Unknown in-flight counts as idle: wei-serve drains itself on SIGTERM, and with no
    ``status_url`` there is nothing that could ever say otherwise."""

    idle_when_unknown = True

    def __init__(self, status_url: str | None) -> None:
        self.status_url = status_url
        self.lists_models = status_url is not None

    def read(self, timeout: float = 1.0, *, metrics: bool = True) -> ServerReading:
        return read_server(self.status_url, timeout=timeout, metrics=metrics)

    def in_flight(self, timeout: float = 0.5) -> InFlight:
        return InFlight(read_server(self.status_url, timeout=timeout, metrics=False).in_flight)  # exact: a gauge

    def __repr__(self) -> str:
        return f"<StatusReader {self.status_url}>"


def grpc_predict(target: str, timeout: float) -> Callable[[str, Mapping[str, Any]], Mapping[str, Any]]:
    """The ``predict(model, inputs)`` a plugin's context gets: one call, one channel (see grpc_health).

    A golden sample written as JSON has no dtypes (``[[1, 2, 3]]`` is int64), so
    every input is cast to the dtype the model's signature declares (read with
    ``Metadata`` in the same channel). An RPC error is raised as a one-line
    RuntimeError naming the status code.
    """

    def predict(model: str, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        import grpc
        import numpy as np

        from protocol import wire

        try:
            with grpc.insecure_channel(target) as channel:
                meta = wire.decode_metadata_response(channel.unary_unary(wire.METADATA_METHOD)(
                    wire.encode_metadata_request(model), timeout=timeout))
                versions = meta.get(model, {}).get("versions", {})
                latest = versions[max(versions, key=int)] if versions else {}
                dtypes = {n: s.get("dtype") for n, s in latest.get("signature", {}).get("inputs", {}).items()}
                arrays = {k: np.asarray(v, dtype=dtypes.get(k)) for k, v in inputs.items()}
                body = channel.unary_unary(wire.PREDICT_METHOD)(
                    wire.encode_request(wire.PredictRequest(model=model, inputs=arrays)), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") and e.code() is not None else "ERROR"
            details = e.details() if hasattr(e, "details") else ""
            raise RuntimeError(f"{model}: {code}: {details}") from None
        result = wire.decode_response(body).results.get(model)
        if result is None:
            raise RuntimeError(f"the server answered without a result for {model!r}")
        return dict(result.outputs)

    return predict


def grpc_batch_timer(target: str, model: str | None, timeout: float) -> tuple[str, Callable[[int], float]]:
    """(the model, ``measure(batch_size) -> seconds``) for :func:`server_agent.capacity.calibrate`.

    Reads the model's signature with ``Metadata`` and sends batches of zeros
    in its dtypes (a dimension the signature leaves open beyond the batch is
    1). Raises a one-line RuntimeError when the server or the model is not
    there; ``measure`` raises what the call raised.
    """
    import grpc
    import numpy as np

    from protocol import wire

    channel = grpc.insecure_channel(target)
    try:
        meta = wire.decode_metadata_response(channel.unary_unary(wire.METADATA_METHOD)(
            wire.encode_metadata_request(model), timeout=timeout))
    except grpc.RpcError as e:
        channel.close()
        raise RuntimeError(f"calibration: Metadata({model or 'all'}) failed: {e.code().name}: {e.details()}") from None
    if not meta:
        channel.close()
        raise RuntimeError("calibration: the server lists no model")
    name = model if model is not None else sorted(meta)[0]
    versions = meta[name].get("versions", {})
    inputs = versions[max(versions, key=int)]["signature"]["inputs"] if versions else {}
    predict = channel.unary_unary(wire.PREDICT_METHOD)

    def measure(batch: int) -> float:
        arrays = {k: np.zeros([batch, *(d if d > 0 else 1 for d in spec["shape"][1:])], spec["dtype"])
                  for k, spec in inputs.items()}
        body = wire.encode_request(wire.PredictRequest(model=name, inputs=arrays))
        t0 = time.perf_counter()
        predict(body, timeout=timeout)
        return time.perf_counter() - t0

    return name, measure


class AllOf:
    """Several handlers as one: all must pass, the first failure is the result."""

    def __init__(self, *handlers: Handler, clock: Callable[[], float] = time.monotonic) -> None:
        self.handlers = handlers
        self._clock = clock

    def check(self, timeout: float) -> ProbeResult:
        timer = Timer(self._clock)
        notes = []
        for h in self.handlers:
            r = h.check(timeout)
            if not r.ok:
                return timer.fail(r.reason)
            if r.reason:
                notes.append(r.reason)
        return timer.ok("; ".join(notes))

    def __repr__(self) -> str:
        return f"<AllOf {list(self.handlers)}>"


def build_handlers(cfg: AgentConfig) -> dict[ProbeKind, Handler]:
    """Startup: gRPC health. Readiness: gRPC health, then the plugins. Liveness: the server's
    ``/healthz`` (a draining server is still alive, while its gRPC health says NOT_SERVING),
    else a TCP connect to the gRPC port."""
    target = f"{cfg.target_host}:{cfg.target_port}"
    grpc_health = GrpcHandler(target)
    readiness: Handler = grpc_health
    if cfg.plugins is not None:
        plugins = PluginSet(cfg.plugins, target=target, predict=grpc_predict(target, cfg.plugins.timeout_s))
        readiness = AllOf(grpc_health, plugins)
    if cfg.status_url is not None:
        u = urlsplit(cfg.status_url)
        liveness: Handler = HttpGetHandler(host=u.hostname or "127.0.0.1", port=u.port or 80,
                                           path=(u.path or "") + "/healthz", scheme=u.scheme)
    else:
        liveness = TcpSocketHandler(host=cfg.target_host, port=cfg.target_port)
    return {ProbeKind.STARTUP: grpc_health, ProbeKind.READINESS: readiness, ProbeKind.LIVENESS: liveness}
