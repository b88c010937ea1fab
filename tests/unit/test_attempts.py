"""The attempt controller as a table of events and decisions: fake clock, seeded rng, no gRPC."""

from __future__ import annotations

import random

import pytest

from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from weiclient.attempts import (
    WAIT,
    Answered,
    AttemptController,
    Failed,
    GiveUp,
    Hedge,
    Kind,
    Plan,
    Return,
    Send,
    Sleep,
    blames_endpoint,
    classify,
)
from weiclient.balancer import Balancer, Endpoint, RetryBudget, RetryBudgetConfig, build_policy
from weiclient.config import RetryConfig
from weiclient.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    NoEndpointAvailable,
    RequestFailed,
    Unavailable,
)
from weiclient.retry import (
    ExponentialJitter,
    NoBackoff,
    RetryPolicy,
    RetryState,
    StopAfterAttempt,
    StopAny,
    StopAtDeadline,
    StopWhenBudgetRefuses,
)

DEADLINE = 10.0
BASE, CAP = 0.002, 0.05


def endpoints(n: int) -> tuple[Endpoint, ...]:
    recs = [InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=1.0,
                           state=State.SERVING, models={"ctr": [1]}) for i in range(n)]
    b = Balancer(build_policy("random"))
    b.update(snapshot_from_records("ctr", recs, version=1), now=0.0)
    return b.candidates.endpoints


class Picker:
    """The first endpoint not excluded, in order (a deterministic stand-in for Balancer.pick)."""

    def __init__(self, eps: tuple[Endpoint, ...]) -> None:
        self.eps = eps
        self.calls = 0

    def __call__(self, plan: Plan, exclude, now: float) -> Endpoint:
        self.calls += 1
        for ep in self.eps:
            if ep not in exclude:
                return ep
        why = Unavailable.ALL_EXCLUDED if self.eps else Unavailable.NO_INSTANCES
        raise NoEndpointAvailable(plan.model, plan.version, why, f"{len(self.eps)} available")


class SpyBudget(RetryBudget):
    def __init__(self, allow: bool = True) -> None:
        super().__init__(RetryBudgetConfig() if allow else RetryBudgetConfig(ratio=0.0, min_retries_per_s=0.0))
        self.asked = 0

    def try_withdraw(self, now: float) -> bool:
        self.asked += 1
        return super().try_withdraw(now)


def controller(n: int = 3, *, max_attempts: int = 3, budget: RetryBudget | None = None, seed: int = 7,
               hedge_delay: float | None = None, hedge_budget: RetryBudget | None = None,
               first: Endpoint | None = None) -> tuple[AttemptController, tuple[Endpoint, ...], SpyBudget]:
    eps = endpoints(n)
    budget = budget or SpyBudget()
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=max_attempts, backoff_s=BASE, max_backoff_s=CAP),
                                     budget, random.Random(seed))
    plan = Plan(model="ctr", version=1, payload=b"", deadline=DEADLINE, first=first)
    ctl = AttemptController(plan, policy, Picker(eps), hedge_delay=hedge_delay, hedge_budget=hedge_budget)
    return ctl, eps, budget  # type: ignore[return-value]


def ok(ep: Endpoint, response: object = "resp") -> Answered:
    return Answered(ep, response, 0.001)


def failed(ep: Endpoint, code: str = "UNAVAILABLE", message: str = "down") -> Failed:
    return Failed(ep, code, message, 0.001)


# -- the table ------------------------------------------------------------------------------------------

def test_classification_is_a_table_of_code_names():
    assert [classify(c) for c in ("UNAVAILABLE", "ABORTED", "MALFORMED_RESPONSE")] == [Kind.RETRYABLE] * 3
    assert classify("RESOURCE_EXHAUSTED") is Kind.OVERLOADED and not blames_endpoint("RESOURCE_EXHAUSTED")
    assert [classify(c) for c in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE")] == [
        Kind.CALLER_ERROR] * 4
    assert [classify(c) for c in ("INTERNAL", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN")] == [Kind.FATAL] * 4
    assert not blames_endpoint("INVALID_ARGUMENT") and not blames_endpoint("CANCELLED")
    assert blames_endpoint("UNAVAILABLE") and blames_endpoint("INTERNAL")


def test_first_try_ok():
    ctl, eps, budget = controller()
    assert ctl.start(1.0) == Send(eps[0], DEADLINE - 1.0, None)
    assert ctl.on_outcome(ok(eps[0]), 1.1) == Return("resp", None)
    assert budget.asked == 0 and ctl.attempts == []


def test_retryable_failure_then_success_on_another_endpoint():
    ctl, eps, budget = controller()
    ctl.start(1.0)
    assert ctl.on_outcome(failed(eps[0]), 1.1) == Sleep(0.0, "UNAVAILABLE")  # the first retry: at once
    assert ctl.resume(1.1) == Send(eps[1], DEADLINE - 1.1, None)
    assert ctl.on_outcome(ok(eps[1]), 1.2) == Return("resp")
    assert budget.asked == 1 and [a.code for a in ctl.attempts] == ["UNAVAILABLE"]


@pytest.mark.parametrize(("code", "error"), [("INVALID_ARGUMENT", InvalidInput), ("NOT_FOUND", ModelNotFound),
                                             ("FAILED_PRECONDITION", InvalidInput)])
def test_caller_error_is_raised_at_once_without_retry_or_budget(code, error):
    ctl, eps, budget = controller()
    ctl.start(1.0)
    d = ctl.on_outcome(failed(eps[0], code, "x: wrong shape"), 1.1)
    assert isinstance(d, GiveUp) and type(d.error) is error
    assert d.error.code == code and d.error.endpoint == eps[0].address and "x: wrong shape" in str(d.error)
    assert budget.asked == 0


@pytest.mark.parametrize(("code", "error", "text"), [("INTERNAL", RequestFailed, "INTERNAL is not retried"),
                                                     ("DEADLINE_EXCEEDED", DeadlineExceeded, "the deadline passed")])
def test_fatal_failure_is_not_retried(code, error, text):
    ctl, eps, budget = controller()
    ctl.start(1.0)
    d = ctl.on_outcome(failed(eps[0], code), 1.1)
    assert isinstance(d, GiveUp) and type(d.error) is error and text in str(d.error)
    assert [a.code for a in d.error.attempts] == [code] and budget.asked == 0


def test_max_attempts_reached():
    ctl, eps, budget = controller(max_attempts=2)
    ctl.start(1.0)
    ctl.on_outcome(failed(eps[0]), 1.1)
    ctl.resume(1.1)
    d = ctl.on_outcome(failed(eps[1], "RESOURCE_EXHAUSTED"), 1.2)
    assert isinstance(d, GiveUp) and type(d.error) is RequestFailed
    assert "stopped by 2 attempts after 2 attempt(s)" in str(d.error)
    assert [a.endpoint for a in d.error.attempts] == [eps[0].address, eps[1].address]
    assert budget.asked == 1  # the limit stopped first: the budget was not asked


def test_deadline_reached_lists_the_attempts():
    ctl, eps, budget = controller()
    ctl.start(1.0)
    d = ctl.on_outcome(failed(eps[0]), DEADLINE + 0.5)
    assert isinstance(d, GiveUp) and type(d.error) is DeadlineExceeded
    assert [a.code for a in d.error.attempts] == ["UNAVAILABLE"] and budget.asked == 0

    ctl, eps, budget = controller()  # or the back-off ran into it
    ctl.start(1.0)
    ctl.on_outcome(failed(eps[0]), 1.1)
    d = ctl.resume(DEADLINE)
    assert isinstance(d, GiveUp) and type(d.error) is DeadlineExceeded and len(d.error.attempts) == 1

    ctl, _, _ = controller()  # or the call started too late
    d = ctl.start(DEADLINE + 1)
    assert isinstance(d, GiveUp) and type(d.error) is DeadlineExceeded and d.error.attempts == ()


def test_budget_exhausted():
    ctl, eps, budget = controller(budget=SpyBudget(allow=False))
    ctl.start(1.0)
    d = ctl.on_outcome(failed(eps[0]), 1.1)
    assert isinstance(d, GiveUp) and type(d.error) is RequestFailed
    assert "stopped by the retry budget" in str(d.error) and budget.asked == 1


def test_stop_parts_compose_in_order_and_only_the_last_spends():
    budget = SpyBudget()
    stop = StopAfterAttempt(3) | StopAtDeadline() | StopWhenBudgetRefuses(budget)
    assert isinstance(stop, StopAny) and len(stop.parts) == 3  # flattened
    assert stop(RetryState(made=3, now=1.0, deadline=2.0)) == "3 attempts"
    assert stop(RetryState(made=1, now=2.0, deadline=2.0)) == "the deadline"
    assert budget.asked == 0
    assert stop(RetryState(made=1, now=1.0, deadline=2.0)) is None and budget.asked == 1


def test_backoff_is_bounded_and_deterministic_with_a_seeded_rng():
    def sleeps(seed: int) -> list[float]:
        ctl, eps, _ = controller(n=6, max_attempts=6, seed=seed)
        ctl.start(1.0)
        out = []
        for ep in eps[:5]:
            d = ctl.on_outcome(failed(ep), 1.0)
            assert isinstance(d, Sleep)
            out.append(d.seconds)
            ctl.resume(1.0)
        return out

    first = sleeps(3)
    assert first == sleeps(3) and first != sleeps(4)
    assert first[0] == 0.0
    for retry, s in enumerate(first[1:], start=2):
        low = BASE * 2 ** (retry - 2)
        assert min(low, CAP) <= s <= min(low + BASE, CAP), (retry, s)
    assert ExponentialJitter(1.0, 3.0, 1.0)(9, random.Random(1)) == 3.0 and NoBackoff()(5, random.Random()) == 0.0


def test_no_endpoint_left():
    ctl, eps, _ = controller(n=2, max_attempts=3)
    ctl.start(1.0)
    ctl.on_outcome(failed(eps[0]), 1.1)
    ctl.resume(1.1)
    ctl.on_outcome(failed(eps[1]), 1.2)
    d = ctl.resume(1.2)
    assert isinstance(d, GiveUp) and type(d.error) is RequestFailed
    assert str(d.error).startswith(f"no other instance to retry on ({Unavailable.ALL_EXCLUDED.value})")
    assert len(d.error.attempts) == 2 and isinstance(d.error.__cause__, NoEndpointAvailable)

    ctl, _, _ = controller(n=0)  # nothing tried: the balancer's own answer
    d = ctl.start(1.0)
    assert isinstance(d, GiveUp) and type(d.error) is NoEndpointAvailable
    assert d.error.why is Unavailable.NO_INSTANCES


def test_a_scatter_shard_goes_first_to_its_planned_endpoint():
    eps = endpoints(3)
    ctl, _, _ = controller(first=eps[2])
    assert ctl.start(1.0).endpoint == eps[2]
    ctl.on_outcome(failed(eps[2]), 1.1)
    assert ctl.resume(1.1).endpoint == eps[0]


# -- hedging ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("delay", "budget", "expected"), [
    (None, True, None),    # no delay known yet: no hedging on guesses
    (0.05, False, None),   # hedging off (no hedge budget)
    (20.0, True, None),    # longer than the time left
    (0.05, True, 0.05),
])
def test_a_hedge_is_offered_only_with_a_known_delay_shorter_than_the_time_left(delay, budget, expected):
    ctl, eps, _ = controller(hedge_delay=delay, hedge_budget=SpyBudget() if budget else None)
    assert ctl.start(1.0) == Send(eps[0], DEADLINE - 1.0, expected)


def test_hedge_timer_sends_a_backup_when_the_hedge_budget_allows():
    hb = SpyBudget()
    ctl, eps, _ = controller(hedge_delay=0.05, hedge_budget=hb)
    ctl.start(1.0)
    assert ctl.on_hedge_timer(1.05) == Hedge(eps[1], DEADLINE - 1.05)
    assert hb.asked == 1
    assert ctl.on_hedge_timer(1.06) is WAIT  # one backup per round

    ctl, eps, _ = controller(hedge_delay=0.05, hedge_budget=SpyBudget(allow=False))
    ctl.start(1.0)
    assert ctl.on_hedge_timer(1.05) is WAIT
    assert ctl.on_outcome(ok(eps[0]), 1.2) == Return("resp", None)  # not hedged after all


def test_hedge_with_no_other_instance_waits_and_spends_nothing():
    hb = SpyBudget()
    ctl, eps, _ = controller(n=1, hedge_delay=0.05, hedge_budget=hb)
    ctl.start(1.0)
    assert ctl.on_hedge_timer(1.05) is WAIT and hb.asked == 0
    assert ctl.on_outcome(ok(eps[0]), 1.2) == Return("resp", None)


@pytest.mark.parametrize(("events", "expected"), [
    ([("ok", 1)], Return("b", "backup_won")),
    ([("ok", 0)], Return("a", "primary_won")),
    ([("fail", 0), ("ok", 1)], Return("b", "backup_won")),
    ([("fail", 1), ("ok", 0)], Return("a", "primary_won")),
])
def test_hedge_winner(events, expected):
    ctl, eps, _ = controller(hedge_delay=0.05, hedge_budget=SpyBudget())
    ctl.start(1.0)
    ctl.on_hedge_timer(1.05)
    decisions = [ctl.on_outcome(ok(eps[i], "ab"[i]) if kind == "ok" else failed(eps[i]), 1.1)
                 for kind, i in events]
    assert decisions[:-1] == [WAIT] * (len(events) - 1)  # a failed half waits for the other
    assert decisions[-1] == expected


def test_hedge_both_failed_retries_on_a_third_instance_and_lists_both():
    ctl, eps, budget = controller(n=3, hedge_delay=0.05, hedge_budget=SpyBudget())
    ctl.start(1.0)
    ctl.on_hedge_timer(1.05)
    assert ctl.on_outcome(failed(eps[1]), 1.1) is WAIT
    assert ctl.on_outcome(failed(eps[0]), 1.2) == Sleep(0.0, "UNAVAILABLE", "both_failed")
    assert ctl.resume(1.2) == Send(eps[2], DEADLINE - 1.2, 0.05)
    d = ctl.on_outcome(failed(eps[2], "INTERNAL"), 1.3)
    assert isinstance(d, GiveUp) and [a.endpoint for a in d.error.attempts] == [
        eps[1].address, eps[0].address, eps[2].address]
    assert ctl.made == 2 and budget.asked == 1  # a hedge is not an attempt of its own


def test_a_caller_error_from_either_half_ends_the_call():
    ctl, eps, _ = controller(hedge_delay=0.05, hedge_budget=SpyBudget())
    ctl.start(1.0)
    ctl.on_hedge_timer(1.05)
    d = ctl.on_outcome(failed(eps[1], "INVALID_ARGUMENT"), 1.1)
    assert isinstance(d, GiveUp) and isinstance(d.error, InvalidInput) and d.hedge is None
