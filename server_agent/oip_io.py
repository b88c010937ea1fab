"""The agent's I/O towards an Open Inference Protocol server (``wei-agent run --protocol oip``).

What :mod:`server_agent.server_io` does for wei-serve's ``/status``, done
for any OIP server (Triton, KServe, MLServer, or wei-serve's own
``inference.GRPCInferenceService``): one :class:`OipReader` poll answers an
:class:`OipReading` that the agent's loop consumes as it consumes a
:class:`~server_agent.server_io.ServerReading` (``reachable``, ``models``,
``work()``, ``sample()``, ``in_flight``, ``problem``).

**Models and versions.** The core protocol cannot list models. With
``--model NAME`` (repeatable) the agent reads those; without, it asks the
server's repository index: Triton's ``RepositoryIndex`` (an extension on
``inference.GRPCInferenceService``), then MLServer's
``inference.model_repository.ModelRepositoryService``. A server that has
neither (UNIMPLEMENTED) cannot say what it serves, and no record can be
written: :class:`~server_agent.errors.DiscoveryError`, which ends the agent
with one line saying to pass ``--model``. Each model that ``ModelReady``
says is ready is published with the versions ``ModelMetadata`` lists: the
record holds non-negative integers, so a model whose versions are not all
decimal integers (MLServer allows ``"v1"``) or lists none is published with
an empty list (hosts the model, any version), and the agent logs once why.

**Capacity and health** come from the server's Prometheus metrics at
``metrics_url`` (see :mod:`server_agent.oip_metrics`); without them the
capacity is unknown and the declared or calibrated weight stands. MLServer
counts a caller's mistake (a wrong dtype, an unknown model) in
``model_infer_request_failure_total``, and nothing on gRPC tells it from the
pod's own failure, so the error rate the weight controller sees for an
MLServer pod includes its callers' mistakes (Triton's failure counter, too).

**In flight**, while the agent drains (:meth:`OipReader.in_flight`): the
server's count, flagged as an estimate where the server's counters only
bound it (:mod:`server_agent.drain` says how the wait treats one).

Everything here returns a value and never raises to the run loop, but the
DiscoveryError above, which is a configuration mistake.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from protocol import oip
from protocol.oip import pb

from .config import AgentConfig
from .drain import InFlight
from .errors import DiscoveryError
from .estimator import WorkTotals
from .oip_metrics import parse_scrape
from .oip_tracker import MetricsTracker, MetricsView
from .plugins import PluginSet
from .probes import ProbeKind, TcpSocketHandler
from .probes.oip import OipCallError, OipLiveHandler, OipReadyHandler, oip_call
from .probes.result import Handler
from .server_io import AllOf, _get
from .weight import ServerSample

__all__ = ["INDEX_METHODS", "OipReader", "OipReading", "build_oip_handlers", "oip_batch_timer", "oip_predict",
           "record_versions"]

log = logging.getLogger("server_agent")


def _index_messages() -> tuple[Any, Any]:
    """RepositoryIndexRequest / Response as Triton and MLServer define them (the same fields and
    numbers), built in a private descriptor pool: :mod:`protocol.oip` has the core messages only."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="wei_agent/repository_index.proto", package="wei_agent.repository",
                                            syntax="proto3")
    req = fd.message_type.add(name="RepositoryIndexRequest")
    req.field.add(name="repository_name", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    req.field.add(name="ready", number=2, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    resp = fd.message_type.add(name="RepositoryIndexResponse")
    entry = resp.nested_type.add(name="ModelIndex")
    for number, name in enumerate(("name", "version", "state", "reason"), 1):
        entry.field.add(name=name, number=number, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    resp.field.add(name="models", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                   type_name=".wei_agent.repository.RepositoryIndexResponse.ModelIndex")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"wei_agent.repository.{n}"))
                 for n in ("RepositoryIndexRequest", "RepositoryIndexResponse"))  # type: ignore[return-value]


IndexRequest, IndexResponse = _index_messages()

INDEX_METHODS: tuple[tuple[str, str], ...] = (
    ("Triton's RepositoryIndex", "/inference.GRPCInferenceService/RepositoryIndex"),
    ("MLServer's ModelRepositoryService", "/inference.model_repository.ModelRepositoryService/RepositoryIndex"),
)
"""(what, method path) of the repository indexes tried, in order, when no model is named."""


def record_versions(versions: Sequence[str]) -> tuple[list[int], str | None]:
    """An OIP model's version strings as the record's integer list, and why not when they are not.

    All decimal integers: those, sorted. None listed, or any that is not one: ``[]``
    (the model, any version) with the reason to log."""
    if all(v.isascii() and v.isdigit() and len(v) <= 18 for v in versions):
        return sorted({int(v) for v in versions}), None
    shown = ", ".join(repr(v) for v in list(versions)[:4])
    return [], f"versions {shown} are not integers: published with no version list (any version)"


@dataclass(frozen=True, slots=True)
class OipReading:
    """One poll of an OIP server. ``ready``: what ServerReady said (None: no answer, ``problem`` says
    why). ``hosted``: {model: [versions]} of the ready models. ``metrics``: the scrape's view."""

    ready: bool | None
    hosted: Mapping[str, Sequence[int]] | None = None
    metrics: MetricsView | None = None
    problem: str | None = None

    @property
    def reachable(self) -> bool:
        return self.ready is not None

    @property
    def models(self) -> dict[str, list[int]] | None:
        return {k: list(v) for k, v in self.hosted.items()} if self.hosted is not None else None

    @property
    def in_flight(self) -> int | None:
        return self.metrics.pending if self.metrics is not None else None

    @property
    def requests(self) -> int | None:
        return self.metrics.requests if self.metrics is not None else None

    @property
    def errors(self) -> int | None:
        return self.metrics.errors if self.metrics is not None else None

    def work(self) -> WorkTotals | None:
        return self.metrics.work if self.metrics is not None else None

    def busy_fraction(self) -> float | None:
        return self.metrics.busy_fraction if self.metrics is not None else None

    def queue_delay_s(self) -> float | None:
        return None  # no OIP server we read reports one

    def sample(self) -> ServerSample:
        m = self.metrics
        if not self.ready or m is None:
            return ServerSample(ready=bool(self.ready), requests=self.requests, errors=self.errors)
        return ServerSample(ready=True, p99_ms=m.p99_ms, ewma_ms=m.mean_latency_ms, queue_rows=m.queue_rows,
                            busy_fraction=m.busy_fraction, requests=m.requests, errors=m.errors)


class OipReader:
    """Polls one OIP server: readiness, models, metrics. Used from the agent's loop only (one thread);
    it keeps the metrics tracker and the repository index that answered between polls."""

    lists_models = True  # a record only once a ready model is named
    idle_when_unknown = False  # an OIP server cannot be told to drain: without a count, wait the whole timeout

    def __init__(self, target: str, *, models: Sequence[str] = (), metrics_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.configured = tuple(models)
        self.metrics_url = metrics_url
        self._clock = clock
        self._index: str | None = None  # the path of the index that answered
        self._discovered: dict[str, list[str]] = {}  # name -> the versions the index listed
        self._tracker = MetricsTracker()
        self._noted: set[str] = set()

    @property
    def names(self) -> tuple[str, ...]:
        """The models the readiness probe checks: those named, else those the index last listed."""
        return self.configured or tuple(self._discovered)

    def read(self, timeout: float = 1.0, *, metrics: bool = True) -> OipReading:
        """One poll. Raises DiscoveryError only when the server answers but can list no model."""
        problems: list[str] = []
        try:
            with grpc.insecure_channel(self.target) as channel:
                ready = oip_call(channel, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse,
                                 timeout).ready
                names = self.configured or self._discover(channel, timeout)
                hosted = self._hosted(channel, names, timeout, problems)
        except OipCallError as e:
            return OipReading(None, problem=f"oip {self.target}: {e}")
        view = self._scrape(timeout, problems) if metrics else None
        return OipReading(ready, hosted, view, "; ".join(problems) or None)

    def in_flight(self, timeout: float = 0.5) -> InFlight:
        """The requests the server still has, from its metrics (count None: no metrics say)."""
        text = _get(self.metrics_url, timeout) if self.metrics_url else None
        scrape = parse_scrape(text.decode("utf-8", "replace")) if text is not None else None
        if scrape is None:
            return InFlight(None, gone=_refused(self.target, timeout))
        return InFlight(scrape.pending, estimate=scrape.in_flight_estimate, progress=scrape.progress)

    def _discover(self, channel: grpc.Channel, timeout: float) -> tuple[str, ...]:
        missing = []
        for what, path in sorted(INDEX_METHODS, key=lambda m: m[1] != self._index):
            try:
                resp = oip_call(channel, path, IndexRequest(ready=True), IndexResponse, timeout)
            except OipCallError as e:
                if e.code == "UNIMPLEMENTED":
                    missing.append(what)
                    continue
                raise
            self._index = path
            listed: dict[str, list[str]] = {}
            for m in resp.models:  # MLServer's states read "State.READY"
                if m.name and m.state.rsplit(".", 1)[-1].upper() in ("", "READY"):
                    listed.setdefault(m.name, []).extend([m.version] if m.version else [])
            self._discovered = dict(sorted(listed.items()))
            return tuple(self._discovered)
        raise DiscoveryError(f"the OIP server at {self.target} cannot list its models (no {' and no '.join(missing)}); "
                             f"pass --model NAME for each model it serves")

    def _hosted(self, channel: grpc.Channel, names: Sequence[str], timeout: float,
                problems: list[str]) -> dict[str, list[int]]:
        hosted = {}
        for name in names:
            try:
                if not oip_call(channel, "ModelReady", pb.ModelReadyRequest(name=name), pb.ModelReadyResponse,
                                timeout).ready:
                    problems.append(f"model {name!r} is not ready")
                    continue
                meta = oip_call(channel, "ModelMetadata", pb.ModelMetadataRequest(name=name),
                                pb.ModelMetadataResponse, timeout)
            except OipCallError as e:
                if e.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise  # the server went away mid-poll: the whole reading is unknown
                problems.append(f"model {name!r}: {e}")
                continue
            # ModelMetadata's versions; MLServer lists none there, its index does
            versions, why = record_versions(list(meta.versions) or self._discovered.get(name, []))
            if why is not None and name not in self._noted:
                self._noted.add(name)
                log.info("agent: model %r: %s", name, why)
            hosted[name] = versions
        return hosted

    def _scrape(self, timeout: float, problems: list[str]) -> MetricsView | None:
        if self.metrics_url is None:
            return None
        text = _get(self.metrics_url, timeout)
        if text is None:
            problems.append(f"metrics {self.metrics_url} did not answer: capacity unknown")
            return None
        scrape = parse_scrape(text.decode("utf-8", "replace"))
        if scrape is None:
            problems.append(f"metrics {self.metrics_url}: no Triton, MLServer or wei-serve metric: capacity unknown")
            return None
        self._tracker, view = self._tracker.step(scrape, self._clock())
        return view

    def __repr__(self) -> str:
        return f"<OipReader {self.target} models={list(self.names)} metrics={self.metrics_url}>"


def _zeros(spec: Any, batch: int) -> tuple[list[int], bytes]:
    """A zero tensor for one input of ModelMetadata: (shape, raw buffer); the first dimension,
    -1, is the batch, any other -1 is 1."""
    import numpy as np

    from protocol.oip.tensors import dtype_of, to_raw

    shape = [batch, *(d if d > 0 else 1 for d in list(spec.shape)[1:])]
    if spec.datatype == "BYTES":
        return shape, to_raw(np.zeros(shape, dtype="|S1"))
    return shape, to_raw(np.zeros(shape, dtype=dtype_of(spec.datatype)))


def oip_batch_timer(target: str, model: str | None, timeout: float, *,
                    models: Sequence[str] = ()) -> tuple[str, Callable[[int], float]]:
    """(the model, ``measure(batch_size) -> seconds``) over OIP ModelInfer, for
    :func:`server_agent.capacity.calibrate`: batches of zeros shaped and typed by the model's
    ModelMetadata. ``model`` None: the first of ``models``. Raises a one-line RuntimeError when
    the model cannot be timed; ``measure`` raises what the call raised."""
    name = model or (sorted(models)[0] if models else None)
    if name is None:
        raise RuntimeError("calibration: no model to time (the server listed none; name one with --calibrate-model)")
    channel = grpc.insecure_channel(target)
    try:
        meta = oip_call(channel, "ModelMetadata", pb.ModelMetadataRequest(name=name), pb.ModelMetadataResponse,
                        timeout)
    except OipCallError as e:
        channel.close()
        raise RuntimeError(f"calibration: {e}") from None
    unbatched = [i.name for i in meta.inputs if not i.shape or i.shape[0] != -1]
    if unbatched or not meta.inputs:
        channel.close()
        raise RuntimeError(f"calibration: model {name!r} takes no batch dimension (inputs {unbatched or 'none'} "
                           f"do not start with -1); it cannot be timed at several batch sizes")
    infer = channel.unary_unary(oip.METHODS["ModelInfer"])

    def measure(batch: int) -> float:
        req = pb.ModelInferRequest(model_name=name)
        for spec in meta.inputs:
            shape, raw = _zeros(spec, batch)
            req.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            req.raw_input_contents.append(raw)
        body = req.SerializeToString()
        t0 = time.perf_counter()
        infer(body, timeout=timeout)
        return time.perf_counter() - t0

    return name, measure


def oip_predict(target: str, timeout: float) -> Callable[[str, Mapping[str, Any]], Mapping[str, Any]]:
    """The ``predict(model, inputs)`` a plugin's context gets, over OIP ModelInfer: each input cast
    to the datatype ModelMetadata declares (a JSON golden sample has none); an RPC error is raised
    as a one-line RuntimeError naming the status code."""

    def predict(model: str, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        import numpy as np

        from protocol.oip.tensors import dtype_of, from_contents, from_raw, to_raw

        try:
            with grpc.insecure_channel(target) as channel:
                meta = oip_call(channel, "ModelMetadata", pb.ModelMetadataRequest(name=model),
                                pb.ModelMetadataResponse, timeout)
                types = {i.name: i.datatype for i in meta.inputs}
                req = pb.ModelInferRequest(model_name=model)
                for name, value in inputs.items():
                    datatype = types.get(name, "FP32")
                    arr = np.asarray(value, dtype="S" if datatype == "BYTES" else dtype_of(datatype))
                    req.inputs.add(name=name, datatype=datatype, shape=arr.shape)
                    req.raw_input_contents.append(to_raw(arr))
                resp = oip_call(channel, "ModelInfer", req, pb.ModelInferResponse, timeout)
        except OipCallError as e:
            raise RuntimeError(f"{model}: {e.code}: {e.details}") from None
        raw = resp.raw_output_contents
        return {t.name: from_raw(t.name, t.datatype, t.shape, raw[i]) if raw
                else from_contents(t.name, t.datatype, t.shape, t.contents) for i, t in enumerate(resp.outputs)}

    return predict


def build_oip_handlers(cfg: AgentConfig, reader: OipReader) -> dict[ProbeKind, Handler]:
    """Startup: ServerLive. Readiness: ServerReady and ModelReady for each model the reader checks,
    then the plugins. Liveness: ServerLive (a TCP connect for a server without it)."""
    target = f"{cfg.target_host}:{cfg.target_port}"
    live = OipLiveHandler(target, fallback=TcpSocketHandler(host=cfg.target_host, port=cfg.target_port))
    readiness: Handler = OipReadyHandler(target, lambda: reader.names)
    if cfg.plugins is not None:
        readiness = AllOf(readiness, PluginSet(cfg.plugins, target=target,
                                               predict=oip_predict(target, cfg.plugins.timeout_s)))
    return {ProbeKind.STARTUP: live, ProbeKind.READINESS: readiness, ProbeKind.LIVENESS: live}


def _refused(target: str, timeout: float) -> bool:
    """True only when ``target``'s port actively refuses a connection (the process is gone);
    a timeout or any other error is not proof of that."""
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError):
        return False
    return False
