"""One gRPC channel per endpoint: created on first use, closed after its instance leaves.

The request path reads a dict (no lock when the channel exists). Membership
updates call :meth:`ChannelPool.retain` with the addresses still present; a
channel whose address is gone waits ``close_grace_s`` in a
:class:`cachetools.TTLCache` of departed channels, so calls in flight finish
and a pod that comes straight back keeps its channel. :meth:`reap`, driven by
the client's housekeeping thread, closes those whose grace has run out.

:class:`AioChannelPool` is the same for ``grpc.aio``. Its channels belong to
the event loop that created them, so the pool remembers that loop and
:meth:`AioChannelPool.reap` (from any thread) hands the closing to it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from cachetools import TTLCache

from protocol import oip, wire

from .config import ChannelConfig

__all__ = ["AioChannelPool", "ChannelPool", "Conn"]

MAX_DEPARTED = 65_536  # beyond this many departed channels the oldest is closed early, at the next reap


@dataclass(frozen=True)
class Conn:
    """A channel and its ready-made multicallables (identity serializers: bytes in, bytes out):
    ``weiserving.v1`` Predict and Metadata, and OIP ModelInfer (``infer``) for a pod whose record
    says ``oip``. Each is a small object made once per channel, whichever protocol the pod speaks."""

    address: str
    channel: Any
    predict: Any
    metadata: Any
    infer: Any


class _Departed(TTLCache):
    """Channels of departed instances, each kept ``close_grace_s`` (address -> Conn).

    cachetools also expires items on its own (inside ``__setitem__``, ``len``)
    and drops them; every expiry goes through :meth:`expire` and every
    eviction for size through :meth:`popitem`, so both collect into ``due``
    and no channel is lost unclosed.
    """

    def __init__(self, grace_s: float, clock: Callable[[], float]) -> None:
        super().__init__(maxsize=MAX_DEPARTED, ttl=grace_s, timer=clock)
        self.due: list[tuple[str, Conn]] = []

    def expire(self, time: float | None = None) -> list[tuple[str, Conn]]:
        expired = list(super().expire(time))
        self.due.extend(expired)
        return expired

    def popitem(self) -> tuple[str, Conn]:
        item = super().popitem()
        self.due.append(item)
        return item

    def take_due(self) -> list[tuple[str, Conn]]:
        self.expire()
        due, self.due = self.due, []
        return due


class _PoolBase:
    def __init__(self, config: ChannelConfig, factory: Callable[[str, list[tuple[str, int]]], Any],
                 clock: Callable[[], float]) -> None:
        self._config = config
        self._factory = factory
        self._conns: dict[str, Conn] = {}
        self._departed = _Departed(config.close_grace_s, clock)
        self._members: frozenset[str] = frozenset()
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
                            channel.unary_unary(wire.METADATA_METHOD),
                            channel.unary_unary(oip.METHODS["ModelInfer"]))
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

    def retain(self, addresses: Iterable[str]) -> None:
        """Membership changed: channels to addresses not in ``addresses`` start their grace;
        those back in it before the reap keep their channel."""
        keep = frozenset(addresses)
        with self._lock, self._departed.timer:  # one instant for the whole update
            self._members = keep
            for address, conn in self._conns.items():
                if address in keep:
                    self._departed.pop(address, None)
                elif address not in self._departed:  # a departure keeps its first time
                    self._departed[address] = conn

    def _expired(self) -> list[Conn]:
        """Take out the channels whose grace has run out (the caller closes them)."""
        with self._lock:
            conns = []
            for address, conn in self._departed.take_due():
                # back in the membership after its grace ran out, before this reap: keep it
                if address not in self._members and self._conns.get(address) is conn:
                    del self._conns[address]
                    conns.append(conn)
            return conns

    def _take_all(self) -> list[Conn]:
        with self._lock:
            self._closed = True
            conns = list(self._conns.values())
            self._conns.clear()
            self._departed.clear()
            self._departed.due.clear()
            return conns

    @property
    def addresses(self) -> list[str]:
        return sorted(self._conns)


class ChannelPool(_PoolBase):
    def __init__(self, config: ChannelConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, lambda address, options: grpc.insecure_channel(address, options=options), clock)

    def reap(self) -> int:
        """Close the channels gone for longer than the grace; how many."""
        conns = self._expired()
        for c in conns:
            c.channel.close()
        return len(conns)

    def close(self) -> None:
        for c in self._take_all():
            c.channel.close()


class AioChannelPool(_PoolBase):
    """Channels of one event loop (``loop``, the one that created the pool)."""

    def __init__(self, config: ChannelConfig, *, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, lambda address, options: grpc.aio.insecure_channel(address, options=options),
                         clock)
        self.loop = loop
        self._closing: set[asyncio.Task[None]] = set()  # strong references until done

    def reap(self) -> int:
        """From any thread: take out the channels gone for longer than the grace and hand
        their closing to the pool's loop (nothing to close when that loop is closed:
        its channels went with it). How many were taken out."""
        conns = self._expired()
        if conns and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._close_soon, conns)
            except RuntimeError:
                pass  # closed in the meantime
        return len(conns)

    def _close_soon(self, conns: list[Conn]) -> None:  # on the loop
        task = self.loop.create_task(_close_all(conns))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await _close_all(self._take_all())


async def _close_all(conns: list[Conn]) -> None:
    for c in conns:
        await c.channel.close(grace=None)
