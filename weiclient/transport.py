"""Attempts, hedges and retries: where gRPC meets the balancer.

One call is a :class:`Plan` (encoded payload, deadline, what to pick). The
retry loop is tenacity's: an attempt that failed on the *endpoint's* side
(UNAVAILABLE, RESOURCE_EXHAUSTED, a broken connection, a garbled reply) is
retried on another instance, with a short jittered back-off, while the
caller's deadline, ``max_attempts`` and the retry budget allow. A caller's
error (INVALID_ARGUMENT, NOT_FOUND) is raised at once. gRPC errors are
translated here, once, into :mod:`weiclient.errors`.

A hedge (optional) is a second attempt sent to another instance when the
first is slower than a latency percentile; the first good answer wins and
the other call is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tenacity

from protocol import wire

from .balancer import Balancer, Endpoint, RetryBudget, RetryBudgetConfig
from .channels import AioChannelPool, ChannelPool
from .config import ClientConfig
from .errors import (
    Attempt,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    NoEndpointAvailable,
    RequestFailed,
    Unavailable,
)

__all__ = ["LatencyWindow", "Plan", "Transport"]

SC = grpc.StatusCode
REPORT_INTERVAL_S = 0.05
RETRYABLE = frozenset({SC.UNAVAILABLE, SC.RESOURCE_EXHAUSTED, SC.ABORTED})
CALLER_ERRORS = {SC.INVALID_ARGUMENT: InvalidInput, SC.NOT_FOUND: ModelNotFound,
                 SC.FAILED_PRECONDITION: InvalidInput, SC.OUT_OF_RANGE: InvalidInput}


@dataclass
class Plan:
    """One logical call: what to route, the payload, the absolute deadline (monotonic)."""

    model: str
    version: int | None
    payload: bytes
    deadline: float
    key: object = None
    also: dict[str, int | None] = field(default_factory=dict)  # predict_many: other models needed
    first: Endpoint | None = None  # scatter: the shard's planned endpoint
    attempts: list[Attempt] = field(default_factory=list)
    tried: set[Endpoint] = field(default_factory=set)
    stopped_by: str = ""


class _Failed(Exception):
    """An attempt failed on the endpoint's side and may not be retried (DEADLINE_EXCEEDED, INTERNAL)."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(str(attempt))
        self.attempt = attempt


class _Retryable(_Failed):
    """An attempt failed on the endpoint's side; tenacity may try another instance."""


class LatencyWindow:
    """Recent call latencies, for the hedge delay (percentile from 16 samples on, refreshed every 64)."""

    def __init__(self, size: int, quantile: float, floor_s: float) -> None:
        self._buf = np.zeros(size)
        self._n = 0
        self._q = quantile
        self._floor = floor_s
        self._value: float | None = None

    def add(self, latency_s: float) -> None:
        self._buf[self._n % len(self._buf)] = latency_s
        self._n += 1
        if self._n % (16 if self._n <= 64 else 64) == 0:
            self._value = float(np.quantile(self._buf[: min(self._n, len(self._buf))], self._q))

    @property
    def delay(self) -> float | None:
        """None until enough samples exist: no hedging on guesses."""
        return None if self._value is None else max(self._value, self._floor)


class Transport:
    def __init__(self, config: ClientConfig, balancer: Callable[[], Balancer], *,
                 clock: Callable[[], float], sleep: Callable[[float], None], metrics: Any) -> None:
        self.config = config
        self._balancer = balancer
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self.pool = ChannelPool(config.channel)
        self.aio_pool: AioChannelPool | None = None
        self.budget = RetryBudget(config.retry.budget)
        self.hedge_budget = RetryBudget(RetryBudgetConfig(ratio=config.hedging.budget_ratio, min_retries_per_s=0.0))
        self.latency = LatencyWindow(config.hedging.window, config.hedging.percentile, config.hedging.min_delay_s)
        self._hedging = config.hedging.enabled  # hedge bookkeeping costs ~10 us a call: only when on

    # -- picking -------------------------------------------------------------

    def pick(self, plan: Plan, now: float) -> Endpoint:
        if plan.first is not None and not plan.attempts:
            return plan.first
        bal = self._balancer()
        exclude = set(plan.tried)
        for _ in range(16):
            ep = bal.pick(plan.model, plan.version, key=plan.key, exclude=exclude, now=now)
            if all(ep.record.hosts_model(m, v) for m, v in plan.also.items()):
                return ep
            exclude.add(ep)
        wanted = ", ".join([plan.model, *plan.also])
        raise NoEndpointAvailable(plan.model, plan.version, Unavailable.NOT_HOSTED,
                                  f"no instance found that hosts all of {wanted}")

    # -- one attempt's outcome --------------------------------------------------

    def _done(self, ep: Endpoint, t0: float, body: bytes | None, err: grpc.RpcError | None,
              trailing: Any, *, fresh: bool = False) -> wire.PredictResponse:
        """Record the outcome with the balancer; return the response or raise the translated error.

        ``fresh``: the call opened its channel; its latency includes the TCP and
        HTTP/2 handshake, which says nothing about the pod, so the balancer gets
        no latency sample from it (a peak EWMA would remember it for seconds).
        """
        now = self._clock()
        measured = now - t0
        latency = None if fresh else measured
        # Decoding the ORCA report costs more than the rest of this method; the
        # balancer trusts a report for seconds, so one per endpoint every 50 ms is plenty.
        report = None
        if trailing and now - ep.state.report_at >= REPORT_INTERVAL_S:
            report = wire.load_report_from_metadata(trailing)
        bal = self._balancer()
        if err is None:
            try:
                resp = wire.decode_response(body or b"")
            except wire.WireError as e:
                bal.on_finish(ep, now, latency, False, report)
                raise _Retryable(Attempt(ep.address, "MALFORMED_RESPONSE", str(e), measured)) from None
            bal.on_finish(ep, now, latency, True, report)
            if latency is not None and self._hedging:
                self.latency.add(latency)
            self._metrics.attempt(ep.address, "OK", measured)
            return resp
        code = err.code()
        name = code.name if code is not None else "UNKNOWN"
        message = err.details() or ""
        caller = CALLER_ERRORS.get(code)
        bal.on_finish(ep, now, measured, caller is not None or code == SC.CANCELLED, report)
        self._metrics.attempt(ep.address, name, measured)
        if caller is not None:
            raise caller(message, endpoint=ep.address, code=name)
        attempt = Attempt(ep.address, name, message, measured)
        raise (_Retryable if code in RETRYABLE else _Failed)(attempt)

    # -- one attempt, shared ------------------------------------------------------

    def _begin_attempt(self, plan: Plan) -> tuple[Endpoint, float]:
        """The endpoint for this attempt and the time left, or DeadlineExceeded."""
        now = self._clock()
        remaining = plan.deadline - now
        if remaining <= 0:
            raise DeadlineExceeded("the deadline passed", tuple(plan.attempts))
        return self.pick(plan, now), remaining

    def _begin(self, ep: Endpoint, plan: Plan, pool: ChannelPool | AioChannelPool) -> tuple[Any, bool]:
        """Account a call to ``ep``: (its connection, whether the call opens the channel)."""
        self._balancer().on_start(ep, self._clock())
        plan.tried.add(ep)
        return pool.get(ep.address), pool.first_call(ep.address)

    # -- sync ----------------------------------------------------------------------

    def _send(self, ep: Endpoint, plan: Plan, timeout: float) -> tuple[Endpoint, float, Any, bool]:
        conn, fresh = self._begin(ep, plan, self.pool)
        fut = conn.predict.future(plan.payload, timeout=timeout)
        return ep, self._clock(), fut, fresh

    def _blocking(self, ep: Endpoint, plan: Plan, timeout: float) -> wire.PredictResponse:
        """No hedge possible: a blocking call on the caller's thread (futures complete on
        another thread, which costs a handoff on every call)."""
        conn, fresh = self._begin(ep, plan, self.pool)
        t0 = self._clock()
        try:
            body, call = conn.predict.with_call(plan.payload, timeout=timeout)
        except grpc.RpcError as err:
            return self._done(ep, t0, None, err, _trailing(err), fresh=fresh)
        return self._done(ep, t0, body, None, call.trailing_metadata(), fresh=fresh)

    def _outcome(self, flight: tuple[Endpoint, float, Any, bool]) -> wire.PredictResponse:
        ep, t0, fut, fresh = flight
        try:
            body = fut.result()
        except grpc.FutureCancelledError:
            self._balancer().on_finish(ep, self._clock(), None, True, None)
            raise
        except grpc.RpcError as err:
            return self._done(ep, t0, None, err, _trailing(err), fresh=fresh)
        return self._done(ep, t0, body, None, fut.trailing_metadata(), fresh=fresh)

    def attempt(self, plan: Plan) -> wire.PredictResponse:
        ep, remaining = self._begin_attempt(plan)
        delay = self._hedge_delay(remaining)
        if delay is None:
            return self._blocking(ep, plan, remaining)
        primary = self._send(ep, plan, remaining)
        done = threading.Event()
        primary[2].add_done_callback(lambda _f: done.set())
        if done.wait(delay) or not self.hedge_budget.try_withdraw(self._clock()):
            return self._outcome(primary)
        try:
            backup_ep = self.pick(plan, self._clock())
        except NoEndpointAvailable:
            return self._outcome(primary)
        backup = self._send(backup_ep, plan, max(plan.deadline - self._clock(), 0.001))
        return self._race(primary, backup)

    def _race(self, primary: tuple, backup: tuple) -> wire.PredictResponse:
        first_done = threading.Event()
        order: list[tuple] = []
        lock = threading.Lock()

        def on_done(flight: tuple) -> None:
            with lock:
                order.append(flight)
            first_done.set()

        primary[2].add_done_callback(lambda _f: on_done(primary))
        backup[2].add_done_callback(lambda _f: on_done(backup))
        first_done.wait()
        winner = order[0]
        loser = backup if winner is primary else primary
        try:
            resp = self._outcome(winner)
        except _Retryable:
            self._metrics.hedge("first_failed")
            return self._outcome(loser)
        except BaseException:
            self._abandon(loser)
            raise
        self._abandon(loser)
        self._metrics.hedge("backup_won" if winner is backup else "primary_won")
        return resp

    def _abandon(self, flight: tuple) -> None:
        """Cancel a hedge's losing call and release its in-flight slot (no latency sample)."""
        flight[2].cancel()
        self._balancer().on_finish(flight[0], self._clock(), None, True, None)

    def _hedge_delay(self, remaining: float) -> float | None:
        if not self._hedging:
            return None
        delay = self.latency.delay
        return delay if delay is not None and delay < remaining else None

    def call(self, plan: Plan) -> wire.PredictResponse:
        """The first attempt, then (only after an endpoint failure) tenacity's retry loop.

        The fast path builds no retry machinery: almost every call succeeds at once.
        """
        self._deposit()
        try:
            try:
                return self.attempt(plan)
            except _Retryable as first:
                self._note_retry(plan, first)
            for attempt in tenacity.Retrying(**self._retry_kwargs(plan), sleep=self._sleep):
                with attempt:
                    return self.attempt(plan)
        except (_Failed, NoEndpointAvailable) as e:
            raise self._final_error(plan, e)  # noqa: B904 - _final_error sets the cause
        raise AssertionError("unreachable")  # pragma: no cover

    # -- async ---------------------------------------------------------------------

    async def aattempt(self, plan: Plan) -> wire.PredictResponse:
        ep, remaining = self._begin_attempt(plan)
        delay = self._hedge_delay(remaining)
        if delay is None:  # no hedge can follow: await the call itself, no Task
            return await self._aflight(ep, plan, remaining)
        primary = asyncio.ensure_future(self._aflight(ep, plan, remaining))
        done, _ = await asyncio.wait({primary}, timeout=delay)
        if done or not self.hedge_budget.try_withdraw(self._clock()):
            return await primary
        try:
            backup_ep = self.pick(plan, self._clock())
        except NoEndpointAvailable:
            return await primary
        backup = asyncio.ensure_future(self._aflight(backup_ep, plan, max(plan.deadline - self._clock(), 0.001)))
        pending = {primary, backup}
        first_error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    for other in pending:
                        other.cancel()
                    self._metrics.hedge("backup_won" if task is backup else "primary_won")
                    return task.result()
                if not isinstance(task.exception(), _Retryable):  # a caller error or a fatal one
                    for other in pending:
                        other.cancel()
                    raise task.exception()  # type: ignore[misc]
                first_error = first_error or task.exception()
        self._metrics.hedge("both_failed")
        raise first_error  # type: ignore[misc]

    async def _aflight(self, ep: Endpoint, plan: Plan, timeout: float) -> wire.PredictResponse:
        if self.aio_pool is None:
            self.aio_pool = AioChannelPool(self.config.channel)
        conn, fresh = self._begin(ep, plan, self.aio_pool)
        t0 = self._clock()
        call = conn.predict(plan.payload, timeout=timeout)
        try:
            body = await call
        except asyncio.CancelledError:
            self._balancer().on_finish(ep, self._clock(), None, True, None)
            call.cancel()
            raise
        except grpc.RpcError as err:
            return self._done(ep, t0, None, err, _trailing(err), fresh=fresh)
        return self._done(ep, t0, body, None, await call.trailing_metadata(), fresh=fresh)

    async def acall(self, plan: Plan) -> wire.PredictResponse:
        self._deposit()
        try:
            try:
                return await self.aattempt(plan)
            except _Retryable as first:
                self._note_retry(plan, first)
            async for attempt in tenacity.AsyncRetrying(**self._retry_kwargs(plan), sleep=asyncio.sleep):
                with attempt:
                    return await self.aattempt(plan)
        except (_Failed, NoEndpointAvailable) as e:
            raise self._final_error(plan, e)  # noqa: B904 - _final_error sets the cause
        raise AssertionError("unreachable")  # pragma: no cover

    # -- retry policy, shared ----------------------------------------------------------

    def _deposit(self) -> None:
        now = self._clock()
        self.budget.deposit(now)
        if self._hedging:
            self.hedge_budget.deposit(now)

    def _final_error(self, plan: Plan, e: _Failed | NoEndpointAvailable) -> BaseException:
        """What the caller gets once the retry loop ended on ``e`` (its cause set here)."""
        if isinstance(e, _Failed):
            plan.attempts.append(e.attempt)
            err: BaseException = self._give_up(plan, retryable=isinstance(e, _Retryable))
            err.__cause__, err.__suppress_context__ = None, True
            return err
        if not plan.attempts:
            return e  # nothing was tried: the balancer's own answer says why
        err = RequestFailed(f"no other instance to retry on ({e.why.value})", tuple(plan.attempts))
        err.__cause__ = e
        return err

    def _should_stop(self, plan: Plan, made: int) -> bool:
        """Checked in order, so the budget is only spent on a retry that happens."""
        cfg = self.config.retry
        if made >= cfg.max_attempts:
            plan.stopped_by = f"{cfg.max_attempts} attempts"
        elif plan.deadline - self._clock() <= 0:
            plan.stopped_by = "the deadline"
        elif not self.budget.try_withdraw(self._clock()):
            plan.stopped_by = "the retry budget (too many retries lately)"
        return bool(plan.stopped_by)

    def _note_retry(self, plan: Plan, failure: _Retryable) -> None:
        """After the first attempt failed: record it, then retry at once (on another
        instance) unless a limit says stop. Later retries back off (tenacity's wait)."""
        if self._should_stop(plan, made=1):
            raise failure
        plan.attempts.append(failure.attempt)
        self._metrics.retry(failure.attempt.code)

    def _retry_kwargs(self, plan: Plan) -> dict[str, Any]:
        """tenacity's loop for attempts 2..max_attempts (its attempt 1 is our second)."""
        cfg = self.config.retry

        def before_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Failed):
                plan.attempts.append(exc.attempt)
                self._metrics.retry(exc.attempt.code)

        return {
            "retry": tenacity.retry_if_exception_type(_Retryable),
            "stop": lambda state: self._should_stop(plan, made=state.attempt_number + 1),
            "wait": tenacity.wait_exponential_jitter(multiplier=cfg.backoff_s, max=cfg.max_backoff_s,
                                                     jitter=cfg.backoff_s),
            "before_sleep": before_retry,
            "reraise": True,
        }

    def _give_up(self, plan: Plan, *, retryable: bool) -> RequestFailed:
        attempts = tuple(plan.attempts)
        if plan.stopped_by == "the deadline" or attempts[-1].code == "DEADLINE_EXCEEDED":
            return DeadlineExceeded("the deadline passed", attempts)
        if not retryable:
            return RequestFailed(f"{attempts[-1].code} is not retried", attempts)
        return RequestFailed(f"stopped by {plan.stopped_by}", attempts)

    def close(self) -> None:
        self.pool.close()


def _trailing(err: grpc.RpcError) -> Any:
    try:
        return err.trailing_metadata()  # type: ignore[attr-defined]
    except Exception:
        return None
