from registry.publisher import Publisher
from registry.records import InstanceRecord, State
from registry.watcher import MembershipWatcher


def test_register_seen(zk, make_client):
    rec = InstanceRecord(service="ctr", id="a", address="127.0.0.1", port=9000, weight=2.0)
    watcher = MembershipWatcher(make_client(), "ctr").start()
    with Publisher(zk, rec) as pub:
        snap = watcher.wait_for(lambda s: "a" in s.instances)
        assert snap.get("a").weight == 2.0
        pub.update(weight=5.0, state=State.SERVING)
        snap = watcher.wait_for(lambda s: s.get("a") and s.get("a").weight == 5.0)
    watcher.close()
