"""The watch filter on the real 3-node ensemble: 50 watchers over 300 registered pods, each watching its subset.

Counted by the servers themselves (the four-letter words ``wchc`` for data
watches by session, ``mntr`` for all watches): each watcher's session holds
data watches on its subset's members only, plus the children watch and the
config watch, while its snapshot still holds all 300
records. Ordering is ZooKeeper's: a session sees notifications in the order
of the writes, so once a watcher has seen a later write to a member it
watches, it has been told of every earlier one it would ever be told of.
"""

from __future__ import annotations

import pytest
from kazoo.client import KazooClient

from registry.records import InstanceRecord, State, encode_instance
from registry.service_config import ConfigWatcher
from registry.watcher import MembershipWatcher, WatcherConfig
from registry.zk import RegistryPaths

PODS = 300
WATCHERS = 50
SUBSET = 20
MARKER = "p000"  # in every subset: a write to it tells when every watcher has caught up
UNWATCHED = [f"p{i:03d}" for i in range(250, PODS)]  # in no subset


def record(i: int, weight: float = 1.0) -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i:03d}", address="10.0.0.1", port=10000 + i, weight=weight,
                          state=State.SERVING, models={"ctr": [1]})


def subset(w: int) -> frozenset[str]:
    """The marker and 19 of p001..p249: overlapping subsets, none touching p250..p299."""
    return frozenset({MARKER} | {f"p{1 + (w * 5 + j) % 249:03d}" for j in range(SUBSET - 1)})


def only(ids: frozenset[str]):
    return lambda records: [i for i in records if i in ids]


@pytest.fixture
def fleet(zk: KazooClient, make_client, zk_ensemble):
    """300 ephemeral instance nodes, and 50 watchers (each on its own session) with a config watcher beside."""
    paths = RegistryPaths()
    zk.ensure_path(paths.service("ctr"))
    for result in [zk.create_async(paths.instance("ctr", f"p{i:03d}"), encode_instance(record(i)), ephemeral=True)
                   for i in range(PODS)]:
        result.get(timeout=30)
    child_watches = zk_ensemble.watch_count() - zk_ensemble.watch_totals()[2]
    watchers, configs, clients = [], [], []
    for w in range(WATCHERS):
        client = make_client()
        clients.append(client)
        watchers.append(MembershipWatcher(client, "ctr", config=WatcherConfig(recovery=None),
                                          watch_filter=only(subset(w))).start(timeout=None))
        configs.append(ConfigWatcher(client, "ctr").start(timeout=None))
    for watcher in watchers:
        watcher.wait_for(lambda s: len(s) == PODS, timeout=60)
    assert zk_ensemble.watch_count() - zk_ensemble.watch_totals()[2] - child_watches == WATCHERS  # one each
    yield watchers, clients
    for watcher in watchers + configs:
        watcher.close()


def set_weight(zk: KazooClient, i: int, weight: float) -> None:
    zk.set(RegistryPaths().instance("ctr", f"p{i:03d}"), encode_instance(record(i, weight)))


def catch_up(zk: KazooClient, watchers, weight: float) -> None:
    """Write the marker; return once every watcher has seen that write."""
    set_weight(zk, 0, weight)
    for watcher in watchers:
        watcher.wait_for(lambda s: s.get(MARKER).weight == weight, timeout=30)


def data_watches(zk_ensemble, zk_chroot: str, session: int) -> tuple[set[str], set[str]]:
    """(watched instance ids, other watched paths) of one session, as the servers count them."""
    service = zk_chroot + RegistryPaths().service("ctr")
    paths = zk_ensemble.watches().get(session, set())
    return ({p.rsplit("/", 1)[1] for p in paths if p.startswith(service + "/")},
            {p for p in paths if not p.startswith(service + "/")})


def test_each_watcher_holds_only_its_subsets_watches_and_knows_every_member(fleet, zk, zk_ensemble, zk_chroot):
    watchers, clients = fleet
    service = zk_chroot + RegistryPaths().service("ctr")
    config = zk_chroot + RegistryPaths().config("ctr")
    watches = zk_ensemble.watches()  # data watches by session (wchc); the fixture counted the children watches
    for w, (watcher, client) in enumerate(zip(watchers, clients, strict=True)):
        held = watches.get(client.client_id[0], set())
        expected = {f"{service}/{i}" for i in subset(w)} | {config}  # + the children watch (see fleet)
        assert held == expected, f"watcher {w}: extra {sorted(held - expected)}, missing {sorted(expected - held)}"
        assert watcher.watched == subset(w)
        snap = watcher.snapshot
        assert len(snap) == PODS and snap.get("p299").port == 10299  # unwatched members are known too


def test_a_subset_members_write_notifies_its_watchers_only_and_others_cost_nothing(fleet, zk):
    watchers, _ = fleet
    before = [w.stats.data_events for w in watchers]
    reads = [w.stats.reads for w in watchers]
    for i in (250, 260, 299):  # in no subset: no notification anywhere
        set_weight(zk, i, 5.0)
    set_weight(zk, 7, 3.0)  # p007 is in a few subsets
    catch_up(zk, watchers, 2.0)
    holders = [w for w in range(WATCHERS) if "p007" in subset(w)]
    assert 0 < len(holders) < WATCHERS
    for w in holders:
        assert watchers[w].snapshot.get("p007").weight == 3.0
    for w, watcher in enumerate(watchers):
        told = watcher.stats.data_events - before[w]
        assert told == 1 + (w in holders), f"watcher {w} was told of {told} writes"
        assert watcher.stats.reads - reads[w] == told  # one read per notification, re-arming the watch
        assert watcher.snapshot.get("p250").weight == 1.0  # not re-read: refreshed later, without a watch


def test_a_new_filter_arms_its_members_and_drops_the_old_ones_after_they_fire_once(fleet, zk, zk_ensemble,
                                                                                   zk_chroot):
    watchers, clients = fleet
    watcher, session = watchers[0], clients[0].client_id[0]
    old, new = subset(0), frozenset({MARKER} | {f"p{i:03d}" for i in range(200, 219)})
    watcher.set_watch_filter(only(new))
    catch_up(zk, watchers, 4.0)  # the refilter was queued before the marker's notification
    assert new <= watcher.watched
    ids, _ = data_watches(zk_ensemble, zk_chroot, session)
    assert ids == new | old  # the old ones cannot be taken back: they linger until they fire

    stats = watcher.stats
    dropped, reads = stats.dropped_fires, stats.watched_reads
    for member in sorted(old - new):
        set_weight(zk, int(member[1:]), 6.0)  # each fires once more, is read without a watch
    catch_up(zk, watchers, 5.0)
    assert stats.dropped_fires - dropped == len(old - new)
    assert stats.watched_reads - reads == 1  # only the marker was re-armed
    assert all(watcher.snapshot.get(m).weight == 6.0 for m in old - new)
    ids, _ = data_watches(zk_ensemble, zk_chroot, session)
    assert ids == new and watcher.watched == new

    events = stats.data_events
    for member in sorted(old - new):
        set_weight(zk, int(member[1:]), 7.0)  # no longer watched: no notification
    catch_up(zk, watchers, 6.0)
    assert stats.data_events - events == 1  # the marker alone


def test_without_a_filter_every_member_is_watched(zk, make_client, zk_ensemble, zk_chroot):
    paths = RegistryPaths()
    for i in range(30):
        zk.create(paths.instance("ctr", f"p{i:03d}"), encode_instance(record(i)), ephemeral=True, makepath=True)
    client = make_client()
    watcher = MembershipWatcher(client, "ctr", config=WatcherConfig(recovery=None)).start()
    try:
        watcher.wait_for(lambda s: len(s) == 30)
        ids, others = data_watches(zk_ensemble, zk_chroot, client.client_id[0])
        assert len(ids) == 30 and not others
        watcher.set_watch_filter(only(frozenset({"p001"})))  # from all to one: the rest lapse as they fire
        set_weight(zk, 2, 9.0)
        watcher.wait_for(lambda s: s.get("p002").weight == 9.0)
        set_weight(zk, 1, 9.0)
        watcher.wait_for(lambda s: s.get("p001").weight == 9.0)
        assert watcher.watched == {f"p{i:03d}" for i in range(30)} - {"p002"}
    finally:
        watcher.close()


def test_a_storm_of_joins_is_listed_at_most_once_per_relist_delay(zk, make_client):
    """150 pods join back to back: the watcher lists the children at most once per ``relist_delay_s``
    (plus the first list), however often the children watch fires, and still sees every pod."""
    paths = RegistryPaths()
    zk.ensure_path(paths.service("ctr"))
    delay = 0.2
    watcher = MembershipWatcher(make_client(), "ctr", config=WatcherConfig(recovery=None, relist_delay_s=delay))
    watcher.start(timeout=10)
    try:
        listed0, t0 = watcher.stats.relists, watcher._clock()
        for i in range(150):
            zk.create(paths.instance("ctr", f"p{i:03d}"), encode_instance(record(i)), ephemeral=True)
        watcher.wait_for(lambda s: len(s) == 150, timeout=30)
        elapsed = watcher._clock() - t0
        lists = watcher.stats.relists - listed0
        assert watcher.stats.child_events >= lists >= 1
        assert lists <= 1 + elapsed / delay, (lists, elapsed)
    finally:
        watcher.close()
