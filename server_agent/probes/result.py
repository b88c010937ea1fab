"""What one check says: the value every handler and plugin returns, and their protocol."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Handler", "ProbeResult", "Timer"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``ok``: the check passed. ``reason``: why not (or a short note when it passed).
    ``latency``: seconds the check took, as measured by the handler's clock."""

    ok: bool
    reason: str = ""
    latency: float = 0.0

    @classmethod
    def success(cls, reason: str = "", latency: float = 0.0) -> ProbeResult:
        return cls(True, reason, latency)

    @classmethod
    def failure(cls, reason: str, latency: float = 0.0) -> ProbeResult:
        return cls(False, reason, latency)

    def __str__(self) -> str:
        word = "ok" if self.ok else "FAIL"
        return f"{word} ({self.latency * 1000:.1f} ms){': ' + self.reason if self.reason else ''}"


@runtime_checkable
class Handler(Protocol):
    """A probe action. ``check`` never raises: every failure is a result with a reason."""

    def check(self, timeout: float) -> ProbeResult: ...


class Timer:
    """Measures one check's latency on an injected monotonic clock."""

    __slots__ = ("_clock", "_start")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()

    def elapsed(self) -> float:
        return max(0.0, self._clock() - self._start)

    def ok(self, reason: str = "") -> ProbeResult:
        return ProbeResult(True, reason, self.elapsed())

    def fail(self, reason: str) -> ProbeResult:
        return ProbeResult(False, reason, self.elapsed())
