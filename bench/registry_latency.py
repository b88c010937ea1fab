"""Registry latency on a real 3-node ZooKeeper ensemble (loopback).

1. Update -> snapshot: a Publisher changes the weight; how long until a
   MembershipWatcher publishes a snapshot carrying it. Measured side by side
   with a raw kazoo baseline (``set`` -> ``DataWatch`` callback on the same
   node kind), interleaved in one run, printed as medians, p99s and the ratio.
2. Session expiry recovery: the publisher's session is expired on the server;
   how long until the node exists again under the new session, and until a
   watcher's snapshot carries the new registration.

    .venv/bin/python bench/registry_latency.py [--updates 1000] [--expiries 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from registry.publisher import Publisher  # noqa: E402
from registry.records import InstanceRecord, State  # noqa: E402
from registry.testing import ZooKeeperEnsemble, expire_session  # noqa: E402
from registry.watcher import MembershipWatcher  # noqa: E402
from registry.zk import ZkSettings, connect  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_updates(hosts: str, n: int, progress: Progress) -> tuple[list[float], list[float]]:
    settings = ZkSettings(hosts=hosts)
    pub_client, watch_client = connect(settings), connect(settings)
    pub = Publisher(pub_client, InstanceRecord(service="bench", id="pod-0", address="127.0.0.1",
                                               port=9000, weight=1.0, state=State.SERVING))
    pub.register()
    watcher = MembershipWatcher(watch_client, "bench").start()
    watcher.wait_for(lambda s: "pod-0" in s.instances)

    target = {"w": 0.0}
    got = threading.Event()

    def on_snapshot(snap):
        r = snap.get("pod-0")
        if r is not None and r.weight == target["w"]:
            got.set()

    watcher.subscribe(on_snapshot)

    raw_path = "/bench-raw/node"
    pub_client.ensure_path("/bench-raw")
    pub_client.create(raw_path, b"0", ephemeral=True)
    raw_target = {"v": b""}
    raw_got = threading.Event()

    @watch_client.DataWatch(raw_path)
    def _raw(data, stat):  # kazoo's own recipe, callback does nothing slow
        if data == raw_target["v"]:
            raw_got.set()

    ours, raw = [], []
    task = progress.add_task("update -> snapshot", total=n)
    for i in range(1, n + 1):
        target["w"] = float(i + 1)
        got.clear()
        t0 = time.perf_counter()
        pub.update(weight=float(i + 1))
        if not got.wait(10):
            raise RuntimeError(f"update {i} not seen")
        ours.append(time.perf_counter() - t0)

        raw_target["v"] = str(i).encode()
        raw_got.clear()
        t0 = time.perf_counter()
        pub_client.set(raw_path, raw_target["v"])
        if not raw_got.wait(10):
            raise RuntimeError(f"raw update {i} not seen")
        raw.append(time.perf_counter() - t0)
        progress.advance(task)
    pub.close()
    watcher.close()
    for c in (pub_client, watch_client):
        c.stop()
        c.close()
    return ours, raw


def bench_expiry(hosts: str, n: int, progress: Progress) -> tuple[list[float], list[float], int]:
    """Returns (to node re-created, to an update flowing end to end again, snapshots missing the pod)."""
    settings = ZkSettings(hosts=hosts, session_timeout_s=4.0)
    pub_client, watch_client = connect(settings), connect(settings)
    pub = Publisher(pub_client, InstanceRecord(service="expiry", id="pod-0", address="127.0.0.1",
                                               port=9000, weight=1.0, state=State.SERVING))
    pub.register()
    watcher = MembershipWatcher(watch_client, "expiry").start()
    watcher.wait_for(lambda s: "pod-0" in s.instances)
    missing = []
    unsubscribe = watcher.subscribe(lambda s: missing.append(s.version) if "pod-0" not in s.instances else None)
    to_node, to_flowing = [], []
    task = progress.add_task("session expiry -> re-registered", total=n)
    for i in range(n):
        t0 = time.perf_counter()
        expire_session(pub_client, hosts)
        if not pub.wait_synced(30):
            raise RuntimeError("publisher did not recover")
        to_node.append(time.perf_counter() - t0)
        weight = float(100 + i)
        pub.update(weight=weight)
        watcher.wait_for(lambda s, w=weight: s.get("pod-0") is not None and s.get("pod-0").weight == w
                         and not s.held, timeout=30)
        to_flowing.append(time.perf_counter() - t0)
        progress.advance(task)
    unsubscribe()
    pub.close()
    watcher.close()
    for c in (pub_client, watch_client):
        c.stop()
        c.close()
    return to_node, to_flowing, len(missing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--expiries", type=int, default=10)
    args = ap.parse_args()
    console = Console()
    with ZooKeeperEnsemble(3) as zk, Progress(console=console, transient=True) as progress:
        ours, raw = bench_updates(zk.hosts, args.updates, progress)
        to_node, to_flowing, missing = bench_expiry(zk.hosts, args.expiries, progress)
    t = Table(title=f"registry latency, 3-node ZooKeeper on loopback ({args.updates} updates, "
                    f"{args.expiries} expiries)")
    for col in ("measure", "median ms", "p99 ms", "max ms"):
        t.add_column(col, justify="right" if col != "measure" else "left")
    for name, xs in (("Publisher.update -> watcher snapshot", ours),
                     ("raw kazoo set -> DataWatch (baseline)", raw),
                     ("session expiry -> node re-created", to_node),
                     ("session expiry -> next update seen by watcher", to_flowing)):
        t.add_row(name, f"{statistics.median(xs) * 1e3:.2f}", f"{pct(xs, 0.99) * 1e3:.2f}",
                  f"{max(xs) * 1e3:.2f}")
    console.print(t)
    console.print(f"ratio of medians, ours / raw kazoo: {statistics.median(ours) / statistics.median(raw):.2f}x; "
                  f"p99 ratio: {pct(ours, 0.99) / pct(raw, 0.99):.2f}x")
    console.print(f"snapshots without the instance during {args.expiries} session expiries: {missing}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
