"""The watch book and the publisher's write hold, as tables: no I/O, an injected random source."""

from __future__ import annotations

import random

import pytest

from registry.publishing import hold_s
from registry.records import Capacity, InstanceRecord, State
from registry.watchset import RefreshConfig, WatchBook


def book(**kw) -> WatchBook:
    return WatchBook(RefreshConfig(**kw), rng=random.Random(7))


def test_without_a_filter_every_read_watches_and_nothing_is_refreshed():
    b = book()
    assert b.watch_on_read("a", known=False) and b.watch_on_read("a", known=True)
    b.read("a", watched=True, now=0.0)
    assert b.armed == {"a"} and b.next_due() is None and b.to_arm(["a", "b"]) == ["b"]


def test_a_filter_watches_only_known_wanted_members_and_schedules_the_rest():
    b = book(period_s=60.0, jitter=0.5)
    b.choose(frozenset(), ())
    assert not b.watch_on_read("a", known=False)  # not judged yet: read without a watch
    for m in "abc":
        b.read(m, watched=False, now=0.0)
    assert b.choose(["a", "z"], known={"a", "b", "c"}) == {"a"}  # only known members count
    assert b.watch_on_read("a", known=True) and not b.watch_on_read("b", known=True)
    assert b.to_arm("abc") == ["a"]
    b.read("a", watched=True, now=1.0)
    assert b.to_arm("abc") == [] and b.due(59.9) == [] and 60.0 <= b.next_due() <= 90.0
    assert b.due(91.0) == ["b", "c"]


def test_a_dropped_watch_fires_once_and_is_then_refreshed_not_rearmed():
    b = book()
    b.read("a", watched=True, now=0.0)
    b.choose(["b"], known={"a", "b"})
    assert b.armed == {"a"}  # cannot be taken back
    assert b.fired("a") is True  # no longer wanted
    b.read("a", watched=False, now=1.0)
    assert "a" not in b.armed and b.next_due() is not None and b.to_arm("ab") == ["b"]


def test_a_lost_connection_drops_every_watch():
    b = book()
    b.read("a", watched=True, now=0.0)
    b.reset()
    assert b.to_arm(["a"]) == ["a"]


@pytest.mark.parametrize(("unwatched", "period"), [(10, 60.0), (980, 980.0)])
def test_the_refresh_period_keeps_each_client_under_its_read_budget(unwatched, period):
    assert RefreshConfig(period_s=60.0, max_reads_per_s=1.0).period(unwatched) == period


@pytest.mark.parametrize("kw", [{"period_s": 0}, {"max_reads_per_s": 0}, {"jitter": 1.5}])
def test_refresh_config_refuses_nonsense(kw):
    with pytest.raises(ValueError):
        RefreshConfig(**kw)


REC = InstanceRecord(service="ctr", id="p1", address="10.0.0.1", port=1, weight=1.0, models={"ctr": [1]})


@pytest.mark.parametrize(("desired", "since", "held"), [
    (REC.with_changes(weight=2.0, updated_ms=5), 4.0, 11.0),  # weight alone, 4 s after: 11 s more
    (REC.with_changes(capacity=Capacity(cpu_cores=8)), 0.0, 15.0),
    (REC.with_changes(weight=2.0), 15.0, 0.0),  # due
    (REC.with_changes(state=State.SERVING, weight=2.0), 1.0, 0.0),  # clients act on state: at once
    (REC.with_changes(enabled=False, state=State.DRAINING, weight=0.0), 1.0, 0.0),
    (REC.with_changes(models={"ctr": [1, 2]}), 1.0, 0.0),
])
def test_only_a_weight_or_capacity_change_waits_for_the_minimum_interval(desired, since, held):
    assert hold_s(REC, desired, since, 15.0) == held


def test_no_interval_or_no_previous_write_never_holds():
    assert hold_s(REC, REC.with_changes(weight=2.0), 0.0, 0.0) == 0.0
    assert hold_s(None, REC, 0.0, 15.0) == 0.0


def test_the_next_refresh_time_stays_the_minimum_through_any_sequence_of_reads_and_forgets():
    """``next_due`` is kept, not recomputed on each turn of the watcher's loop: check it against
    the brute-force minimum after every one of many random operations."""
    rng = random.Random(11)
    b = book(period_s=10.0, jitter=1.0)
    b.choose(frozenset("ab"), "abcdefgh")
    for step in range(2_000):
        m, now = rng.choice("abcdefgh"), step * 0.1
        op = rng.random()
        if op < 0.5:
            b.read(m, watched=rng.random() < 0.2, now=now)
        elif op < 0.7:
            b.forget(m)
        elif op < 0.8:
            b.fired(m)
        else:
            due = b.due(now)
            assert due == sorted(x for x, t in b._due.items() if t <= now and x not in b.armed)
            for x in due:
                b.read(x, watched=False, now=now)
        assert b.next_due() == min(b._due.values(), default=None)


def test_to_arm_with_a_filter_is_the_wanted_known_members_without_a_watch():
    b = book()
    b.choose(frozenset("abc"), "abcd")
    b.read("a", watched=True, now=0.0)
    assert b.to_arm({"a": 1, "b": 1, "d": 1}) == ["b"]  # c left, d is not wanted, a is armed
