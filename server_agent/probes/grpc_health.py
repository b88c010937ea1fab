"""gRPC probe: ``grpc.health.v1.Health/Check``, as Kubernetes' native gRPC probe calls it.

SERVING is success; NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN and every RPC error
(UNAVAILABLE when nothing listens, DEADLINE_EXCEEDED when it hangs,
UNIMPLEMENTED when the server has no health service) are failures whose
reason names the status.

One channel per check, closed afterwards, as kubelet does: a long-lived
channel that failed while the server was starting would sit in reconnect
back-off (up to two minutes) and fail checks the server would now pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .result import ProbeResult, Timer

__all__ = ["GrpcHandler"]


class GrpcHandler:
    """Checks ``service`` ("" = the server as a whole) on ``target`` ("host:port")."""

    def __init__(self, target: str, *, service: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.service = service
        self._clock = clock

    def check(self, timeout: float) -> ProbeResult:
        timer = Timer(self._clock)
        what = f"grpc {self.target}" + (f" service {self.service!r}" if self.service else "")
        try:
            with grpc.insecure_channel(self.target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                resp = stub.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            detail = e.details() if hasattr(e, "details") else str(e)
            name = code.name if code is not None else "ERROR"
            return timer.fail(f"{what}: {name}" + (f": {detail}" if detail else ""))
        except Exception as e:  # a malformed target and the like: never raise out of a probe
            return timer.fail(f"{what}: {type(e).__name__}: {e}")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            return timer.ok(status)
        return timer.fail(f"{what}: {status}")

    def __repr__(self) -> str:
        return f"<GrpcHandler {self.target} service={self.service!r}>"
