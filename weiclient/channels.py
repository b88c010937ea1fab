"""One gRPC channel per endpoint: created on first use, closed after its instance leaves.

The request path reads a dict (no lock when the channel exists). Membership
updates call :meth:`ChannelPool.retain` with the addresses still present; a
channel whose address is gone is closed once ``close_grace_s`` has passed
(:meth:`reap`, driven by the client's housekeeping thread), so calls in
flight finish and a pod that comes straight back reuses its channel.

:class:`AioChannelPool` is the same for ``grpc.aio``; its channels belong to
the event loop that created them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from protocol import wire

from .config import ChannelConfig

__all__ = ["AioChannelPool", "ChannelPool", "Conn"]


@dataclass(frozen=True)
class Conn:
    """A channel and its ready-made multicallables (identity serializers: bytes in, bytes out)."""

    address: str
    channel: Any
    predict: Any
    metadata: Any


class _PoolBase:
    def __init__(self, config: ChannelConfig, factory: Callable[[str, list[tuple[str, int]]], Any]) -> None:
        self._config = config
        self._factory = factory
        self._conns: dict[str, Conn] = {}
        self._departed: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._fresh: set[str] = set()
        self.opened = 0

    def get(self, address: str) -> Conn:
        conn = self._conns.get(address)
        if conn is not None:
            return conn
        with self._lock:
            conn = self._conns.get(address)
            if conn is None:
                if self._closed:
                    raise RuntimeError("channel pool closed")
                channel = self._factory(address, self._config.options())
                conn = Conn(address, channel,
                            channel.unary_unary(wire.PREDICT_METHOD),
                            channel.unary_unary(wire.METADATA_METHOD))
                self._conns[address] = conn
                self._fresh.add(address)
                self.opened += 1
            return conn

    def first_call(self, address: str) -> bool:
        """True once per new channel: its first call also paid for the connection."""
        if address not in self._fresh:
            return False
        with self._lock:
            if address in self._fresh:
                self._fresh.discard(address)
                return True
            return False

    def retain(self, addresses: Iterable[str], now: float) -> None:
        """Membership changed: addresses not in ``addresses`` start their grace period."""
        keep = set(addresses)
        with self._lock:
            for address in self._conns:
                if address in keep:
                    self._departed.pop(address, None)
                else:
                    self._departed.setdefault(address, now)

    def _expired(self, now: float) -> list[Conn]:
        with self._lock:
            gone = [a for a, t in self._departed.items() if now - t >= self._config.close_grace_s]
            conns = []
            for a in gone:
                del self._departed[a]
                conn = self._conns.pop(a, None)
                if conn is not None:
                    conns.append(conn)
            return conns

    def _take_all(self) -> list[Conn]:
        with self._lock:
            self._closed = True
            conns = list(self._conns.values())
            self._conns.clear()
            self._departed.clear()
            return conns

    @property
    def addresses(self) -> list[str]:
        return sorted(self._conns)


class ChannelPool(_PoolBase):
    def __init__(self, config: ChannelConfig) -> None:
        super().__init__(config, lambda address, options: grpc.insecure_channel(address, options=options))

    def reap(self, now: float) -> int:
        conns = self._expired(now)
        for c in conns:
            c.channel.close()
        return len(conns)

    def close(self) -> None:
        for c in self._take_all():
            c.channel.close()


class AioChannelPool(_PoolBase):
    def __init__(self, config: ChannelConfig) -> None:
        super().__init__(config, lambda address, options: grpc.aio.insecure_channel(address, options=options))

    async def reap(self, now: float) -> int:
        conns = self._expired(now)
        for c in conns:
            await c.channel.close(grace=None)
        return len(conns)

    async def close(self) -> None:
        for c in self._take_all():
            await c.channel.close(grace=None)
