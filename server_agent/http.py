"""The agent's HTTP endpoints (stdlib ``http.server`` in a thread; port 0 picks a free one).

==============  ==================================================================
``/healthz``    200 while the agent's loop runs and the server's liveness probe
                is not failing; 503 with the reason otherwise (kubelet liveness)
``/readyz``     200 while startup and readiness pass, no shutdown is under way and,
                once registered, the record can be written: 503 while ZooKeeper's
                session is lost or being replaced (``reconnecting-fresh``), or
                another live instance holds our id, or writes keep failing
``/startupz``   200 once the startup probe has passed
``/livez``      200 while the agent's own loop runs (the agent container's liveness)
``/metrics``    Prometheus text (:mod:`server_agent.metrics`): weight, capacity,
                health, probe results, registration phase, ZooKeeper writes,
                the server's in-flight, busy ratio and queue delay
``/status``     JSON: everything above, and the published record
``/drain``      starts the shutdown sequence and answers once deregistered (the
                model server container's preStop hook, ``wei-agent drain``):
                on the loopback control listener only, or with the token
==============  ==================================================================

Every handler reads one immutable :class:`~server_agent.agent.AgentView`; none
touches the agent's state.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from registry.session import RegistryState

from .lifecycle import Phase
from .metrics import AgentCollector
from .probes import ProbeKind

if TYPE_CHECKING:
    from .agent import Agent
    from .view import AgentView

__all__ = ["AgentHttp", "verdict"]

STALE_LOOP_S = 30.0
"""/healthz fails when the loop has not stepped for this long (a probe handler stuck past every timeout)."""


UNREGISTERED_STATES = (RegistryState.LOST, RegistryState.RECONNECTING_FRESH)
"""Registry states in which our node is gone until a new session writes it (SUSPENDED: the
session, and the node, may still live, and clients keep routing on their snapshots)."""


def verdict(view: AgentView, kind: str, now: float) -> tuple[bool, str]:
    """(ok, one-line reason) for ``healthz``, ``readyz``, ``startupz`` or ``livez``."""
    ok, reason = _verdict(view, kind, now)
    reason = " ".join(reason.split())  # a plugin's exception may span lines; a probe answer never does
    return ok, reason if len(reason) <= 300 else reason[:297] + "..."


def _verdict(view: AgentView, kind: str, now: float) -> tuple[bool, str]:
    loop_ok = now - view.heartbeat < STALE_LOOP_S or view.phase is Phase.STOPPED
    if not loop_ok:
        return False, f"agent loop stuck for {now - view.heartbeat:.0f}s"
    e = view.engine
    if kind == "livez":
        return True, f"agent alive ({view.phase})"
    if kind == "healthz":
        if not e.alive:
            return False, f"liveness failing: {view.reason(ProbeKind.LIVENESS)}"
        return True, "alive"
    if kind == "startupz":
        if e.started:
            return True, "started"
        return False, f"startup not passed: {view.reason(ProbeKind.STARTUP) or 'no result yet'}"
    if kind == "readyz":
        if view.shutdown_requested or view.phase in (Phase.STOPPING, Phase.STOPPED):
            return False, f"shutting down ({view.phase})"
        if not e.started:
            return False, f"startup not passed: {view.reason(ProbeKind.STARTUP) or 'no result yet'}"
        if not e.ready:
            return False, f"readiness failing: {view.reason(ProbeKind.READINESS) or 'no result yet'}"
        if not e.alive:
            return False, f"liveness failing: {view.reason(ProbeKind.LIVENESS)}"
        if view.phase.registered:
            if view.registration_problem:
                return False, f"not registered in ZooKeeper: {view.registration_problem}"
            reg = view.registry
            if reg is not None and reg.state in UNREGISTERED_STATES:
                return False, f"not registered in ZooKeeper: registry {reg}"
        return True, f"ready ({view.phase}, weight {view.weight:g})"
    raise ValueError(kind)


def agent_status(view: AgentView, now: float) -> dict[str, Any]:
    srv, reg = view.server, view.registry
    return {
        "phase": str(view.phase),
        "verdicts": {k: dict(zip(("ok", "reason"), verdict(view, k, now), strict=True))
                     for k in ("healthz", "readyz", "startupz")},
        "probes": {str(p.kind): {"state": str(p.state), "consecutive_successes": p.consecutive_successes,
                                 "consecutive_failures": p.consecutive_failures, "last_reason": p.last_reason,
                                 "last_latency_ms": round(p.last_latency * 1000, 3), "results": p.results}
                   for p in view.engine.probes},
        "weight": view.weight, "published_weight": view.published_weight, "ramp": view.ramp,
        "health": {"latency": view.health.latency, "queue": view.health.queue, "errors": view.health.errors},
        "capacity": {**view.capacity.capacity.to_json(), "score": view.capacity.score,
                     "measured_samples_per_s": view.estimator.value, "prior_samples_per_s": view.estimator.prior,
                     "confidence": view.estimator.confidence, "evidence_s": view.estimator.evidence_s,
                     "notes": list(view.capacity.notes)},
        "server": {"in_flight": srv.in_flight if srv else None, "reachable": bool(srv and srv.reachable),
                   "problem": srv.problem if srv else None},
        "zookeeper": {"connected": view.zk_connected, "writes": view.zk_writes,
                      "state": str(reg.state) if reg else None, "detail": reg.detail if reg else None,
                      "fresh_restarts": reg.fresh_restarts if reg else 0, "problem": view.registration_problem},
        "weight_publishes": view.weight_publishes, "last_transition": view.last_transition,
        "shutdown_requested": view.shutdown_requested, "drain": view.drain, "record": dict(view.record),
    }


def is_loopback(host: str) -> bool:
    """True for an address only this machine (this pod's containers) can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AgentHttp:
    """Serves the endpoints for ``agent`` on ``host:port``; :attr:`port` is the bound port.

    ``/drain`` ends the pod's registration, so it is a control endpoint: it is
    served on a loopback listener only (the preStop hook runs inside the pod;
    the kubelet's probes and Prometheus reach the health endpoints on ``host``).
    When ``host`` is itself loopback, that one listener is the control one;
    otherwise ``control_port`` (None: none) opens a second listener on
    127.0.0.1 that serves everything; with ``control_fallback`` a taken
    control port is replaced by a free one (:attr:`control_url` says which).
    With a ``token``, ``/drain`` requires ``Authorization: Bearer <token>`` on
    every listener, and is then also served on ``host``.
    """

    def __init__(self, agent: Agent, host: str = "0.0.0.0", port: int = 0, *, drain_endpoint: bool = True,
                 control_port: int | None = None, control_fallback: bool = False,
                 token: str | None = None) -> None:
        registry = CollectorRegistry()
        c = agent.config
        registry.register(AgentCollector(lambda: agent.view, service=c.service, instance_id=c.instance_id,
                                         endpoint=f"{c.address}:{c.port}", zone=c.zone))
        clock = agent._clock
        budget = agent.config.shutdown_budget_s
        self.pending_drains = 0
        lock = threading.Lock()
        outer = self

        def drain_refused(handler: BaseHTTPRequestHandler, control: bool) -> str | None:
            if token is not None:
                given = handler.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    return "/drain needs the control token: Authorization: Bearer <token>\n"
                return None
            if not control:
                where = f"127.0.0.1:{outer.control_port}" if outer.control_port else "a loopback listener"
                return f"/drain is served on {where} only (from inside the pod: wei-agent drain)\n"
            return None

        def make_handler(control: bool) -> type[BaseHTTPRequestHandler]:
            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                    path = self.path.split("?", 1)[0].rstrip("/")
                    if path == "/drain" and drain_endpoint and (why := drain_refused(self, control)):
                        self._send(403, "text/plain", why.encode())
                    elif not agent.started:
                        self._send(503, "text/plain", b"agent starting\n")
                    elif path in ("/healthz", "/readyz", "/startupz", "/livez"):
                        ok, reason = verdict(agent.view, path[1:], clock())
                        self._send(200 if ok else 503, "text/plain", (reason + "\n").encode())
                    elif path == "/metrics":
                        self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                    elif path == "/status":
                        body = json.dumps(agent_status(agent.view, clock()), indent=1, default=str)
                        self._send(200, "application/json", body.encode())
                    elif path == "/drain" and drain_endpoint:
                        with lock:
                            outer.pending_drains += 1
                        try:
                            agent.request_shutdown()
                            done = agent.wait(budget)
                            self._send(200 if done else 503, "text/plain",
                                       b"deregistered\n" if done else b"still draining\n")
                        finally:
                            with lock:
                                outer.pending_drains -= 1
                    else:
                        self._send(404, "text/plain", b"try /healthz /readyz /startupz /livez /metrics /status\n")

                do_POST = do_GET  # noqa: N815 -- /drain by POST too

                def _send(self, code: int, ctype: str, body: bytes) -> None:
                    try:
                        self.send_response(code)
                        self.send_header("Content-Type", ctype)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    except OSError:  # the prober went away
                        pass

                def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                    pass

            return Handler

        self.host = host
        self.control_port: int | None = None
        self._servers = [ThreadingHTTPServer((host, port), make_handler(control=is_loopback(host)))]
        self.port: int = self._servers[0].server_address[1]
        if is_loopback(host):
            self.control_port = self.port
        elif control_port is not None:
            try:
                control = ThreadingHTTPServer(("127.0.0.1", control_port), make_handler(control=True))
            except OSError as e:
                if not (control_fallback and e.errno == errno.EADDRINUSE):
                    self._servers[0].server_close()
                    raise
                control = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(control=True))
            self._servers.append(control)
            self.control_port = control.server_address[1]
        for httpd in self._servers:
            httpd.daemon_threads = True
            threading.Thread(target=httpd.serve_forever, name="wei-agent-http", daemon=True).start()

    @classmethod
    def for_config(cls, agent: Agent) -> AgentHttp:
        """The endpoints ``agent.config`` asks for (what ``wei-agent run`` serves)."""
        c = agent.config
        derived = c.control_port is None
        control = (c.http_port + 1 if 0 < c.http_port < 65535 else 0) if derived else c.control_port
        return cls(agent, c.http_host, c.http_port, drain_endpoint=c.drain_endpoint, control_port=control,
                   control_fallback=derived, token=c.control_token)

    def close(self, *, drain_grace_s: float = 2.0) -> None:
        """Stop serving; first give a pending ``/drain`` (a preStop hook) up to ``drain_grace_s`` to be answered."""
        import time

        deadline = time.monotonic() + drain_grace_s
        while self.pending_drains and time.monotonic() < deadline:
            time.sleep(0.01)
        for httpd in self._servers:
            httpd.shutdown()
            httpd.server_close()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def control_url(self) -> str | None:
        """Where ``/drain`` is served without a token (None: nowhere)."""
        return None if self.control_port is None else f"http://127.0.0.1:{self.control_port}"
