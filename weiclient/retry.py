"""Retry policy as small immutable strategies, composed the way tenacity's are.

    stop = StopAfterAttempt(3) | StopAtDeadline() | StopWhenBudgetRefuses(budget)
    backoff = ExponentialJitter(base_s=0.002, max_s=0.05, jitter_s=0.002)

A :class:`Stop` returns the reason to stop retrying, or None; ``|`` asks its
parts in order and the first reason wins, so a budget placed last is spent
only on a retry that is really made. A :class:`Backoff` gives the seconds to
wait before retry ``n`` from an injected :class:`random.Random`. Nothing
here reads a clock or sleeps: :class:`~weiclient.attempts.AttemptController`
passes the time and turns the answers into decisions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .balancer import RetryBudget
from .config import RetryConfig

__all__ = [
    "Backoff", "ExponentialJitter", "NoBackoff", "RetryPolicy", "RetryState", "Stop", "StopAfterAttempt", "StopAny",
    "StopAtDeadline", "StopWhenBudgetRefuses",
]


@dataclass(frozen=True, slots=True)
class RetryState:
    """What a stop strategy sees when a retry is considered."""

    made: int  # attempts made so far (rounds: a hedge does not count)
    now: float
    deadline: float


class Stop:
    """A reason to stop retrying, or None. ``a | b``: the first part that says stop wins
    and later parts are not asked, so a budget placed last is spent only on a retry made."""

    __slots__ = ()

    def __call__(self, state: RetryState) -> str | None:
        raise NotImplementedError

    def __or__(self, other: Stop) -> StopAny:
        return StopAny((*_parts(self), *_parts(other)))


def _parts(stop: Stop) -> tuple[Stop, ...]:
    return stop.parts if isinstance(stop, StopAny) else (stop,)


@dataclass(frozen=True, slots=True)
class StopAny(Stop):
    parts: tuple[Stop, ...]

    def __call__(self, state: RetryState) -> str | None:
        for part in self.parts:
            reason = part(state)
            if reason is not None:
                return reason
        return None


@dataclass(frozen=True, slots=True)
class StopAfterAttempt(Stop):
    max_attempts: int
    SUFFIX = " attempts"  # its reasons end so: the attempts ran out, not the time or the budget

    def __call__(self, state: RetryState) -> str | None:
        return f"{self.max_attempts}{self.SUFFIX}" if state.made >= self.max_attempts else None


@dataclass(frozen=True, slots=True)
class StopAtDeadline(Stop):
    REASON = "the deadline"

    def __call__(self, state: RetryState) -> str | None:
        return self.REASON if state.now >= state.deadline else None


@dataclass(frozen=True, slots=True)
class StopWhenBudgetRefuses(Stop):
    """Withdraws from the budget when it lets the retry go: asking is spending, so place it last."""

    budget: RetryBudget = field(compare=False)

    def __call__(self, state: RetryState) -> str | None:
        return None if self.budget.try_withdraw(state.now) else "the retry budget (too many retries lately)"


class Backoff:
    """Seconds to wait before retry number ``retry`` (1: the first retry)."""

    __slots__ = ()

    def __call__(self, retry: int, rng: random.Random) -> float:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class NoBackoff(Backoff):
    def __call__(self, retry: int, rng: random.Random) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class ExponentialJitter(Backoff):
    """The first retry at once; retry ``n >= 2`` waits ``min(base_s * 2**(n-2) + U(0, jitter_s), max_s)``."""

    base_s: float
    max_s: float
    jitter_s: float

    def __call__(self, retry: int, rng: random.Random) -> float:
        if retry <= 1:
            return 0.0
        return min(self.base_s * 2.0 ** (retry - 2) + rng.uniform(0.0, self.jitter_s), self.max_s)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    stop: Stop
    backoff: Backoff
    rng: random.Random = field(compare=False, repr=False)

    @classmethod
    def from_config(cls, config: RetryConfig, budget: RetryBudget, rng: random.Random) -> RetryPolicy:
        return cls(stop=StopAfterAttempt(config.max_attempts) | StopAtDeadline() | StopWhenBudgetRefuses(budget),
                   backoff=ExponentialJitter(config.backoff_s, config.max_backoff_s, config.backoff_s), rng=rng)
