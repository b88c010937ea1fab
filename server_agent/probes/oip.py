"""Probes over the Open Inference Protocol's gRPC: ServerLive, ServerReady and ModelReady.

For a pod whose model server speaks OIP (Triton, KServe, MLServer, or
wei-serve's ``inference.GRPCInferenceService``): the messages are
:mod:`protocol.oip`'s (its private descriptor pool, so Triton's client may
load in the same process), sent with plain multicallables and the messages'
``SerializeToString`` / ``FromString``.

- :class:`OipLiveHandler`: ``ServerLive`` says live; a server that has no
  such method (UNIMPLEMENTED) is checked with a TCP connect instead.
- :class:`OipReadyHandler`: ``ServerReady``, then ``ModelReady`` (the
  server's default version) for each model the agent publishes; the first
  model that is not ready, or not there, fails the check naming it.

One channel per check, closed afterwards, for the reason
:mod:`server_agent.probes.grpc_health` gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from protocol import oip
from protocol.oip import pb

from .result import Handler, ProbeResult, Timer

__all__ = ["OipCallError", "OipLiveHandler", "OipReadyHandler", "oip_call"]


class OipCallError(Exception):
    """An OIP call failed: ``code`` is the gRPC status code's name (ERROR when there is none)."""

    def __init__(self, method: str, code: str, details: str) -> None:
        self.method, self.code, self.details = method, code, details
        super().__init__(f"{method}: {code}" + (f": {details}" if details else ""))


def oip_call(channel: grpc.Channel, method: str, request: Any, response_type: Any, timeout: float) -> Any:
    """One unary call; ``method`` is an :data:`protocol.oip.METHODS` name or a full path. Raises OipCallError."""
    path = oip.METHODS.get(method, method)
    call = channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                               response_deserializer=response_type.FromString)
    try:
        return call(request, timeout=timeout)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else str(e)
        raise OipCallError(path.rsplit("/", 1)[-1], code.name if code is not None else "ERROR",
                           (details or "").splitlines()[0] if details else "") from None


class OipLiveHandler:
    """``ServerLive`` on ``target``; ``fallback`` (a TCP connect) when the server has no such method."""

    def __init__(self, target: str, *, fallback: Handler | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.fallback = fallback
        self._clock = clock

    def check(self, timeout: float) -> ProbeResult:
        timer = Timer(self._clock)
        try:
            with grpc.insecure_channel(self.target) as channel:
                live = oip_call(channel, "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse, timeout).live
        except OipCallError as e:
            if e.code == "UNIMPLEMENTED" and self.fallback is not None:
                return self.fallback.check(timeout)
            return timer.fail(f"oip {self.target}: {e}")
        except Exception as e:  # a malformed target and the like: never raise out of a probe
            return timer.fail(f"oip {self.target}: {type(e).__name__}: {e}")
        return timer.ok("live") if live else timer.fail(f"oip {self.target}: ServerLive says not live")

    def __repr__(self) -> str:
        return f"<OipLiveHandler {self.target}>"


class OipReadyHandler:
    """``ServerReady``, then ``ModelReady`` for each of ``models()`` (read at each check)."""

    def __init__(self, target: str, models: Callable[[], Sequence[str]], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self._models = models
        self._clock = clock

    def check(self, timeout: float) -> ProbeResult:
        timer = Timer(self._clock)
        try:
            names = list(self._models())
            with grpc.insecure_channel(self.target) as channel:
                if not oip_call(channel, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse,
                                timeout).ready:
                    return timer.fail(f"oip {self.target}: ServerReady says not ready")
                for name in names:
                    remaining = max(0.001, timeout - timer.elapsed())
                    try:
                        ready = oip_call(channel, "ModelReady", pb.ModelReadyRequest(name=name),
                                         pb.ModelReadyResponse, remaining).ready
                    except OipCallError as e:
                        return timer.fail(f"model {name!r}: {e}")
                    if not ready:
                        return timer.fail(f"model {name!r} is not ready (ModelReady says false)")
        except OipCallError as e:
            return timer.fail(f"oip {self.target}: {e}")
        except Exception as e:  # never raise out of a probe
            return timer.fail(f"oip {self.target}: {type(e).__name__}: {e}")
        return timer.ok(f"ready ({len(names)} model{'s' if len(names) != 1 else ''})")

    def __repr__(self) -> str:
        return f"<OipReadyHandler {self.target}>"
