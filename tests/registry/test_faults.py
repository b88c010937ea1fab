"""Faults on real ZooKeeper: leader killed, whole ensemble down, garbage nodes, bad ACLs."""

import os
import time

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from registry.errors import ZooKeeperUnavailable
from registry.publisher import Publisher
from registry.records import InstanceRecord, State, encode_instance
from registry.service_config import ConfigStore, ConfigWatcher
from registry.testing import ZooKeeperEnsemble
from registry.watcher import MembershipWatcher, WatcherConfig
from registry.zk import RegistryPaths, ZkSettings, connect


def rec(i=1, **kw):
    base = dict(service="ctr", id=f"pod-{i}", address="127.0.0.1", port=9000 + i, weight=1.0,
                state=State.SERVING, models={"ctr": [12]})
    base.update(kw)
    return InstanceRecord(**base)


def test_leader_killed_publisher_and_watcher_carry_on(zk_ensemble, zk, make_client):
    watcher = MembershipWatcher(make_client(), "ctr").start()
    pubs = [Publisher(zk, rec(i)) for i in range(3)]
    for p in pubs:
        assert p.register()
    watcher.wait_for(lambda s: len(s.instances) == 3)
    leader = zk_ensemble.leader()
    zk_ensemble.kill(leader)
    try:
        pubs[0].update(weight=9.0)
        pubs[1].drain()
        snap = watcher.wait_for(
            lambda s: s.get("pod-0") is not None and s.get("pod-0").weight == 9.0
            and not s.get("pod-1").enabled, timeout=30)
        assert set(snap.instances) == {"pod-0", "pod-1", "pod-2"}
        assert pubs[2].synced
    finally:
        zk_ensemble.restart(leader)
    pubs[2].update(weight=5.0)
    watcher.wait_for(lambda s: s.get("pod-2").weight == 5.0, timeout=30)
    for p in pubs:
        p.close()
    watcher.close()


@pytest.fixture
def own_ensemble():
    with ZooKeeperEnsemble(3) as zk:
        yield zk


def test_whole_ensemble_down_snapshot_kept_stale_and_file_boot(own_ensemble, tmp_path):
    settings = ZkSettings(hosts=own_ensemble.hosts, session_timeout_s=4.0)
    pub_client, watch_client = connect(settings), connect(settings)
    snapfile = tmp_path / "ctr.membership.json"
    watcher = MembershipWatcher(watch_client, "ctr", config=WatcherConfig(snapshot_file=snapfile)).start()
    pubs = [Publisher(pub_client, rec(i)) for i in range(2)]
    for p in pubs:
        p.register()
    watcher.wait_for(lambda s: len(s.instances) == 2)
    assert snapfile.exists()

    own_ensemble.stop_all_members()
    snap = watcher.wait_for(lambda s: s.stale, timeout=30)
    assert set(snap.instances) == {"pod-0", "pod-1"}
    assert watcher.staleness() >= 0.0
    assert "serving last good snapshot" in snap.reason

    # A new process while ZooKeeper is down: starts from the file.
    late_client = connect(settings, wait=False)
    late = MembershipWatcher(late_client, "ctr", config=WatcherConfig(snapshot_file=snapfile)).start(timeout=5)
    assert late.snapshot.source == "file" and set(late.snapshot.instances) == {"pod-0", "pod-1"}
    assert late.snapshot.stale and late.staleness() > 0

    own_ensemble.restart_all()
    # Sessions (4 s) outlived the outage or not: either way both watchers converge on the truth.
    for p in pubs:
        assert p.wait_synced(30)
    pubs[0].update(weight=6.0)
    for w in (watcher, late):
        snap = w.wait_for(lambda s: not s.stale and s.get("pod-0") is not None
                          and s.get("pod-0").weight == 6.0, timeout=30)
        assert set(snap.instances) == {"pod-0", "pod-1"} and snap.source == "zookeeper"
    for p in pubs:
        p.close()
    for w in (watcher, late):
        w.close()
    for c in (pub_client, watch_client, late_client):
        c.stop()
        c.close()


def test_garbage_nodes_are_skipped_and_counted(zk, make_client):
    paths = RegistryPaths()
    good = Publisher(zk, rec(1))
    good.register()
    base = paths.service("ctr")
    zk.create(f"{base}/random", os.urandom(512))
    zk.create(f"{base}/wrongjson", b'{"name": "ctr", "id": "wrongjson", "port": "eighty"}')
    zk.create(f"{base}/huge", b"{" + b" " * 900_000 + b"}")
    zk.create(f"{base}/empty", b"")
    zk.create(f"{base}/python-repr", repr(rec(9, id="python-repr")).encode())  # not JSON
    unknown_schema = (b'{"name":"ctr","id":"newer","address":"h","port":1,"payload":'
                      b'{"@class":"java.util.LinkedHashMap","schema":2,"weight":1}}')
    zk.create(f"{base}/newer", unknown_schema)
    zk.create(f"{base}/impostor", b'{"name":"ctr","id":"pod-1","address":"h","port":1,"payload":'
                                  b'{"@class":"java.util.LinkedHashMap","schema":1,"weight":1}}')
    watcher = MembershipWatcher(make_client(), "ctr").start()
    snap = watcher.wait_for(lambda s: len(s.rejected) == 7)
    assert list(snap.instances) == ["pod-1"]
    assert "schema" in snap.rejected["newer"] and "bytes" in snap.rejected["huge"]
    assert "id/name" in snap.rejected["impostor"]
    assert watcher.rejected_total == 7
    # the good member keeps updating; a garbage node fixed later is picked up
    good.update(weight=2.0)
    watcher.wait_for(lambda s: s.get("pod-1").weight == 2.0)
    zk.set(f"{base}/newer", encode_instance(rec(7, id="newer")))
    snap = watcher.wait_for(lambda s: "newer" in s.instances)
    assert "newer" not in snap.rejected
    good.close()
    watcher.close()


def test_garbage_config_keeps_last_good(zk, make_client):
    store = ConfigStore(zk)
    store.set_split("ctr", "ctr", {12: 90, 13: 10})
    watcher = ConfigWatcher(make_client(), "ctr").start()
    assert watcher.config.splits["ctr"] == {12: 90.0, 13: 10.0}
    zk.set(RegistryPaths().config("ctr"), b"\x00garbage")
    snap = watcher.wait_for(lambda s: s.error is not None)
    assert snap.config.splits["ctr"] == {12: 90.0, 13: 10.0} and "UTF-8 JSON" in snap.error
    store.set_split("ctr", "ctr", {12: 50, 13: 50})  # a garbage node is replaced by a valid write
    watcher.wait_for(lambda s: s.error is None and s.config.splits["ctr"][13] == 50.0)
    watcher.close()


def test_config_change_reaches_watcher_within_a_second(zk, make_client):
    watcher = ConfigWatcher(make_client(), "svc").start()
    assert not watcher.snapshot.present and watcher.config.balancer.policy == "p2c_jsed"
    t0 = time.monotonic()
    ConfigStore(zk).set_split("svc", "ctr", {1: 100})
    watcher.wait_for(lambda s: s.present and s.config.pick_version("ctr", 0.5) == 1, timeout=1.0)
    assert time.monotonic() - t0 < 5  # generous; the figure is measured in bench/
    watcher.close()


def test_digest_acl_writers_authenticate_world_reads(zk_settings, make_client):
    writer = make_client(auth="ops:s3cret")
    pub = Publisher(writer, rec(1), acl=None)
    assert pub.register()
    anonymous = make_client()
    data, _ = anonymous.get(pub.path)
    assert b'"pod-1"' in data
    with pytest.raises(NoAuthError):
        anonymous.set(pub.path, b"{}")
    with pytest.raises(NoAuthError):
        anonymous.delete(pub.path)
    intruder = make_client(auth="ops:wrong")
    with pytest.raises(NoAuthError):
        intruder.set(pub.path, b"{}")
    watcher = MembershipWatcher(anonymous, "ctr").start()
    assert "pod-1" in watcher.snapshot.instances
    watcher.close()
    pub.close()


def test_unreachable_zookeeper_is_a_clear_error():
    with pytest.raises(ZooKeeperUnavailable, match="cannot reach ZooKeeper at 127.0.0.1:1 within 1s"):
        connect(ZkSettings(hosts="127.0.0.1:1", connect_timeout_s=1.0))


def test_watcher_without_zookeeper_or_file_stays_empty_and_alive():
    client = KazooClient("127.0.0.1:1")
    client.start_async()
    watcher = MembershipWatcher(client, "ctr").start(timeout=0.5)
    assert watcher.snapshot.source == "empty" and len(watcher.snapshot) == 0
    watcher.close()
    client.stop()
    client.close()
