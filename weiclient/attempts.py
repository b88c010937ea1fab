"""The attempt controller: one call's attempts, hedges and retries, decided without I/O.

Nothing here imports gRPC, reads a clock, sleeps or touches a socket. The
drivers in :mod:`weiclient.transport` tell an :class:`AttemptController` what
happened and do what it decides (tenacity's ``DoAttempt``/``DoSleep``, h11's
events)::

    start(now)                 -> Send | GiveUp
    on_hedge_timer(now)        -> Hedge | Wait
    on_outcome(outcome, now)   -> Wait | Return | Sleep | GiveUp     outcome: Answered | Failed
    resume(now)                -> Send | GiveUp                      after a Sleep

The rules:

- an outcome is classified by its gRPC status-code *name*, in one table:
  a caller's error (:data:`CALLER_ERRORS`) ends the call at once, spends no
  budget and is not the pod's fault; a :data:`RETRYABLE` failure is retried
  on an instance not tried yet; an overload refusal (:data:`OVERLOADED`,
  RESOURCE_EXHAUSTED, with or without the pod's ``wei-retry-after-ms``) is a
  load signal, not the pod's fault, and is retried *at once* on an instance
  not tried yet (a refusal is cheap and the next pod need not wait for this
  one's queue); when every instance tried refused, the call waits the
  soonest retry-after once and starts a new round over every instance, if
  that wait is at most half the time left and the retry budget allows
  (Poisson bursts at 80 % load put all three pods of ``bench/hetero.py``
  over their queue bound for a few milliseconds now and then: 2-5 calls in
  1,400 failed that 11 ms later would have been served); after that, or
  without a hint, it ends as :class:`Overloaded` (the soonest retry-after
  among them), fast, not at its deadline; any other code (DEADLINE_EXCEEDED, INTERNAL) ends the call. Three
  names are ours, not gRPC's: :data:`MALFORMED` (a reply that does not
  decode), :data:`TOO_LARGE` (:func:`code_name`: gRPC's own message-size
  check answers RESOURCE_EXHAUSTED, the code of an overloaded pod, but
  another pod has the same limit: the request is the caller's to shrink)
  and :data:`CUT` (a server cancelled the call: retryable);
- before a retry the stop strategy (:mod:`weiclient.retry`) is asked: attempts, then the
  deadline, then the retry budget, so the budget is spent only on a retry
  that is made;
- the first retry goes at once (it goes to another instance, which need not
  wait for the failed one); later ones back off exponentially with jitter;
- a hedge is offered only when a delay is known and shorter than the time
  left: when the driver reports the timer, a backup goes to an instance not
  tried yet if the hedge budget allows. The first answer wins; a retryable
  failure of one half waits for the other; ``max_attempts`` counts rounds,
  a hedge does not add one. Every failed attempt is listed in the error.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from .balancer import Endpoint, ModelVersion, RetryBudget
from .errors import (
    Attempt,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    NoEndpointAvailable,
    Overloaded,
    RequestError,
    RequestFailed,
    RequestTooLarge,
)
from .inputs import MsgpackBody
from .oip import OipRequest
from .retry import RetryPolicy, RetryState, StopAfterAttempt, StopAtDeadline

__all__ = [
    "CALLER_ERRORS", "CUT", "MALFORMED", "OVERLOADED", "RETRYABLE", "TOO_LARGE", "WAIT", "Answered",
    "AttemptController", "Decision", "Failed", "GiveUp", "Hedge", "Kind", "Outcome", "Plan", "Return", "Send",
    "Sleep", "Wait", "blames_endpoint", "classify", "code_name",
]

# -- classification: status-code names, one table ---------------------------------------------------

MALFORMED = "MALFORMED_RESPONSE"  # not a gRPC code: the reply could not be decoded
TOO_LARGE = "MESSAGE_TOO_LARGE"  # not a gRPC code: gRPC's message-size check refused (see code_name)
CUT = "CANCELLED_BY_SERVER"  # not a gRPC code: a CANCELLED this process did not ask for (see code_name)
CALLER_ERRORS: Mapping[str, type[RequestError]] = MappingProxyType({
    "INVALID_ARGUMENT": InvalidInput, "NOT_FOUND": ModelNotFound,
    "FAILED_PRECONDITION": InvalidInput, "OUT_OF_RANGE": InvalidInput, TOO_LARGE: RequestTooLarge,
})
_HINTS = MappingProxyType({
    TOO_LARGE: "over a gRPC message size limit (the server's max_message_bytes for the request, this "
               "client's ChannelConfig.max_message_bytes for the answer); send fewer rows per call "
               "(predict(..., split=True) scatters them)",
})
_SIZE_CHECK = "message larger than max"  # gRPC core's text: "Sent|Received message larger than max (N vs. M)"
_LOCAL_CANCEL = "Locally cancelled by application!"  # grpcio's text (sync and aio) for a call we cancelled


def code_name(code: str, message: str) -> str:
    """The name an outcome is classified by: the gRPC code's, except that gRPC's own
    message-size refusal (RESOURCE_EXHAUSTED, client or server side) is :data:`TOO_LARGE`, and a
    CANCELLED that this process did not ask for is :data:`CUT`: a server that stops (a pod killed,
    ``grace`` 0) cancels its calls in flight, another pod may answer, and the pod is to blame."""
    if code == "RESOURCE_EXHAUSTED" and _SIZE_CHECK in message:
        return TOO_LARGE
    if code == "CANCELLED" and message != _LOCAL_CANCEL:
        return CUT
    return code
OVERLOADED = "RESOURCE_EXHAUSTED"  # a pod's overload refusal (gRPC's size check is TOO_LARGE, see code_name)
RETRYABLE = frozenset({"UNAVAILABLE", "ABORTED", MALFORMED, CUT})
_NOT_THE_ENDPOINTS_FAULT = frozenset({*CALLER_ERRORS, "CANCELLED", OVERLOADED})


class Kind(Enum):
    CALLER_ERROR = "caller error"  # the request is wrong: raise it, never retry
    OVERLOADED = "overloaded"      # the endpoint is busy, not broken: another instance at once
    RETRYABLE = "retryable"        # the endpoint failed; another instance may answer
    FATAL = "fatal"                # the endpoint failed; a retry would not help (or must not)


def classify(code: str) -> Kind:
    if code in CALLER_ERRORS:
        return Kind.CALLER_ERROR
    if code == OVERLOADED:
        return Kind.OVERLOADED
    return Kind.RETRYABLE if code in RETRYABLE else Kind.FATAL


def blames_endpoint(code: str) -> bool:
    """Whether a failure with ``code`` counts against the pod (a caller error, an overload
    refusal or CANCELLED does not: for the pod's health record they are neutral)."""
    return code not in _NOT_THE_ENDPOINTS_FAULT


# -- the call -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """One logical call: what to route, the payload, the absolute deadline (monotonic seconds), its rows."""

    model: str
    version: int | None
    payload: bytes | MsgpackBody        # the weiserving.v1 body, or one encoded on first use
    deadline: float
    key: object = None
    also: tuple[ModelVersion, ...] = ()  # predict_many: further models the instance must host
    first: Endpoint | None = None        # scatter: the shard's planned endpoint (first attempt only)
    rows: int = 1                        # the call's cost in rows (batch size), for load accounting
    priority: str = "default"            # one of protocol.wire.PRIORITIES, sent as wei-priority
    oip: OipRequest | None = None        # the body for an OIP pod, built on first use (None: predict_many)

    def msgpack(self) -> bytes:
        """The ``weiserving.v1`` request's bytes (encoded now if not yet)."""
        p = self.payload
        return p if isinstance(p, bytes) else p.body()


# -- events in ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Answered:
    """An attempt returned a decoded response."""

    endpoint: Endpoint
    response: Any
    latency_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    """An attempt ended with status ``code`` (a gRPC code name, or :data:`MALFORMED`);
    ``retry_after_s``: with an overload refusal, how long the pod asked to be left alone."""

    endpoint: Endpoint
    code: str
    message: str
    latency_s: float
    retry_after_s: float | None = None

    def attempt(self) -> Attempt:
        return Attempt(self.endpoint.address, self.code, self.message, self.latency_s)


Outcome = Answered | Failed

# -- decisions out --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Start an attempt. ``hedge_after_s``: report :meth:`AttemptController.on_hedge_timer`
    if it has not ended by then; None: no hedge can follow (a blocking call will do)."""

    endpoint: Endpoint
    timeout_s: float
    hedge_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Hedge:
    """Start a backup attempt beside the one in flight."""

    endpoint: Endpoint
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to start: wait for the next outcome of an attempt in flight."""


WAIT = Wait()


@dataclass(frozen=True, slots=True)
class Sleep:
    """A retry of a ``code`` failure: back off ``seconds`` (0: at once), then call ``resume``.
    ``hedge``: how the round's hedge ended, when it had one."""

    seconds: float
    code: str
    hedge: str | None = None


@dataclass(frozen=True, slots=True)
class Return:
    """The answer; cancel whatever is still in flight."""

    response: Any
    hedge: str | None = None  # "primary_won" / "backup_won" when the round was hedged


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Raise ``error``; cancel whatever is still in flight."""

    error: Exception
    hedge: str | None = None


Decision = Send | Hedge | Wait | Sleep | Return | GiveUp

# -- the controller -------------------------------------------------------------------------------------

Picker = Callable[[Plan, Collection[Endpoint], float], Endpoint]  # (plan, exclude, now); may raise


class AttemptController:
    """Follows one call; see the module docstring. One driver feeds it (not thread-safe).

    ``pick(plan, exclude, now)`` chooses an endpoint or raises
    :class:`NoEndpointAvailable` (the pure ``Balancer.pick``). Hedging is on
    when ``hedge_delay`` (the latency percentile, None until known) and
    ``hedge_budget`` are given.
    """

    __slots__ = ("plan", "attempts", "tried", "made", "_policy", "_pick", "_hedge_delay", "_hedge_budget",
                 "_in_flight", "_backup", "_refusals", "_retry_after", "_round_base", "_waited")

    def __init__(self, plan: Plan, policy: RetryPolicy, pick: Picker, *, hedge_delay: float | None = None,
                 hedge_budget: RetryBudget | None = None) -> None:
        self.plan = plan
        self.attempts: list[Attempt] = []  # failed ones, in order of their end
        self.tried: set[Endpoint] = set()
        self.made = 0
        self._policy = policy
        self._pick = pick
        self._hedge_delay = hedge_delay if hedge_budget is not None else None
        self._hedge_budget = hedge_budget
        self._in_flight: list[Endpoint] = []
        self._backup: Endpoint | None = None
        self._refusals = 0                     # failed attempts that were overload refusals
        self._retry_after: float | None = None  # the soonest retry-after among them
        self._round_base = 0                   # attempts made before the round after a refusal wait
        self._waited = False                   # that round was taken (once per call)

    def start(self, now: float) -> Send | GiveUp:
        """The call starts (the driver deposited it in the budgets)."""
        return self._send(now)

    def resume(self, now: float) -> Send | Sleep | GiveUp:
        """The back-off of a :class:`Sleep` is over."""
        return self._send(now)

    def on_hedge_timer(self, now: float) -> Hedge | Wait:
        """The primary of this round has run for ``hedge_after_s`` without an outcome."""
        if self._hedge_budget is None or self._backup is not None or len(self._in_flight) != 1:
            return WAIT
        remaining = self.plan.deadline - now
        if remaining <= 0:
            return WAIT
        try:
            ep = self._pick(self.plan, self.tried, now)
        except NoEndpointAvailable:
            return WAIT  # nowhere else to go: the primary may still answer
        if not self._hedge_budget.try_withdraw(now):
            return WAIT
        self._backup = ep
        self.tried.add(ep)
        self._in_flight.append(ep)
        return Hedge(ep, remaining)

    def on_outcome(self, outcome: Outcome, now: float) -> Wait | Return | Sleep | GiveUp:
        """An attempt in flight ended."""
        self._in_flight.remove(outcome.endpoint)
        if isinstance(outcome, Answered):
            return Return(outcome.response, self._hedge_result(outcome.endpoint))
        kind = classify(outcome.code)
        if kind is Kind.CALLER_ERROR:
            address = outcome.endpoint.address
            hint = _HINTS.get(outcome.code)
            message = f"{hint}: {outcome.message}" if hint else outcome.message
            return GiveUp(CALLER_ERRORS[outcome.code](message, endpoint=address, code=outcome.code))
        self.attempts.append(outcome.attempt())
        if kind is Kind.OVERLOADED:
            self._refusals += 1
            after = outcome.retry_after_s
            if after is not None and (self._retry_after is None or after < self._retry_after):
                self._retry_after = after
        if kind is Kind.FATAL:
            if outcome.code == "DEADLINE_EXCEEDED":
                return GiveUp(DeadlineExceeded("the deadline passed", tuple(self.attempts)))
            return GiveUp(RequestFailed(f"{outcome.code} is not retried", tuple(self.attempts)))
        if self._in_flight:
            return WAIT  # the other half of a hedged pair may still answer
        hedge = None if self._backup is None else "both_failed"
        reason = self._policy.stop(RetryState(self.made - self._round_base, now, self.plan.deadline))
        if reason == StopAtDeadline.REASON:
            return GiveUp(DeadlineExceeded("the deadline passed", tuple(self.attempts)), hedge)
        if reason is not None:
            if reason.endswith(StopAfterAttempt.SUFFIX) and (wait := self._wait_round(now)):
                return wait
            return GiveUp(self._failed(f"stopped by {reason}"), hedge)
        if kind is Kind.OVERLOADED:
            return Sleep(0.0, outcome.code, hedge)  # another pod's queue is not this one's: at once
        return Sleep(self._policy.backoff(self.made, self._policy.rng), outcome.code, hedge)

    def _wait_round(self, now: float) -> Sleep | None:
        """Every instance tried refused: wait the soonest retry-after, then one new round over all."""
        after = self._retry_after
        if self._waited or after is None or self._refusals != len(self.attempts) or \
                after > (self.plan.deadline - now) / 2:
            return None
        if self._policy.stop(RetryState(0, now, self.plan.deadline)) is not None:  # the budget says no
            return None
        self._waited = True
        self._round_base = self.made
        self.tried.clear()
        return Sleep(after, OVERLOADED)

    def _failed(self, summary: str) -> RequestFailed:
        """:class:`Overloaded` when every failed attempt was an overload refusal, else RequestFailed."""
        attempts = tuple(self.attempts)
        if self._refusals == len(attempts):
            return Overloaded(f"overloaded: every instance tried refused the call; {summary}", attempts,
                              retry_after_s=self._retry_after)
        return RequestFailed(summary, attempts)

    def _send(self, now: float) -> Send | Sleep | GiveUp:
        plan = self.plan
        remaining = plan.deadline - now
        if remaining <= 0:
            return GiveUp(DeadlineExceeded("the deadline passed", tuple(self.attempts)))
        if plan.first is not None and self.made == 0:
            ep = plan.first
        else:
            try:
                ep = self._pick(plan, self.tried, now)
            except NoEndpointAvailable as e:
                wait = self._wait_round(now) if self.attempts else None
                return wait if wait is not None else GiveUp(self._nowhere(e))
        self.made += 1
        self.tried.add(ep)
        self._in_flight = [ep]
        self._backup = None
        delay = self._hedge_delay
        return Send(ep, remaining, delay if delay is not None and delay < remaining else None)

    def _nowhere(self, e: NoEndpointAvailable) -> NoEndpointAvailable | RequestFailed:
        if not self.attempts:
            return e  # nothing was tried: the balancer's own answer says why
        err = self._failed(f"no other instance to retry on ({e.why.value})")
        err.__cause__ = e
        return err

    def _hedge_result(self, winner: Endpoint) -> str | None:
        if self._backup is None:
            return None
        return "backup_won" if winner == self._backup else "primary_won"

    def __repr__(self) -> str:
        return (f"<AttemptController {self.plan.model} made={self.made} failed={len(self.attempts)} "
                f"in_flight={len(self._in_flight)}>")

