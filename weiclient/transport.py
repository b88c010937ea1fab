"""The drivers: gRPC calls for the attempt controller's decisions, sync and asyncio.

:mod:`weiclient.attempts` decides (send, hedge, wait, back off, return, give
up); the two drivers here act on it. They make the calls, turn each call's
end into an outcome event once (:meth:`Transport._finish`: the balancer's
accounting, in calls and in the plan's rows, the ORCA load report, the attempt metric, the latency window),
sleep when told and raise what the controller gives up with.

Two protocols, one balancer: an attempt on an endpoint whose record says
``oip`` sends the plan's OIP ModelInfer body (built on the first such attempt,
kept for the rest) on ``Conn.infer``, and its answer is decoded by
:mod:`weiclient.oip` into the same response; everything else (accounting,
metadata in and out, status codes, retries, hedges) is the same for both.

Overload: a call's ``priority`` travels as request metadata
(``wei-priority``, omitted for ``default``, which the protocol defines as
the same as no header: the common call carries nothing extra and grpcio
takes its no-metadata path). An overload refusal (RESOURCE_EXHAUSTED) is
neutral for the pod's health and marks it refusing for its
``wei-retry-after-ms`` (:class:`~weiclient.config.OverloadConfig`); every
attempt's end feeds the adaptive throttle (:mod:`weiclient.throttle`),
which :meth:`Transport.admit` asks before a call is built.

A call that no hedge can follow is one blocking ``with_call`` on the
caller's thread (a future completes on another thread, which costs a
handoff on every call); asyncio awaits the call itself and creates no Task.
A hedged round uses futures and a done-callback queue (sync) or
``asyncio.wait`` (asyncio); when the round ends, the call still in flight is
cancelled and releases its in-flight slot with no latency sample.
"""

from __future__ import annotations

import asyncio
import queue
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from protocol import wire
from registry.records import Protocol

from . import oip as oip_codec
from .attempts import (
    MALFORMED,
    OVERLOADED,
    Answered,
    AttemptController,
    Decision,
    Failed,
    GiveUp,
    Hedge,
    Outcome,
    Plan,
    Return,
    Send,
    Sleep,
    Wait,
    blames_endpoint,
    code_name,
)
from .balancer import Balancer, Endpoint, RetryBudget, RetryBudgetConfig
from .channels import AioChannelPool, ChannelPool
from .config import ClientConfig
from .errors import Throttled, clip
from .retry import RetryPolicy
from .throttle import Throttle

__all__ = ["LatencyWindow", "Plan", "Transport"]

REPORT_INTERVAL_S = 0.05
_OIP = Protocol.OIP
# Request metadata per priority, built once: "default" sends none (the same as no header).
_PRIORITY_METADATA = {p: None if p == "default" else ((wire.PRIORITY_KEY, p),) for p in wire.PRIORITIES}


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


@dataclass(slots=True, eq=False)
class _Flight:
    """A sync call in flight (a gRPC future)."""

    endpoint: Endpoint
    t0: float
    future: Any
    fresh: bool
    plan: Plan


class Transport:
    def __init__(self, config: ClientConfig, balancer: Callable[[], Balancer], *,
                 clock: Callable[[], float], sleep: Callable[[float], None], metrics: Any,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self._balancer = balancer
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self.pool = ChannelPool(config.channel, clock=clock)
        self.aio_pool: AioChannelPool | None = None
        self.budget = RetryBudget(config.retry.budget)
        self.hedge_budget = RetryBudget(RetryBudgetConfig(ratio=config.hedging.budget_ratio, min_retries_per_s=0.0))
        self.latency = LatencyWindow(config.hedging.window, config.hedging.percentile, config.hedging.min_delay_s)
        self.policy = RetryPolicy.from_config(config.retry, self.budget, rng or random.Random())
        self.throttle = Throttle(config.throttle, self.policy.rng)
        self._hedging = config.hedging.enabled  # hedge bookkeeping costs ~10 us a call: only when on

    # -- channels: the membership feed and the housekeeping thread ----------------------------

    def retain(self, addresses: Iterable[str]) -> None:
        keep = frozenset(addresses)
        self.pool.retain(keep)
        aio = self.aio_pool
        if aio is not None:
            aio.retain(keep)

    def reap(self) -> int:
        """Close channels whose instance left more than ``close_grace_s`` ago (any thread)."""
        aio = self.aio_pool
        return self.pool.reap() + (aio.reap() if aio is not None else 0)

    @property
    def channels(self) -> list[str]:
        return self.pool.addresses

    # -- shared: admission, the controller, one outcome, one end -----------------------------

    def admit(self, priority: str) -> None:
        """Adaptive throttling, before a call is encoded: raises :class:`Throttled` (nothing sent)."""
        rejection = self.throttle.check(priority, self._clock())
        if rejection is None:
            return
        self._metrics.throttled(priority)
        r = rejection
        raise Throttled(f"throttled here, nothing sent: the servers accepted {r.accepts} of the last {r.requests} "
                        f"requests (ThrottleConfig.window_s), fewer than 1/{r.k:g} (K for {r.priority} priority); "
                        f"a {r.priority} call is rejected with probability {r.probability:.2f} until they accept "
                        f"more", priority=r.priority, probability=r.probability)

    def _controller(self, plan: Plan) -> tuple[AttemptController, float]:
        now = self._clock()
        self.budget.deposit(now)
        if not self._hedging:
            return AttemptController(plan, self.policy, self._pick), now
        self.hedge_budget.deposit(now)
        return AttemptController(plan, self.policy, self._pick, hedge_delay=self.latency.delay,
                                 hedge_budget=self.hedge_budget), now

    def _pick(self, plan: Plan, exclude: Collection[Endpoint], now: float) -> Endpoint:
        return self._balancer().pick(plan.model, plan.version, key=plan.key, exclude=exclude, also=plan.also,
                                     now=now, cost=plan.rows)

    def _begin(self, ep: Endpoint, pool: ChannelPool | AioChannelPool, plan: Plan) -> tuple[Any, bytes, bool]:
        """Account an attempt of ``plan`` on ``ep``: (the multicallable of ``ep``'s protocol, the body,
        whether the call opens the channel). An OIP body is built first: if the plan's inputs cannot
        be sent that way (a caller's error) it raises before anything is counted."""
        oip = ep.record.protocol is _OIP  # a multi-model plan has no OIP body: Candidates.view keeps it off OIP pods
        body = plan.oip.body() if oip else plan.msgpack()  # type: ignore[union-attr]
        self._balancer().on_start(ep, self._clock(), cost=plan.rows)
        conn = pool.get(ep.address)
        return conn.infer if oip else conn.predict, body, pool.first_call(ep.address)

    def _finish(self, ep: Endpoint, plan: Plan, t0: float, fresh: bool, body: bytes | None,
                err: grpc.RpcError | None, trailing: Any) -> Outcome:
        """The one translation of a call's end into an outcome event, accounted with the balancer.

        ``fresh``: the call opened its channel; its latency includes the TCP and
        HTTP/2 handshake, which says nothing about the pod, so the balancer gets
        no latency sample from a success (a peak EWMA would remember it for seconds).
        """
        now = self._clock()
        measured = now - t0
        latency = None if fresh else measured
        rows = plan.rows
        # Decoding the ORCA report costs more than the rest of this method; the
        # balancer trusts a report for seconds, so one per endpoint every 50 ms is plenty.
        report = None
        if trailing and now - ep.state.report_at >= REPORT_INTERVAL_S:
            report = wire.load_report_from_metadata(trailing)
        bal = self._balancer()
        if err is None:
            try:
                resp = oip_codec.decode_response(body or b"", plan.model, plan.version) \
                    if ep.record.protocol is _OIP else wire.decode_response(body or b"")
            except wire.WireError as e:
                bal.on_finish(ep, now, latency, False, report, cost=rows)
                self._metrics.attempt(ep.address, MALFORMED, measured)
                return Failed(ep, MALFORMED, str(e), measured)
            bal.on_finish(ep, now, latency, True, report, cost=rows)
            if latency is not None and self._hedging:
                self.latency.add(latency)
            self._metrics.attempt(ep.address, "OK", measured)
            self.throttle.record("OK", now)
            return Answered(ep, resp, measured)
        code = err.code()
        details = clip(err.details() or "")
        name = code_name(code.name if code is not None else "UNKNOWN", details)
        self._metrics.attempt(ep.address, name, measured)
        self.throttle.record(name, now)
        if name == OVERLOADED:  # a load signal: neutral for its health, avoided for its retry-after
            after = self.config.overload.retry_after_s(_value(trailing, wire.RETRY_AFTER_KEY))
            bal.on_finish(ep, now, None, None, report, cost=rows, refused_for_s=after)
            self._metrics.refused(ep.address)
            return Failed(ep, name, details, measured, after)
        bal.on_finish(ep, now, measured, False if blames_endpoint(name) else None, report, cost=rows)
        return Failed(ep, name, details, measured)

    def _backoff(self, decision: Sleep) -> float:
        self._metrics.retry(decision.code)
        if decision.hedge:
            self._metrics.hedge(decision.hedge)
        return decision.seconds

    def _conclude(self, decision: Decision) -> wire.PredictResponse:
        if isinstance(decision, Return | GiveUp) and decision.hedge:
            self._metrics.hedge(decision.hedge)
        if isinstance(decision, Return):
            return decision.response
        if isinstance(decision, GiveUp):
            raise decision.error
        raise AssertionError(f"the controller decided {decision!r} between rounds")  # pragma: no cover

    # -- sync ------------------------------------------------------------------------------------

    def call(self, plan: Plan) -> wire.PredictResponse:
        ctl, now = self._controller(plan)
        decision: Decision = ctl.start(now)
        while True:
            if isinstance(decision, Send):
                if decision.hedge_after_s is None:
                    outcome = self._blocking(decision.endpoint, plan, decision.timeout_s)
                    decision = ctl.on_outcome(outcome, self._clock())
                else:
                    decision = self._hedged_round(ctl, plan, decision)
            elif isinstance(decision, Sleep):
                seconds = self._backoff(decision)
                if seconds > 0:
                    self._sleep(seconds)
                decision = ctl.resume(self._clock())
            else:
                return self._conclude(decision)

    def _blocking(self, ep: Endpoint, plan: Plan, timeout: float) -> Outcome:
        method, request, fresh = self._begin(ep, self.pool, plan)
        t0 = self._clock()
        try:
            body, call = method.with_call(request, timeout=timeout, metadata=_PRIORITY_METADATA[plan.priority])
        except grpc.RpcError as err:
            return self._finish(ep, plan, t0, fresh, None, err, _trailing(err))
        return self._finish(ep, plan, t0, fresh, body, None, call.trailing_metadata())

    def _hedged_round(self, ctl: AttemptController, plan: Plan, send: Send) -> Decision:
        """A round that a hedge may join: futures report their end on a queue."""
        ended: queue.SimpleQueue[_Flight] = queue.SimpleQueue()
        pending = [self._start(send.endpoint, plan, send.timeout_s, ended)]
        try:
            try:
                flight: _Flight | None = ended.get(timeout=send.hedge_after_s)
            except queue.Empty:
                flight = None
                hedge = ctl.on_hedge_timer(self._clock())
                if isinstance(hedge, Hedge):
                    pending.append(self._start(hedge.endpoint, plan, hedge.timeout_s, ended))
            while True:
                if flight is None:
                    flight = ended.get()  # every call ends: each has a deadline
                pending.remove(flight)
                decision = ctl.on_outcome(self._outcome(flight), self._clock())
                if not isinstance(decision, Wait):
                    return decision
                flight = None
        finally:
            for loser in pending:
                self._abandon(loser)

    def _start(self, ep: Endpoint, plan: Plan, timeout: float, ended: queue.SimpleQueue[_Flight]) -> _Flight:
        method, request, fresh = self._begin(ep, self.pool, plan)
        fut = method.future(request, timeout=timeout, metadata=_PRIORITY_METADATA[plan.priority])
        flight = _Flight(ep, self._clock(), fut, fresh, plan)
        fut.add_done_callback(lambda _f: ended.put(flight))
        return flight

    def _outcome(self, flight: _Flight) -> Outcome:
        ep, plan = flight.endpoint, flight.plan
        try:
            body = flight.future.result()
        except grpc.RpcError as err:
            return self._finish(ep, plan, flight.t0, flight.fresh, None, err, _trailing(err))
        return self._finish(ep, plan, flight.t0, flight.fresh, body, None, flight.future.trailing_metadata())

    def _abandon(self, flight: _Flight) -> None:
        """Cancel a hedge's losing call and release its in-flight slot (no latency sample, neutral)."""
        flight.future.cancel()
        self._balancer().on_finish(flight.endpoint, self._clock(), None, None, None, cost=flight.plan.rows)

    # -- asyncio ---------------------------------------------------------------------------------

    async def acall(self, plan: Plan) -> wire.PredictResponse:
        ctl, now = self._controller(plan)
        decision: Decision = ctl.start(now)
        while True:
            if isinstance(decision, Send):
                if decision.hedge_after_s is None:  # no hedge can follow: await the call itself, no Task
                    outcome = await self._aflight(decision.endpoint, plan, decision.timeout_s)
                    decision = ctl.on_outcome(outcome, self._clock())
                else:
                    decision = await self._ahedged_round(ctl, plan, decision)
            elif isinstance(decision, Sleep):
                seconds = self._backoff(decision)
                if seconds > 0:
                    await asyncio.sleep(seconds)
                decision = ctl.resume(self._clock())
            else:
                return self._conclude(decision)

    async def _ahedged_round(self, ctl: AttemptController, plan: Plan, send: Send) -> Decision:
        pending = {asyncio.ensure_future(self._aflight(send.endpoint, plan, send.timeout_s))}
        try:
            done, pending = await asyncio.wait(pending, timeout=send.hedge_after_s)
            if not done:
                hedge = ctl.on_hedge_timer(self._clock())
                if isinstance(hedge, Hedge):
                    pending.add(asyncio.ensure_future(self._aflight(hedge.endpoint, plan, hedge.timeout_s)))
            while True:
                if not done:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                decision = ctl.on_outcome(done.pop().result(), self._clock())
                if not isinstance(decision, Wait):
                    return decision
        finally:
            for task in pending:
                task.cancel()  # _aflight releases the slot

    async def _aflight(self, ep: Endpoint, plan: Plan, timeout: float) -> Outcome:
        pool = self.aio_pool
        if pool is None:
            pool = self.aio_pool = AioChannelPool(self.config.channel, loop=asyncio.get_running_loop(),
                                                  clock=self._clock)
        method, request, fresh = self._begin(ep, pool, plan)
        t0 = self._clock()
        call = method(request, timeout=timeout, metadata=_PRIORITY_METADATA[plan.priority])
        try:
            body = await call
        except asyncio.CancelledError:
            self._balancer().on_finish(ep, self._clock(), None, None, None, cost=plan.rows)
            call.cancel()
            raise
        except grpc.RpcError as err:
            return self._finish(ep, plan, t0, fresh, None, err, _trailing(err))
        return self._finish(ep, plan, t0, fresh, body, None, await call.trailing_metadata())

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self.pool.close()

    async def aclose(self) -> None:
        if self.aio_pool is not None:
            await self.aio_pool.close()


def _value(metadata: Any, key: str) -> str | None:
    """The first text value of ``key`` in a call's metadata, or None."""
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


def _trailing(err: grpc.RpcError) -> Any:
    try:
        return err.trailing_metadata()  # type: ignore[attr-defined]
    except Exception:
        return None
