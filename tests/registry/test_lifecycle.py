"""Publisher and watcher against the real 3-node ensemble (a fresh chroot per test)."""

import threading

import pytest

from registry.publisher import Publisher
from registry.records import InstanceRecord, State
from registry.watcher import MembershipWatcher
from registry.zk import RegistryPaths


def rec(i=1, **kw):
    base = dict(service="ctr", id=f"pod-{i}", address="127.0.0.1", port=9000 + i, weight=1.0,
                models={"ctr": [12]})
    base.update(kw)
    return InstanceRecord(**base)


def test_register_update_drain_deregister_each_seen(zk, make_client):
    watcher = MembershipWatcher(make_client(), "ctr").start()
    pub = Publisher(zk, rec(1))
    assert pub.register(timeout=10)
    snap = watcher.wait_for(lambda s: "pod-1" in s.instances)
    first = snap.get("pod-1")
    assert first.state is State.WARMING and first.registration_time_ms > 0
    czxid = zk.exists(pub.path).czxid

    pub.update(weight=7.5, state=State.SERVING, models={"ctr": [12, 13]})
    snap = watcher.wait_for(lambda s: s.get("pod-1") is not None and s.get("pod-1").weight == 7.5)
    assert snap.get("pod-1").models == {"ctr": (12, 13)} and "updated pod-1" in snap.reason

    pub.drain()
    snap = watcher.wait_for(lambda s: s.get("pod-1") is not None and not s.get("pod-1").enabled)
    assert snap.get("pod-1").state is State.DRAINING and snap.routable() == ()
    assert zk.exists(pub.path).czxid == czxid  # setData, no delete/re-create gap

    assert pub.deregister(timeout=10)
    snap = watcher.wait_for(lambda s: "pod-1" not in s.instances)
    assert not snap.held  # a drained member leaves at once, no protection hold
    assert zk.exists(pub.path) is None
    assert pub.stats.writes == 4  # create, set, set, delete
    pub.close()
    watcher.close()


def test_watcher_before_service_exists_and_after_it_is_recreated(zk, make_client):
    paths = RegistryPaths()
    watcher = MembershipWatcher(make_client(), "late").start()
    assert len(watcher.snapshot) == 0 and watcher.snapshot.source == "zookeeper"
    pub = Publisher(zk, rec(1, service="late"))
    pub.register()
    watcher.wait_for(lambda s: "pod-1" in s.instances)
    pub.drain()  # the graceful protocol: drain, let watchers see it, then leave
    watcher.wait_for(lambda s: s.get("pod-1") is not None and not s.get("pod-1").enabled)
    pub.close()
    watcher.wait_for(lambda s: "pod-1" not in s.instances)
    zk.delete(paths.service("late"), recursive=True)
    pub2 = Publisher(zk, rec(2, service="late"))
    pub2.register()
    watcher.wait_for(lambda s: "pod-2" in s.instances)
    pub2.close()
    watcher.close()


def test_many_members_and_watch_coalescing(zk, make_client):
    watcher = MembershipWatcher(make_client(), "ctr").start()
    pubs = [Publisher(zk, rec(i)) for i in range(30)]
    for p in pubs:
        p.register(timeout=None)
    for p in pubs:
        assert p.wait_synced(10)
    snap = watcher.wait_for(lambda s: len(s.instances) == 30)
    assert snap.version <= 30
    for p in pubs:
        p.close()
    watcher.close()


def test_publisher_replaces_a_lingering_node_of_an_old_session(zk, make_client):
    old_session = make_client()
    r = rec(1)
    old_session.create(RegistryPaths().instance("ctr", "pod-1"), b'{"stale": true}', ephemeral=True, makepath=True)
    pub = Publisher(zk, r)
    assert pub.register(timeout=10)
    stat = zk.exists(pub.path)
    assert stat.ephemeralOwner == zk.client_id[0] != old_session.client_id[0]
    assert pub.stats.stale_replaced == 1
    pub.close()


def test_session_expiry_node_returns_and_watcher_never_loses_it(zk, make_client, expire):
    watcher = MembershipWatcher(make_client(), "ctr").start()
    seen = []
    watcher.subscribe(seen.append)
    pub = Publisher(zk, rec(1, state=State.SERVING))
    pub.register()
    watcher.wait_for(lambda s: "pod-1" in s.instances)
    old_session = zk.client_id[0]
    expire(zk)
    assert pub.wait_synced(20)
    assert zk.client_id[0] != old_session
    assert zk.exists(pub.path).ephemeralOwner == zk.client_id[0]
    pub.update(weight=3.0)
    watcher.wait_for(lambda s: s.get("pod-1") is not None and s.get("pod-1").weight == 3.0)
    assert seen and all("pod-1" in s.instances for s in seen if s.version >= seen[0].version)
    pub.close()
    watcher.close()


def test_watcher_survives_its_own_session_expiry(zk, make_client, expire):
    wclient = make_client()
    watcher = MembershipWatcher(wclient, "ctr").start()
    pub = Publisher(zk, rec(1))
    pub.register()
    watcher.wait_for(lambda s: "pod-1" in s.instances)
    resyncs = watcher.resyncs
    expire(wclient)
    watcher.wait_for(lambda s: watcher.resyncs > resyncs and not s.stale, timeout=20)
    pub.update(weight=4.0)  # watches were re-armed in the new session
    watcher.wait_for(lambda s: s.get("pod-1") is not None and s.get("pod-1").weight == 4.0)
    pub.close()
    watcher.close()


def _record_calling_threads(client, seen):
    """Wrap the client's ZooKeeper calls to note which thread makes each one."""
    for name in ("get", "get_async", "get_children", "exists", "create", "set", "delete"):
        real = getattr(client, name)

        def wrapper(*a, _real=real, **kw):
            seen.add(threading.current_thread().name)
            return _real(*a, **kw)

        setattr(client, name, wrapper)


def test_no_zookeeper_io_on_kazoo_threads(zk, make_client, expire):
    """Listeners and watch callbacks only enqueue: every ZooKeeper call of the
    publisher and the watcher happens on their own worker threads, through
    registration, updates, watch events and a session expiry."""
    wclient = make_client()
    seen: set[str] = set()
    _record_calling_threads(zk, seen)
    _record_calling_threads(wclient, seen)
    watcher = MembershipWatcher(wclient, "ctr").start()
    pub = Publisher(zk, rec(1))
    pub.register()
    pub.update(weight=2.0)
    watcher.wait_for(lambda s: s.get("pod-1") is not None and s.get("pod-1").weight == 2.0)
    expire(zk)
    expire(wclient)
    assert pub.wait_synced(20)
    pub.update(weight=3.0)
    watcher.wait_for(lambda s: s.get("pod-1") is not None and s.get("pod-1").weight == 3.0, timeout=20)
    pub.close()
    watcher.close()
    assert seen, "no call recorded"
    assert all(t.startswith(("wei-publisher-", "wei-watcher-")) for t in seen), seen


def test_misuse_is_a_clear_error(zk):
    from registry.errors import NotRegistered, PublisherClosed, RecordError

    pub = Publisher(zk, rec(1))
    with pytest.raises(NotRegistered, match="call register"):
        pub.update(weight=2.0)
    pub.register()
    with pytest.raises(RecordError, match="weight: expected > 0"):
        pub.update(weight=0.0)  # validated in the caller's thread, nothing written
    assert pub.synced
    pub.close()
    with pytest.raises(PublisherClosed):
        pub.register()
