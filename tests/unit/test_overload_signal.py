"""An overload refusal is a load signal, not a pod failure (issue 10, part 1): the balancer and the
attempt controller as tables on a fake clock, every policy, no gRPC."""

from __future__ import annotations

import random

import pytest

from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from weiclient.attempts import OVERLOADED, Answered, AttemptController, Failed, GiveUp, Plan, Return, Send, Sleep
from weiclient.balancer import POLICIES, Balancer, RetryBudget, RetryBudgetConfig, build_policy
from weiclient.config import OverloadConfig, RetryConfig
from weiclient.errors import InvalidBalancerConfig, NoEndpointAvailable, Overloaded, RequestFailed
from weiclient.retry import RetryPolicy

REFUSED = OVERLOADED  # RESOURCE_EXHAUSTED


def rec(i: int, weight: float = 1.0) -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                          state=State.SERVING, models={"ctr": [1]})


def make(n: int, policy: str = "random") -> Balancer:
    b = Balancer(build_policy(policy), rng=random.Random(5))
    b.update(snapshot_from_records("ctr", [rec(i) for i in range(n)], version=1), now=0.0)
    return b


def refuse(b: Balancer, ep, now: float, for_s: float = 0.1) -> None:
    b.on_start(ep, now)
    b.on_finish(ep, now, None, None, refused_for_s=for_s)


def fail(b: Balancer, ep, now: float) -> None:
    b.on_start(ep, now)
    b.on_finish(ep, now, 0.01, False)


def row(b: Balancer, ep, now: float):
    return next(r for r in b.stats(now).endpoints if r.instance_id == ep.instance_id)


# -- neutral for the pod's health ------------------------------------------------------------------

def test_many_refusals_in_a_row_neither_eject_nor_lower_health():
    b = make(4)
    p0 = b.candidates.endpoints[0]
    for i in range(20):  # 4x OutlierDetection.consecutive_failures
        refuse(b, p0, 1.0 + i * 0.001)
    r = row(b, p0, 1.02)
    assert (r.consecutive_failures, r.health, r.ejected_for_s, r.times_ejected) == (0, 1.0, 0.0, 0)
    assert r.in_flight == 0 and r.effective_weight == 1.0


def test_a_neutral_outcome_does_not_clear_a_sick_pods_run_of_failures():
    """A refusal or a caller's mistake between failures: five failures still eject."""
    b = make(4)
    p0 = b.candidates.endpoints[0]
    for _ in range(3):
        fail(b, p0, 1.0)
    refuse(b, p0, 1.0)
    b.on_start(p0, 1.0)
    b.on_finish(p0, 1.0, 0.002, None)  # a caller's mistake (INVALID_ARGUMENT): neutral
    assert row(b, p0, 1.0).consecutive_failures == 3
    fail(b, p0, 1.0)
    fail(b, p0, 1.0)
    assert row(b, p0, 1.0).ejected_for_s > 0


def test_a_neutral_outcome_never_lowers_the_latency_estimate():
    b = make(2)
    p0 = b.candidates.endpoints[0]
    b.on_start(p0, 1.0)
    b.on_finish(p0, 1.0, 0.05, True)
    b.on_start(p0, 1.1)
    b.on_finish(p0, 1.1, 0.001, None)  # a fast caller's error says nothing of the pod's speed
    assert p0.state.latency_s == pytest.approx(0.05)


# -- the refusing pod is avoided while another can take the call, under every policy -----------------

@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_avoids_a_refusing_pod_while_another_is_available(policy):
    b = make(2, policy)
    p0, p1 = b.candidates.endpoints
    refuse(b, p0, 1.0, for_s=0.1)
    assert {b.pick("ctr", key=k, now=1.05) for k in range(64)} == {p1}
    # the only one left: the pod decides (a refusal is cheap), no NoEndpointAvailable
    assert b.pick("ctr", key=1, exclude={p1}, now=1.05) == p0
    assert {b.pick("ctr", key=k, now=1.2) for k in range(64)} == {p0, p1}  # its time is over


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_when_every_pod_refuses_the_pick_is_the_policys_own(policy):
    b = make(3, policy)
    for ep in b.candidates.endpoints:
        refuse(b, ep, 1.0)
    assert len({b.pick("ctr", key=k, now=1.01) for k in range(64)}) == 3


def test_the_refusal_window_is_the_retry_after_and_shows_in_stats():
    b = make(2)
    p0, _ = b.candidates.endpoints
    refuse(b, p0, 1.0, for_s=0.25)
    refuse(b, p0, 1.1, for_s=0.05)  # a shorter hint later does not shorten the window
    assert row(b, p0, 1.2).refused_for_s == pytest.approx(0.05)
    assert row(b, p0, 1.3).refused_for_s == 0.0
    assert b.with_policy(build_policy("round_robin")).pick("ctr", now=1.2) != p0  # carried across a policy swap


def test_scatter_plans_no_shard_on_a_refusing_pod_unless_all_refuse():
    b = make(3)
    p0, p1, p2 = b.candidates.endpoints
    refuse(b, p0, 1.0)
    assert {s.endpoint for s in b.scatter("ctr", None, 300, now=1.01)} == {p1, p2}
    refuse(b, p1, 1.0)
    refuse(b, p2, 1.0)
    assert {s.endpoint for s in b.scatter("ctr", None, 300, now=1.01)} == {p0, p1, p2}


# -- the attempt controller ---------------------------------------------------------------------------

def controller(n: int = 3, *, max_attempts: int = 3, allow_retries: bool = True):
    b = make(n, "round_robin")
    budget = RetryBudget(RetryBudgetConfig() if allow_retries else RetryBudgetConfig(ratio=0.0,
                                                                                     min_retries_per_s=0.0))
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=max_attempts, backoff_s=0.01, max_backoff_s=0.05),
                                     budget, random.Random(3))
    plan = Plan(model="ctr", version=1, payload=b"", deadline=10.0)
    return AttemptController(plan, policy, lambda p, exclude, now: b.pick("ctr", exclude=exclude, now=now))


def refused(send: Send, after: float | None = 0.2) -> Failed:
    return Failed(send.endpoint, REFUSED, "overloaded: queue wait 900 ms > deadline 200 ms", 0.001, after)


def test_a_refusal_is_retried_at_once_on_another_pod_every_time():
    """A failure's second retry backs off (2 ms x jitter); a refusal's never waits."""
    ctl = controller()
    first = ctl.start(1.0)
    assert ctl.on_outcome(refused(first), 1.001) == Sleep(0.0, REFUSED)
    second = ctl.resume(1.001)
    assert second.endpoint != first.endpoint
    assert ctl.on_outcome(refused(second), 1.002) == Sleep(0.0, REFUSED)
    third = ctl.resume(1.002)
    assert third.endpoint not in (first.endpoint, second.endpoint)


def test_every_pod_refusing_waits_the_soonest_retry_after_once_then_is_overloaded():
    ctl = controller(2)
    first = ctl.start(1.0)
    ctl.on_outcome(refused(first, 0.3), 1.001)
    second = ctl.resume(1.001)
    d = ctl.on_outcome(refused(second, 0.12), 1.002)
    assert isinstance(d, Sleep)
    assert ctl.resume(1.002) == Sleep(0.12, REFUSED)  # nowhere left: wait the soonest hint, once
    third = ctl.resume(1.122)                         # a new round over every pod
    assert isinstance(third, Send)
    ctl.on_outcome(refused(third, 0.12), 1.123)
    fourth = ctl.resume(1.123)
    assert isinstance(fourth, Send) and fourth.endpoint != third.endpoint
    ctl.on_outcome(refused(fourth, 0.12), 1.124)
    d = ctl.resume(1.124)  # refused again everywhere: no second wait, no wait for the deadline (10 s)
    assert isinstance(d, GiveUp) and type(d.error) is Overloaded
    assert d.error.retry_after_s == pytest.approx(0.12)
    assert [a.code for a in d.error.attempts] == [REFUSED] * 4
    assert "every instance tried refused" in str(d.error) and "retry after 120 ms" in str(d.error)
    assert isinstance(d.error.__cause__, NoEndpointAvailable)


def test_after_the_wait_a_pod_with_room_answers():
    ctl = controller(3)
    sends = [ctl.start(1.0)]
    for t in (1.001, 1.002):
        ctl.on_outcome(refused(sends[-1], 0.02), t)
        sends.append(ctl.resume(t))
    assert ctl.on_outcome(refused(sends[-1], 0.02), 1.003) == Sleep(0.02, REFUSED)  # 3 attempts, all refused
    again = ctl.resume(1.023)
    assert isinstance(again, Send)
    assert isinstance(ctl.on_outcome(Answered(again.endpoint, b"ok", 0.01), 1.03), Return)


def test_no_wait_when_the_hint_is_more_than_half_the_time_left():
    ctl = controller(1)
    d = ctl.on_outcome(refused(ctl.start(1.0), 5.0), 1.001)  # 5 s asked, 9 s left
    d = ctl.resume(1.001) if isinstance(d, Sleep) else d
    assert isinstance(d, GiveUp) and type(d.error) is Overloaded


@pytest.mark.parametrize("kwargs, says", [(dict(max_attempts=2), "2 attempts"),
                                          (dict(allow_retries=False), "the retry budget")])
def test_refusals_stopped_by_the_attempts_or_the_budget_are_overloaded(kwargs, says):
    ctl = controller(**kwargs)
    if "max_attempts" in kwargs:
        ctl.on_outcome(refused(ctl.start(1.0), None), 1.001)
        d = ctl.on_outcome(refused(ctl.resume(1.001), None), 1.002)
    else:
        d = ctl.on_outcome(refused(ctl.start(1.0), None), 1.001)
    assert isinstance(d, GiveUp) and type(d.error) is Overloaded and says in str(d.error)
    assert d.error.retry_after_s is None  # no pod said


def test_a_failure_among_the_refusals_is_a_request_failed():
    ctl = controller(2)
    first = ctl.start(1.0)
    ctl.on_outcome(Failed(first.endpoint, "UNAVAILABLE", "connection refused", 0.001), 1.001)
    d = ctl.on_outcome(refused(ctl.resume(1.001)), 1.002)
    d = ctl.resume(1.002)
    assert isinstance(d, GiveUp) and type(d.error) is RequestFailed


# -- the retry-after hint --------------------------------------------------------------------------------

@pytest.mark.parametrize("hint, seconds", [
    ("250", 0.25), (" 40 ", 0.04), ("0", 0.0), (None, 0.05), ("", 0.05), ("-5", 0.05), ("1e3", 0.05),
    ("soon", 0.05), ("٣", 0.05), ("3600000", 1.0),
])
def test_a_retry_after_hint_is_read_as_decimal_ms_with_a_default_and_a_cap(hint, seconds):
    assert OverloadConfig().retry_after_s(hint) == pytest.approx(seconds)


def test_overload_config_is_checked():
    with pytest.raises(InvalidBalancerConfig) as e:
        OverloadConfig(default_retry_after_s=2.0, max_retry_after_s=1.0)
    assert e.value.field == "overload.default_retry_after_s"
    with pytest.raises(InvalidBalancerConfig):
        OverloadConfig(max_retry_after_s=0)
