"""``weiclient_membership_staleness_seconds``: a real client exports how long its membership has been
possibly out of date (0 while ZooKeeper answers; since the file was synced when it routes on a snapshot
file because ZooKeeper is unreachable), and the series leaves with the client."""

from __future__ import annotations

import socket

from prometheus_client import REGISTRY

from weiclient import ClientConfig, WeiClient

NAME = "weiclient_membership_staleness_seconds"


def staleness(client: WeiClient) -> float | None:
    values = [s.value for m in REGISTRY.collect() if m.name == NAME for s in m.samples
              if s.labels == {"service": client.service, "client": client._metrics.name}]
    assert len(values) <= 1, values
    return values[0] if values else None


def unreachable() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed


def test_staleness_is_zero_while_live_and_grows_on_a_snapshot_file(cluster, zk_settings, tmp_path):
    cluster.add()
    path = tmp_path / "members.json"
    with WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(snapshot_file=path)) as live:
        live._watcher.wait_for(lambda s: len(s.routable()) == 1)
        assert staleness(live) == 0.0
    assert staleness(live) is None  # closed: its series is gone
    with WeiClient(unreachable(), "ctr", config=ClientConfig(snapshot_file=path, start_timeout_s=1.0)) as client:
        assert client.snapshot.source == "file" and client.snapshot.stale
        before = client.stats().staleness_s
        exported = staleness(client)
        assert exported is not None and exported >= before > 0
