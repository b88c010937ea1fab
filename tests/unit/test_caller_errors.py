"""A caller's mistake, told apart from a pod's failure in the pure parts (issue 10, part 3):
the attempt controller's table, and the balancer's weights clamped on the way in (part 4)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from weiclient.attempts import (
    TOO_LARGE,
    AttemptController,
    Failed,
    GiveUp,
    Kind,
    Plan,
    blames_endpoint,
    classify,
    code_name,
)
from weiclient.balancer import Balancer, RetryBudget, RetryBudgetConfig, build_policy
from weiclient.balancer.candidates import MAX_WEIGHT, MIN_WEIGHT, clamp_weight
from weiclient.balancer.policies import POLICIES
from weiclient.config import RetryConfig
from weiclient.errors import RequestTooLarge
from weiclient.retry import RetryPolicy


def rec(i: int, weight: float) -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                          state=State.SERVING, models={"ctr": [1]})


def balancer(policy: str, *weights: float) -> Balancer:
    b = Balancer(build_policy(policy, {}), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(i, w) for i, w in enumerate(weights)], version=1), now=0.0)
    return b


# -- gRPC's own size refusals are the caller's ---------------------------------------------------------------

@pytest.mark.parametrize(("code", "message", "name"), [
    ("RESOURCE_EXHAUSTED", "CLIENT: Sent message larger than max (200 vs. 100)", TOO_LARGE),
    ("RESOURCE_EXHAUSTED", "SERVER: Received message larger than max (59621 vs. 32768)", TOO_LARGE),
    ("RESOURCE_EXHAUSTED", "Received message larger than max (9 vs. 8)", TOO_LARGE),
    ("RESOURCE_EXHAUSTED", "batch queue full: 8 rows queued + 1 requested > 8", "RESOURCE_EXHAUSTED"),
    ("INVALID_ARGUMENT", "message larger than max", "INVALID_ARGUMENT"),
    ("UNAVAILABLE", "", "UNAVAILABLE"),
])
def test_code_name_tells_a_size_refusal_from_an_overloaded_pod(code, message, name):
    assert code_name(code, message) == name


def test_a_size_refusal_is_a_caller_error_that_blames_no_pod():
    assert classify(TOO_LARGE) is Kind.CALLER_ERROR and not blames_endpoint(TOO_LARGE)
    assert classify("RESOURCE_EXHAUSTED") is Kind.OVERLOADED  # a real overload is still retried


def test_the_controller_gives_up_at_once_on_a_size_refusal_naming_the_limit():
    b = balancer("random", 1.0, 1.0)
    budget = RetryBudget(RetryBudgetConfig())
    policy = RetryPolicy.from_config(RetryConfig(), budget, random.Random(1))
    ctl = AttemptController(Plan(model="ctr", version=1, payload=b"", deadline=10.0), policy,
                            lambda plan, exclude, now: b.pick("ctr", exclude=exclude, now=now))
    send = ctl.start(1.0)
    decision = ctl.on_outcome(Failed(send.endpoint, TOO_LARGE, "SERVER: Received message larger than max "
                                                               "(59621 vs. 32768)", 0.001), 1.1)
    assert isinstance(decision, GiveUp) and isinstance(decision.error, RequestTooLarge)
    text = str(decision.error)
    assert "59621 vs. 32768" in text and "max_message_bytes" in text and "split=True" in text
    assert ctl.attempts == [] and ctl.made == 1  # not listed as a pod's failure, not retried


# -- weights clamped on the way in -------------------------------------------------------------------------

@pytest.mark.parametrize(("published", "used"), [
    (1e308, MAX_WEIGHT), (2e9, MAX_WEIGHT), (12.5, 12.5), (1e-320, MIN_WEIGHT), (5e-324, MIN_WEIGHT),
    (0.0, 0.0), (-1.0, 0.0), (math.nan, 0.0), (math.inf, MAX_WEIGHT),
])
def test_clamp_weight(published, used):
    assert clamp_weight(published) == used


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("weights", [(1e308, 1e308), (1e308, 1.0), (1e-320, 1e-320), (1e308, 5e-324, 3.0)])
def test_every_policy_picks_scatters_and_reports_at_extreme_weights(policy, weights):
    """Before: OverflowError from math.fsum (two at 1e308) or from int(inf) (one huge, one tiny)."""
    b = balancer(policy, *weights)
    picked: Counter = Counter()
    for i in range(50):
        now = 1.0 + i * 0.01
        ep = b.pick("ctr", key=f"k{i}", now=now)
        b.on_start(ep, now)
        b.on_finish(ep, now + 0.001, 0.001, True)
        picked[ep.instance_id] += 1
    assert sum(picked.values()) == 50
    assert sum(s.size for s in b.scatter("ctr", None, 100, now=2.0)) == 100
    stats = b.stats(2.0)
    assert all(MIN_WEIGHT <= e.published_weight <= MAX_WEIGHT for e in stats.endpoints)
    assert all(math.isfinite(e.effective_weight) for e in stats.endpoints)


def test_equal_huge_weights_still_share_equally():
    b = balancer("random", 1e308, 1e300)  # both clamp to MAX_WEIGHT: equals
    picked = Counter(b.pick("ctr", now=1.0).instance_id for _ in range(4000))
    assert 0.45 < picked["p0"] / 4000 < 0.55, picked
