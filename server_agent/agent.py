"""The agent shell: one thread drives the probe engine, the lifecycle and the weight controller.

Lifecycle of the process (staged, idempotent, observable via :attr:`Agent.view`):

``start()``
    detect capacity, start a ZooKeeper client in the background (the agent
    probes even while ZooKeeper is down), start the run loop.
run loop
    run due probes serially (the engine's clock is injected), poll the
    server every ``status_poll_s`` (:mod:`server_agent.frontend`: wei-serve's
    ``/status`` and ``/metrics``, or an OIP server's gRPC and metrics), ask
    :class:`~server_agent.lifecycle.Lifecycle` for a transition and make the
    write it names through :class:`registry.publisher.Publisher` (which
    survives session loss); publish the weight only when the controller says so.
``request_shutdown()`` (SIGTERM, or ``GET /drain`` from the preStop hook)
    1. drain: ``enabled: false``, weight 0 -- clients stop picking the pod;
    2. wait ``drain_wait_s`` so every client has seen it;
    3. wait until the server is idle (its ``/status`` or metrics, as
       :mod:`server_agent.drain` reads them), up to ``in_flight_timeout_s``;
    4. deregister (delete the node), close the session.
``force()`` (a second signal) cuts the waits short; deregistration is still tried.

The agent never stops the model server: in Kubernetes each container gets
its own SIGTERM (see ``examples/k8s/README.md`` for the ordering).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from kazoo.client import KazooClient

from registry.publisher import Publisher
from registry.records import Capacity, InstanceRecord, State, instance_to_json
from registry.session import SessionMonitor
from registry.zk import connect

from .capacity import CapacityReport, calibrate, detect_capacity
from .config import AgentConfig
from .drain import Decision, IdleWait, Verdict
from .errors import CalibrationError, DiscoveryError
from .estimator import CapacityEstimator
from .frontend import batch_timer, make_handlers, make_reader
from .k8s import pod_info_from_api, pod_info_from_env
from .lifecycle import Lifecycle, Move, Transition
from .probes import ProbeEngine, ProbeKind, ProbeState
from .probes.result import Handler
from .server_io import Reading
from .view import AgentView
from .weight import WeightController

__all__ = ["Agent", "AgentView"]

log = logging.getLogger("server_agent")

HEARTBEAT_S = 1.0
"""The loop wakes at least this often, so /healthz can tell a stuck loop from an idle one."""
RAMP_WRITES = 4
"""Weight-only writes are at least ``ramp_s / RAMP_WRITES`` apart (``PublisherConfig.min_write_interval_s``):
the slow start is published as create at 5 %, about 29, 52 and 76 %, then SERVING at 100 % (5 writes, not the
~12 a 10 % threshold on 5 s polls makes); each write notifies every client watching the pod (issue 11)."""


class Agent:
    """One pod's agent. ``capacity`` and ``handlers`` may be injected (tests, calibration)."""

    def __init__(self, config: AgentConfig, *, capacity: CapacityReport | None = None,
                 handlers: Mapping[ProbeKind, Handler] | None = None, zk_client: KazooClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._capacity = capacity
        self._reader = make_reader(config)
        self._handlers = dict(handlers) if handlers is not None else make_handlers(config, self._reader)
        self._zk = zk_client
        self._owns_zk = zk_client is None
        self._session: SessionMonitor | None = None  # the registry state; restarts a client ZooKeeper refuses
        self._life = Lifecycle()
        self._publisher: Publisher | None = None
        self._ctl: WeightController | None = None
        self._estimator: CapacityEstimator | None = None
        self._engine: ProbeEngine | None = None
        self._reading: Reading | None = None
        self._counts: Counter[tuple[str, bool]] = Counter()
        self._shutdown = threading.Event()
        self._force = threading.Event()
        self._done = threading.Event()
        self._cond = threading.Condition()
        self._view: AgentView | None = None
        self._thread: threading.Thread | None = None
        self._last_transition = ""
        self._drained_at: float | None = None
        self._drain_outcome = ""  # how the in-flight wait ended (AgentView.drain)
        self.clean = False  # the shutdown sequence deregistered without being forced
        self.shutdown_requested_at: float | None = None
        self.deregistered_at: float | None = None
        self.fatal: str | None = None  # why the loop stopped on a configuration mistake (the CLI says it, exits 2)

    # -- stages -------------------------------------------------------------------------

    def start(self) -> Agent:
        with self._cond:
            if self._thread is not None:
                return self
            cfg = self.config
            if self._capacity is None:
                # In a cluster the API knows the pod's limits and node (it needs RBAC to read
                # pods); outside one, or without that right, the downward-API environment.
                pod, note = pod_info_from_api(os.environ, pod_info_from_env(os.environ),
                                              container=os.environ.get("WEI_SERVER_CONTAINER", "model-server"))
                log.info("agent %s: %s", cfg.instance_id, note)
                self._capacity = detect_capacity(pod=pod, prefer_pod_limit=True)  # the server's limit, not ours
            now = self._clock()
            self._engine = ProbeEngine(started_at=now, startup=cfg.startup, readiness=cfg.readiness,
                                       liveness=cfg.liveness)
            cap = self._capacity
            calibrated = cap.capacity.samples_per_s is not None
            prior = cap.score if calibrated else cap.score * cfg.samples_per_core_s
            self._estimator = CapacityEstimator(cfg.estimator, prior=prior, calibrated=calibrated)
            self._ctl = WeightController(cfg.weight, capacity_score=prior, now=now)
            if self._zk is None:
                self._zk = connect(cfg.zk, wait=False)
            if cfg.publisher.recovery is not None:
                self._session = SessionMonitor.acquire(self._zk, cfg.publisher.recovery)
            self._publish_view(now)
            self._thread = threading.Thread(target=self._run, name="wei-agent", daemon=True)
            self._thread.start()
        log.info("agent %s/%s: probing %s (%s), capacity %s (score %g)", cfg.service, cfg.instance_id, cfg.target,
                 cfg.protocol, self._capacity.capacity, self._capacity.score)
        return self

    def request_shutdown(self) -> None:
        """Begin the drain -> wait -> deregister sequence (idempotent)."""
        if not self._shutdown.is_set():
            self.shutdown_requested_at = self._clock()
            log.info("agent %s: shutdown requested: draining", self.config.instance_id)
        self._shutdown.set()

    def force(self) -> None:
        """Cut the shutdown's waits short (a second signal)."""
        self._force.set()
        self.request_shutdown()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the shutdown sequence has finished."""
        return self._done.wait(timeout)

    def close(self) -> None:
        """Stop everything now (tests, errors): a forced shutdown, then the ZooKeeper client."""
        if self._thread is not None:
            self.force()
            self._thread.join(15)
        if self._session is not None:
            self._session.release()
            self._session = None
        if self._owns_zk and self._zk is not None:
            self._zk.stop()
            self._zk.close()
            self._zk = None

    # -- observation ------------------------------------------------------------------------

    @property
    def view(self) -> AgentView:
        with self._cond:
            assert self._view is not None, "start() the agent first"
            return self._view

    def wait_for(self, predicate: Callable[[AgentView], bool], timeout: float = 10.0) -> AgentView:
        """Block until ``predicate(view)`` holds; raises TimeoutError with the last view."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._view is not None and predicate(self._view), timeout):
                raise TimeoutError(f"agent state not reached within {timeout:g}s: {self._view}")
            return self._view  # type: ignore[return-value]

    @property
    def started(self) -> bool:
        """True once :meth:`start` has produced a first view (HTTP answers 503 before)."""
        with self._cond:
            return self._view is not None

    @property
    def publisher(self) -> Publisher | None:
        return self._publisher

    def __repr__(self) -> str:
        return f"<Agent {self.config.service}/{self.config.instance_id} {self._life.phase}>"

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        engine, cfg = self._engine, self.config
        assert engine is not None
        next_poll = self._clock()
        try:
            while not self._shutdown.is_set():
                for kind in engine.due(self._clock()):
                    result = self._handlers[kind].check(engine.spec(kind).timeout_seconds)
                    self._counts[(str(kind), result.ok)] += 1
                    engine.observe(kind, result, self._clock())
                    if self._shutdown.is_set():
                        break
                now = self._clock()
                polled = now >= next_poll
                if polled:
                    self._poll(now)
                    next_poll = now + cfg.status_poll_s
                self._apply(self._clock(), polled)
                due = engine.next_due(now)
                wake = min(next_poll, due if due is not None else math.inf, now + HEARTBEAT_S)
                self._publish_view(now)
                self._shutdown.wait(max(0.0, wake - self._clock()))
            self._shutdown_sequence()
        except Exception as e:
            self.fatal = str(e) if isinstance(e, DiscoveryError) else None  # a configuration mistake: no traceback
            log.error("agent %s: %s", cfg.instance_id, self.fatal or "loop failed", exc_info=self.fatal is None)
            self._force.set()
            self._shutdown_sequence()
        finally:
            self._publish_view(self._clock())
            self._done.set()

    def _poll(self, now: float) -> None:
        reading = self._reader.read(timeout=min(1.0, self.config.status_poll_s))
        if reading.problem and reading.problem != (self._reading.problem if self._reading else None):
            log.warning("agent %s: %s", self.config.instance_id, reading.problem)
        self._reading = reading
        if reading.reachable:  # unreadable status: no evidence either way, hold the weight
            assert self._ctl is not None and self._estimator is not None
            self._ctl.set_capacity_score(self._estimator.observe(reading.work()))
            self._ctl.observe(reading.sample(), now)

    def _why(self) -> str:
        assert self._engine is not None
        failing = [f"{p.kind}: {p.last_reason}" for p in self._engine.snapshot().probes
                   if p.state is not ProbeState.SUCCESS and p.last_reason]
        return "; ".join(failing)

    def _apply(self, now: float, polled: bool) -> None:
        engine, ctl = self._engine, self._ctl
        assert engine is not None and ctl is not None
        routable = engine.snapshot().routable
        why = self._why()
        if routable and not self._life.phase.registered and self._reader.lists_models:
            # The record must name the models the server has loaded: a record without them
            # is one no client may route to. Read them now rather than at the next poll.
            if not (self._reading is not None and self._reading.models):
                self._poll(now)
                polled = True
            if not (self._reading is not None and self._reading.models):
                routable, why = False, "the server lists no loaded model yet"
        t = self._life.step(routable=routable, ramping=ctl.ramp(now) < 1.0, why=why)
        if t is not None:
            self._transition(t, now)
        elif polled and self._life.phase.routable and self._publisher is not None:
            changes: dict[str, Any] = {}
            d = ctl.decide(now)
            if d.publish:
                changes["weight"] = d.weight
                changes["capacity"] = self._measured_capacity()
                log.info("agent %s: weight %s", self.config.instance_id, d.reason)
            models = self._reading.models if self._reading is not None else None
            if models is not None and models != {k: list(v) for k, v in self._publisher.record.models.items()}:
                changes["models"] = models
            if changes:
                self._publisher.update(**changes)

    def _transition(self, t: Transition, now: float) -> None:
        ctl = self._ctl
        assert ctl is not None
        self._last_transition = str(t)
        log.info("agent %s: %s", self.config.instance_id, t)
        if t.move is Move.REGISTER:
            if self.config.calibration is not None and not self._estimator_calibrated():
                self._calibrate()
            ctl.registered(now)
            self._publisher = Publisher(self._zk, self._record(ctl.decide(now).weight), paths=self.config.zk.paths,
                                        config=replace(self.config.publisher, min_write_interval_s=max(
                                            self.config.publisher.min_write_interval_s,
                                            self.config.weight.ramp_s / RAMP_WRITES)))
            self._publisher.register(timeout=None)  # written by the publisher's worker, whenever ZooKeeper allows
        elif t.move is Move.DRAIN and self._publisher is not None:
            self._publisher.drain()
            self._drained_at = now
        elif t.move is Move.ENABLE and self._publisher is not None:
            ctl.registered(now)
            self._publisher.update(enabled=True, weight=ctl.decide(now).weight, state=State.WARMING,
                                   capacity=self._measured_capacity())
        elif t.move is Move.PROMOTE and self._publisher is not None:
            self._publisher.update(state=State.SERVING, weight=ctl.decide(now).weight,
                                   capacity=self._measured_capacity())

    def _estimator_calibrated(self) -> bool:
        return self._estimator is not None and self._estimator.calibrated

    def _calibrate(self) -> None:
        """Time synthetic batches on the server; start the estimate from what they measured.

        Runs once, on the agent's loop, before the first registration (the pod takes no
        traffic yet). A failure is logged and the prior stays: calibration improves a
        guess, it never keeps a pod out of rotation."""
        cfg, cap = self.config, self._capacity
        assert cfg.calibration is not None and cap is not None and self._ctl is not None
        try:
            model, measure = batch_timer(cfg, sorted((self._reading.models if self._reading else None) or cfg.models))
            result = calibrate(measure, cfg.calibration)
        except (RuntimeError, CalibrationError) as e:
            log.warning("agent %s: calibration failed, keeping the prior: %s", cfg.instance_id, e)
            return
        self._capacity = replace(cap, capacity=replace(cap.capacity, samples_per_s=round(result.samples_per_s, 1)),
                                 score=result.samples_per_s,
                                 notes=(*cap.notes, f"calibrated {result.samples_per_s:.1f} samples/s on {model} "
                                                    f"at batch size {result.best_batch_size}"))
        self._estimator = CapacityEstimator(cfg.estimator, prior=result.samples_per_s, calibrated=True)
        self._ctl.set_capacity_score(self._estimator.value)
        log.info("agent %s: calibrated %s: %.1f samples/s at batch size %d", cfg.instance_id, model,
                 result.samples_per_s, result.best_batch_size)

    def _measured_capacity(self) -> Capacity:
        """The detected capacity, with the estimate as ``samples_per_s`` once evidence exists."""
        assert self._capacity is not None and self._estimator is not None
        cap, est = self._capacity.capacity, self._estimator
        return replace(cap, samples_per_s=round(est.value, 1)) if est.measured else cap

    def _record(self, weight: float) -> InstanceRecord:
        cfg, cap = self.config, self._capacity
        assert cap is not None and cfg.address is not None and cfg.port is not None
        models = (self._reading.models if self._reading is not None else None) or {}
        return InstanceRecord(service=cfg.service, id=cfg.instance_id, address=cfg.address, port=cfg.port,
                              weight=weight, capacity=cap.capacity, state=State.WARMING,
                              zone=cfg.zone or cap.pod.zone, node=cfg.node or cap.pod.node_name,
                              models=models, labels=cfg.labels, protocol=cfg.protocol)

    # -- shutdown ---------------------------------------------------------------------------

    def _shutdown_sequence(self) -> None:
        before = self._life.phase
        if self._life.step(routable=False, ramping=False, shutdown=True) is None:
            return
        cfg, pub = self.config, self._publisher
        self._publish_view(self._clock())
        if pub is not None and before.registered:
            if before.routable:
                pub.drain(timeout=2.0)
                self._drained_at = self._clock()
                log.info("agent %s: drained; waiting %gs for clients to see it", cfg.instance_id, cfg.drain_wait_s)
            since = self._clock() - (self._drained_at or self._clock())
            self._force.wait(max(0.0, cfg.drain_wait_s - since))
            self._wait_idle()
        ok = True
        if pub is not None:
            ok = pub.deregister(timeout=2.0 if self._force.is_set() else 10.0)
            pub.close(deregister=False)
        self.deregistered_at = self._clock()
        self.clean = ok and not self._force.is_set()
        self._life.stopped()
        log.info("agent %s: deregistered%s", cfg.instance_id, "" if self.clean else " (forced or unconfirmed)")

    def _wait_idle(self) -> None:
        """Wait until :class:`~server_agent.drain.IdleWait` finds the server idle or gives up (shown as ``drain``)."""
        wait, decision = IdleWait(deadline=self._clock() + self.config.in_flight_timeout_s,
                                  idle_when_unknown=self._reader.idle_when_unknown), Decision(Verdict.WAIT)
        while decision.verdict is Verdict.WAIT and not self._force.wait(decision.retry_in_s):
            wait, decision = wait.step(self._reader.in_flight(timeout=0.5), self._clock())
        if decision.verdict is not Verdict.WAIT:  # else forced
            self._drain_outcome = decision.reason
            log.log(logging.INFO if decision.verdict is Verdict.IDLE else logging.WARNING, "agent %s: %s",
                    self.config.instance_id, decision.reason)

    # -- the view ----------------------------------------------------------------------------

    def _publish_view(self, now: float) -> None:
        engine, ctl, pub = self._engine, self._ctl, self._publisher
        assert engine is not None and ctl is not None and self._capacity is not None
        view = AgentView(
            phase=self._life.phase, engine=engine.snapshot(), capacity=self._capacity, weight=ctl.weight(now),
            published_weight=pub.record.weight if pub is not None and self._life.phase.registered else None,
            health=ctl.last_health, health_factor=ctl.health, ramp=ctl.ramp(now), server=self._reading,
            estimator=self._estimator,
            zk_connected=bool(self._zk is not None and self._zk.connected),
            registry=self._session.status if self._session is not None else None,
            registration_problem=pub.problem if pub is not None and self._life.phase.registered else None,
            zk_writes=pub.stats.writes if pub is not None else 0, weight_publishes=ctl.publishes,
            probe_results=dict(self._counts), heartbeat=now, last_transition=self._last_transition,
            shutdown_requested=self._shutdown.is_set(), forced=self._force.is_set(), drain=self._drain_outcome,
            record=instance_to_json(pub.record) if pub is not None else {},
        )
        with self._cond:
            self._view = view
            self._cond.notify_all()
