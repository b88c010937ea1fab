"""Probes with Kubernetes semantics: handlers that do one check, and a pure engine.

``GrpcHandler`` is imported from :mod:`server_agent.probes.grpc_health` and the OIP handlers
from :mod:`server_agent.probes.oip` (both load grpc).
"""

from ..config import ProbeSpec
from .engine import EngineStatus, ProbeEngine, ProbeKind, ProbeMachine, ProbeState, ProbeStatus
from .handlers import ExecHandler, HttpGetHandler, TcpSocketHandler
from .result import Handler, ProbeResult

__all__ = [
    "EngineStatus",
    "ExecHandler",
    "Handler",
    "HttpGetHandler",
    "ProbeEngine",
    "ProbeKind",
    "ProbeMachine",
    "ProbeResult",
    "ProbeSpec",
    "ProbeState",
    "ProbeStatus",
    "TcpSocketHandler",
]
