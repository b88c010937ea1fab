"""The mass-loss reducer, with a fake clock (plain numbers)."""

from registry.membership import MembershipReducer, Observation, Protection
from registry.records import InstanceRecord, State


def r(i, **kw):
    base = dict(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=1.0, state=State.SERVING)
    base.update(kw)
    return InstanceRecord(**base)


def obs(*recs, rejected=None):
    return Observation(instances={x.id: x for x in recs}, rejected=rejected or {})


RED = MembershipReducer("ctr", Protection(max_loss_fraction=0.5, hold_s=30.0))


def test_adds_and_updates_bump_version_and_say_why():
    s = RED.observe(RED.initial(), obs(r(1), r(2)), now=0.0)
    assert s.snapshot.version == 1 and list(s.snapshot.instances) == ["p1", "p2"]
    assert "added p1, p2" in s.snapshot.reason
    s2 = RED.observe(s, obs(r(1, weight=3.0), r(2)), now=1.0)
    assert s2.snapshot.version == 2 and "updated p1" in s2.snapshot.reason
    s3 = RED.observe(s2, obs(r(1, weight=3.0), r(2)), now=2.0)
    assert s3.snapshot.version == 2  # nothing changed: same version
    assert s3.snapshot.synced_at == 2.0


def test_losing_half_is_applied_at_once():
    s = RED.observe(RED.initial(), obs(r(1), r(2)), now=0.0)
    s = RED.observe(s, obs(r(1)), now=1.0)
    assert list(s.snapshot.instances) == ["p1"] and not s.snapshot.held


def test_mass_loss_is_held_then_accepted_after_the_window():
    s = RED.observe(RED.initial(), obs(r(1), r(2), r(3), r(4)), now=0.0)
    s = RED.observe(s, obs(r(1)), now=10.0)
    assert set(s.snapshot.instances) == {"p1", "p2", "p3", "p4"}
    assert s.snapshot.held == {"p2", "p3", "p4"}
    assert s.hold_deadline == 40.0
    # another change meanwhile applies, the hold keeps its start time
    s = RED.observe(s, obs(r(1, weight=9.0), r(5)), now=20.0)
    assert s.snapshot.get("p1").weight == 9.0 and "p5" in s.snapshot.instances
    assert s.snapshot.held == {"p2", "p3", "p4"}
    assert RED.tick(s, now=39.9) is s
    s = RED.tick(s, now=40.0)
    assert set(s.snapshot.instances) == {"p1", "p5"} and not s.snapshot.held
    assert "protection expired" in s.snapshot.reason


def test_a_loss_spread_over_several_batches_is_caught():
    """Members vanishing one watch batch at a time count together within the window."""
    s = RED.observe(RED.initial(), obs(r(1), r(2), r(3), r(4)), now=0.0)
    s = RED.observe(s, obs(r(1), r(2), r(3)), now=1.0)   # 1/4 lost: accepted
    s = RED.observe(s, obs(r(1), r(2)), now=2.0)         # 2/4: accepted (not more than half)
    assert set(s.snapshot.instances) == {"p1", "p2"} and not s.snapshot.held
    s = RED.observe(s, obs(r(1)), now=3.0)               # 3/4 within 30 s: held
    assert set(s.snapshot.instances) == {"p1", "p2"} and s.snapshot.held == {"p2"}
    assert "lost p2: held" in s.snapshot.reason
    s = RED.observe(s, obs(), now=4.0)
    assert s.snapshot.held == {"p1", "p2"} and s.hold_deadline == 33.0
    s = RED.tick(s, now=33.0)
    assert s.snapshot.held == {"p1"} and set(s.snapshot.instances) == {"p1"}
    s = RED.tick(s, now=34.0)
    assert len(s.snapshot) == 0 and s.hold_deadline is None


def test_losses_older_than_the_window_do_not_count():
    s = RED.observe(RED.initial(), obs(r(1), r(2), r(3), r(4)), now=0.0)
    s = RED.observe(s, obs(r(1), r(2), r(3)), now=1.0)
    s = RED.observe(s, obs(r(1), r(2)), now=2.0)
    s = RED.observe(s, obs(r(1)), now=40.0)  # the first two losses left the window: 1/2 is not a mass loss
    assert set(s.snapshot.instances) == {"p1"} and not s.snapshot.held


def test_hold_ends_when_members_come_back():
    s = RED.observe(RED.initial(), obs(r(1)), now=0.0)
    s = RED.observe(s, obs(), now=1.0)  # session expired: the only member vanished
    assert set(s.snapshot.instances) == {"p1"} and s.snapshot.held == {"p1"}
    s = RED.observe(s, obs(r(1, weight=2.0)), now=2.0)  # re-registered
    assert s.snapshot.get("p1").weight == 2.0 and not s.snapshot.held and not s.held
    assert s.hold_deadline is None


def test_drained_members_leave_without_protection():
    s = RED.observe(RED.initial(), obs(r(1), r(2), r(3)), now=0.0)
    drained = [r(i, enabled=False, state=State.DRAINING, weight=0.0) for i in (2, 3)]
    s = RED.observe(s, obs(r(1), *drained), now=1.0)
    s = RED.observe(s, obs(r(1)), now=2.0)
    assert list(s.snapshot.instances) == ["p1"] and not s.snapshot.held


def test_protection_can_be_disabled():
    red = MembershipReducer("ctr", Protection(enabled=False))
    s = red.observe(red.initial(), obs(r(1), r(2)), now=0.0)
    s = red.observe(s, obs(), now=1.0)
    assert len(s.snapshot) == 0


def test_stale_marking_keeps_members_and_clears_on_next_observation():
    s = RED.observe(RED.initial(), obs(r(1)), now=0.0)
    st = RED.mark_stale(s, now=5.0, why="ZooKeeper lost")
    assert st.snapshot.stale and st.snapshot.staleness(now=8.0) == 3.0
    assert st.snapshot.version == s.snapshot.version + 1 and len(st.snapshot) == 1
    assert RED.mark_stale(st, now=6.0, why="again") is st
    back = RED.observe(st, obs(r(1)), now=9.0)
    assert not back.snapshot.stale and back.snapshot.staleness(now=10.0) == 0.0


def test_rejected_nodes_are_reported():
    s = RED.observe(RED.initial(), obs(r(1), rejected={"junk": "record: expected UTF-8 JSON"}), now=0.0)
    assert s.snapshot.rejected == {"junk": "record: expected UTF-8 JSON"}
    assert list(s.snapshot.instances) == ["p1"]


def test_routable_filters_by_model_and_version():
    s = RED.observe(RED.initial(), obs(r(1, models={"ctr": [12]}), r(2, models={"ctr": [13]}),
                                       r(3, models={"ctr": [13]}, enabled=False)), now=0.0)
    assert [x.id for x in s.snapshot.routable("ctr", 13)] == ["p2"]
    assert [x.id for x in s.snapshot.routable("ctr")] == ["p1", "p2"]
    assert s.snapshot.routable("other") == ()
