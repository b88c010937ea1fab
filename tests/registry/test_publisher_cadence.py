"""The publisher's minimum interval between weight writes, on the real ensemble (issue 11, part 4).

A weight change alone waits for ``min_write_interval_s`` after the last write
and goes out as one write with whatever came meanwhile; a change clients must
act on (drain) is written at once, held weights and all.
"""

from __future__ import annotations

from registry.publisher import Publisher, PublisherConfig
from registry.records import InstanceRecord, State, decode_instance


def rec() -> InstanceRecord:
    return InstanceRecord(service="ctr", id="pod-1", address="127.0.0.1", port=9001, weight=1.0, models={"ctr": [1]})


def test_weight_changes_wait_and_coalesce_but_a_drain_goes_at_once(zk):
    pub = Publisher(zk, rec(), config=PublisherConfig(min_write_interval_s=600.0, recovery=None))
    try:
        assert pub.register(timeout=10)
        for w in range(2, 12):
            pub.update(weight=float(w))
        assert not pub.wait_synced(0.5)  # held: 600 s have not passed since the create
        assert pub.stats.sets == 0 and decode_instance(zk.get(pub.path)[0]).weight == 1.0
        pub.drain()
        assert pub.wait_synced(10)  # a drain is not held
        node = decode_instance(zk.get(pub.path)[0])
        assert node.state is State.DRAINING and not node.enabled
        assert pub.stats.sets == 1 and pub.stats.coalesced == 10  # ten weights never written alone
    finally:
        pub.close()


def test_a_held_weight_is_written_once_its_interval_has_passed(zk):
    pub = Publisher(zk, rec(), config=PublisherConfig(min_write_interval_s=0.5, recovery=None))
    try:
        assert pub.register(timeout=10)
        pub.update(weight=3.0)
        pub.update(weight=4.0)
        assert pub.wait_synced(10)
        assert decode_instance(zk.get(pub.path)[0]).weight == 4.0
    finally:
        pub.close()
