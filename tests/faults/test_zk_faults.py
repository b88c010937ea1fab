"""ZooKeeper hurt under steady load: the leader killed, a server-side session expiry, the whole
ensemble down for 30 s, the ensemble restarted with its data wiped.

ZooKeeper is not in the request path: callers must see no error in any of these. What each case
measures is how long the registry took to be whole again: every pod SERVING in ZooKeeper and the
client's membership fresh (not stale, record for record what ZooKeeper holds).
"""

from __future__ import annotations

import time

from fault_cluster import wait_until
from kazoo.client import KazooClient

from registry.records import State
from registry.testing import expire_session

OUTAGE_S = 30.0


def test_zookeeper_leader_kill(cluster, steady, record):
    load = steady()
    client, ensemble = load.client, cluster.ensemble
    leader = ensemble.leader()
    t0 = time.monotonic()
    ensemble.kill(leader)

    def new_leader() -> bool:
        try:
            return ensemble.leader() is not leader
        except Exception:
            return False

    elected = wait_until(new_leader, "a new leader elected", 60)
    back = wait_until(lambda: cluster.serving() and cluster.in_sync(client),
                      "every pod SERVING and the client in sync", 60) + elected
    ensemble.restart(leader)
    load.succeeded(30)
    errors = load.errors(t0)
    record(len(load.since(t0)), errors, back, "from the kill until the registry is whole, the client in sync",
           elected_s=elected)
    assert not errors, load.errors_seen


def test_server_side_session_expiry(cluster, steady, record):
    """ZooKeeper ends two sessions, for real (a second connection attaches to each and closes it):
    an agent's, whose node goes with it and comes back in its new session, and the client's own."""
    load = steady()
    client, pod = load.client, cluster.pods[2]
    owner = cluster.records()[pod.name][1]
    sessions = pod.agent_sessions()
    t0 = time.monotonic()
    for session in sessions:
        other = KazooClient(cluster.hosts, client_id=session, timeout=10.0)
        other.start(timeout=30)
        other.stop()
        other.close()
    expire_session(client._zk, cluster.hosts)       # returns once the client was told: LOST

    def re_registered() -> bool:
        recs = cluster.records()
        return (recs is not None and pod.name in recs and recs[pod.name][1] != owner
                and recs[pod.name][0].state is State.SERVING)

    agent_back = wait_until(re_registered, "the agent's node back in a new session, SERVING", 60)
    back = wait_until(lambda: cluster.in_sync(client), "the client in sync again", 60) + agent_back
    load.succeeded(30)
    errors = load.errors(t0)
    record(len(load.since(t0)), errors, back, "from the expiry until the node is back and the client in sync",
           agent_node_back_s=agent_back)
    assert not errors, load.errors_seen


def test_zookeeper_outage_30s(cluster, steady, record):
    """Every ZooKeeper member down for 30 s: the client routes on its last snapshot (marked stale,
    every pod still in it) and the pods keep serving; after the restart the agents' sessions come
    back or re-register and the client's membership is fresh again."""
    load = steady()
    client, ensemble = load.client, cluster.ensemble
    t0 = time.monotonic()
    ensemble.stop_all_members()
    stale = wait_until(lambda: client.snapshot.stale, "the client's snapshot marked stale", 30)
    lowest = len(client.snapshot.routable())
    while time.monotonic() - t0 < OUTAGE_S:         # the outage: watch what the client routes on
        lowest = min(lowest, len(client.snapshot.routable()))
        time.sleep(0.05)
    t1 = time.monotonic()
    ensemble.restart_all()
    answering = time.monotonic() - t1
    back = wait_until(lambda: cluster.serving() and cluster.in_sync(client),
                      "every pod SERVING and the client in sync", 120) + answering
    load.succeeded(30)
    errors = load.errors(t0)
    record(len(load.since(t0)), errors, back, "from the restart until the registry is whole, the client in sync",
           ensemble_answering_s=answering, stale_after_s=stale)
    assert lowest == len(cluster.pods), f"the client routed on {lowest} pods during the outage"
    assert not errors, load.errors_seen


def test_zookeeper_restarted_with_wiped_data(cluster, steady, record):
    """Every member loses its data (a redeploy without volumes): the ensemble refuses every old
    session; the agents and the client get new ones, the agents register again, and meanwhile the
    client routes on its last snapshot (its mass-loss protection holds the vanished pods)."""
    load = steady()
    client, ensemble = load.client, cluster.ensemble
    t0 = time.monotonic()
    ensemble.wipe()
    answering = time.monotonic() - t0
    cluster.reconnect_admin()
    back = wait_until(lambda: cluster.serving() and cluster.in_sync(client),
                      "every pod registered again and the client in sync", 120) + answering
    load.succeeded(30)
    errors = load.errors(t0)
    record(len(load.since(t0)), errors, back, "from the wipe until the registry is whole, the client in sync",
           ensemble_answering_s=answering)
    assert not errors, load.errors_seen
