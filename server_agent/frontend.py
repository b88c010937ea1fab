"""The model server as the agent sees it, per protocol: how to read it, probe it and time it.

The agent's loop is the same for every server; what differs is chosen here,
once, from ``AgentConfig.protocol``:

============  ==========================================  ==========================================
              ``weiserving`` (wei-serve)                  ``oip`` (Triton, KServe, MLServer, ...)
============  ==========================================  ==========================================
reader        :class:`~server_agent.server_io.StatusReader`  :class:`~server_agent.oip_io.OipReader`
              (``/status``, ``/metrics``)                  (OIP gRPC, the server's Prometheus metrics)
probes        gRPC health; ``/healthz``                    ServerLive; ServerReady + ModelReady
calibration   msgpack ``Predict``                          OIP ``ModelInfer``
============  ==========================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from registry.records import Protocol

from .config import AgentConfig
from .probes import ProbeKind
from .probes.result import Handler
from .server_io import Reader, StatusReader, build_handlers, grpc_batch_timer

__all__ = ["batch_timer", "make_handlers", "make_reader"]


def make_reader(config: AgentConfig) -> Reader:
    if config.protocol is Protocol.OIP:
        from .oip_io import OipReader

        return OipReader(config.target, models=config.models, metrics_url=config.metrics_url)
    return StatusReader(config.status_url)


def make_handlers(config: AgentConfig, reader: Reader) -> dict[ProbeKind, Handler]:
    if config.protocol is Protocol.OIP:
        from .oip_io import OipReader, build_oip_handlers

        assert isinstance(reader, OipReader), reader
        return build_oip_handlers(config, reader)
    return build_handlers(config)


def batch_timer(config: AgentConfig, models: Sequence[str], *,
                timeout: float = 30.0) -> tuple[str, Callable[[int], float]]:
    """(model, ``measure(batch) -> seconds``) on ``config.calibrate_model``, else the first of ``models``."""
    if config.protocol is Protocol.OIP:
        from .oip_io import oip_batch_timer

        return oip_batch_timer(config.target, config.calibrate_model, timeout, models=models)
    return grpc_batch_timer(config.target, config.calibrate_model, timeout=timeout)
