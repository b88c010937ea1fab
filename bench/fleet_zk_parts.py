"""The processes of bench/fleet_zk.py: pods (publishers), clients (watchers), a saturating reader.

Each runs a command loop on a pipe and answers every command with one reply
(or the exception it raised). Times across processes are ``time.time()``:
one machine, one clock.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import Pipe, Process

from registry.publisher import Publisher, PublisherConfig
from registry.records import Capacity, InstanceRecord, State, encode_instance
from registry.service_config import ConfigWatcher
from registry.watcher import MembershipWatcher, WatcherConfig
from registry.zk import ZkSettings, connect

SERVICE = "fleet"
FULL = 10.0  # a pod's weight once ramped


@dataclass(frozen=True)
class Arm:
    name: str
    subset: int | None  # watch filter: the client's rendezvous subset of this size; None watches all
    min_write_interval_s: float  # the publishers' cadence (0: today's, every 10 % move)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def record(i: int | str, *, weight: float = FULL, state: State = State.SERVING) -> InstanceRecord:
    name = i if isinstance(i, str) else f"p{i:04d}"
    n = zlib.crc32(name.encode()) & 0xFFFF
    return InstanceRecord(service=SERVICE, id=name, address=f"10.{n >> 8}.{n & 255}.1", port=8500, weight=weight,
                          state=state, zone=f"z{n % 3}", models={"ctr": [1]}, capacity=Capacity(cpu_cores=16))


def rendezvous(client: str, k: int):
    """A watch filter: the k members with the highest hash(client, id) (rendezvous subsetting), hashes cached."""
    cache: dict[str, bytes] = {}

    def score(i: str) -> bytes:
        h = cache.get(i)
        if h is None:
            h = cache[i] = hashlib.blake2b(f"{client}/{i}".encode(), digest_size=8).digest()
        return h

    def pick(records):
        return heapq.nsmallest(k, records, key=score)
    return pick


def _serve(conn, handlers: dict) -> None:
    while True:
        cmd, *args = conn.recv()
        if cmd == "stop":
            return
        try:
            conn.send(handlers[cmd](*args))
        except Exception as e:  # the parent raises it
            conn.send(RuntimeError(f"{cmd}: {type(e).__name__}: {e}"))


# -- pods --------------------------------------------------------------------------------------------


def pod_main(conn, hosts: str, first: int, count: int, sessions: int) -> None:
    clients = [connect(ZkSettings(hosts=hosts, session_timeout_s=10.0)) for _ in range(sessions)]
    cadence = {"s": 0.0}
    totals = {"creates": 0, "sets": 0, "deletes": 0, "coalesced": 0}
    pubs: dict[int, Publisher] = {}
    lock = threading.Lock()
    joined = [0]

    def make(i: int | str, rec: InstanceRecord) -> Publisher:
        cfg = PublisherConfig(min_write_interval_s=cadence["s"], recovery=None)
        return Publisher(clients[zlib.crc32(str(i).encode()) % sessions], rec, config=cfg)

    def retire(p: Publisher) -> None:
        p.close(deregister=True, timeout=30)
        with lock:
            for k in totals:
                totals[k] += getattr(p.stats, k)

    for i in range(first, first + count):
        pubs[i] = make(i, record(i))
        pubs[i].register(timeout=None)
    for p in pubs.values():
        p.wait_synced(120)

    def set_cadence(s: float) -> None:
        cadence["s"] = s
        for p in pubs.values():
            p._config = replace(p._config, min_write_interval_s=s)  # a bench's shortcut: same publisher, new cadence

    def weights(ids: list[str], gap: float, at: float) -> int:
        mine = [(k, int(i[1:])) for k, i in enumerate(ids) if first <= int(i[1:]) < first + count]
        for k, i in mine:
            time.sleep(max(0.0, at + k * gap - time.time()))
            pubs[i].update(weight=FULL + 0.01 * (k + 1))
        for _, i in mine:
            pubs[i].wait_synced(60)
        return len(mine)

    def join(n: int, gap: float, at: float) -> int:
        if first != 0:
            return 0
        probes = []
        for k in range(n):
            time.sleep(max(0.0, at + k * gap - time.time()))
            joined[0] += 1
            p = make(f"j{joined[0]:05d}", record(f"j{joined[0]:05d}"))
            p.register(timeout=None)
            probes.append(p)
        time.sleep(1.0)
        for p in probes:
            retire(p)
        return n

    def restart(n: int, over_s: float, ramp_s: float, at: float) -> int:
        """Restart this process's share of pods 0..n-1 (pod k at ``at + k over_s / n``), each ramping like the agent:
        WARMING at 5 %, a poll every ramp_s / 12, a write when the weight moved 10 %, SERVING at the end."""
        poll = ramp_s / 12
        heap = [(at + k * over_s / n, k, "restart", 0.0) for k in range(first, min(first + count, n))]
        heapq.heapify(heap)
        pool = ThreadPoolExecutor(8)
        published: dict[int, float] = {}

        def do_restart(k: int, t0: float) -> None:
            retire(pubs[k])
            p = make(k, record(k, weight=0.05 * FULL, state=State.WARMING))
            pubs[k] = p
            p.register(timeout=None)
            with lock:
                published[k] = 0.05 * FULL
                heapq.heappush(heap, (t0 + poll, k, "poll", t0))

        while True:
            with lock:
                if not heap:
                    break
                t, k, what, t0 = heap[0]
                item = None if t > time.time() else heapq.heappop(heap)
            if item is None:
                time.sleep(min(0.05, max(0.0, t - time.time())))
                continue
            if what == "restart":
                pool.submit(do_restart, k, t)
                continue
            ramp = min(1.0, (t - t0) / ramp_s)
            w = FULL * (0.05 + 0.95 * ramp)
            if ramp >= 1.0:
                pubs[k].update(state=State.SERVING, weight=FULL)
            else:
                if abs(w - published[k]) / published[k] > 0.10:
                    pubs[k].update(weight=round(w, 3))
                    published[k] = w
                with lock:
                    heapq.heappush(heap, (t + poll, k, "poll", t0))
        pool.shutdown(wait=True)
        for p in pubs.values():
            p.wait_synced(120)
        return n

    def pubstats() -> dict[str, int]:
        with lock:
            out = dict(totals)
        for p in pubs.values():
            for k in out:
                out[k] += getattr(p.stats, k)
        return out

    _serve(conn, {"ready": lambda: count, "cadence": set_cadence, "weights": weights, "join": join,
                  "restart": restart, "pubstats": pubstats})
    for c in clients:
        c.stop()
        c.close()


# -- clients ------------------------------------------------------------------------------------------


def client_main(conn, hosts: str, first: int, count: int, subset: int | None, pods: int) -> None:
    events: list[tuple[str, tuple, float]] = []
    tracked: set[str] = set()
    lock = threading.Lock()
    zks, watchers, configs = [], [], []

    def tracker(watcher: MembershipWatcher):
        prev = {"snap": None}

        def on_snapshot(snap) -> None:
            now = time.time()
            old, prev["snap"] = prev["snap"], snap.instances
            if old is None or snap.source != "zookeeper":
                return
            out = []
            for i in snap.instances.keys() - old.keys():
                r = snap.instances[i]
                out.append(("add", (i, r.registration_time_ms), now - r.updated_ms / 1000))
            for i in tracked & snap.instances.keys() & old.keys():
                r = snap.instances[i]
                if r.updated_ms != old[i].updated_ms and (subset is None or i in watcher.watched):
                    out.append(("upd", (i, r.updated_ms), now - r.updated_ms / 1000))
            if out:
                with lock:
                    events.extend(out)
        return on_snapshot

    for c in range(first, first + count):
        zk = connect(ZkSettings(hosts=hosts, session_timeout_s=10.0), wait=False)
        flt = None if subset is None else rendezvous(f"client-{c}", subset)
        w = MembershipWatcher(zk, SERVICE, config=WatcherConfig(), watch_filter=flt)
        w.subscribe(tracker(w))
        zks.append(zk)
        watchers.append(w.start(timeout=None))
        configs.append(ConfigWatcher(zk, SERVICE).start(timeout=None))

    def ready() -> int:
        for w in watchers:
            w.wait_for(lambda s: len(s) >= pods, timeout=600)
        return count

    def stats() -> dict[str, float]:
        out: dict[str, float] = {}
        for w in watchers:
            s = asdict(w.stats)
            s.update(notifications=w.stats.notifications, reads=w.stats.reads)
            for k, v in s.items():
                out[k] = out.get(k, 0) + v
        return out

    def track(ids: list[str]) -> None:
        tracked.clear()
        tracked.update(ids)

    def take() -> list:
        with lock:
            out = list(events)
            events.clear()
        return out

    _serve(conn, {"ready": ready, "sessions": lambda: [zk.client_id[0] for zk in zks], "stats": stats,
                  "track": track, "events": take})
    for w in watchers + configs:
        w.close()
    for zk in zks:
        zk.stop()
        zk.close()


# -- capacity -----------------------------------------------------------------------------------------


def _reader(conn, hosts: str, seconds: float, window: int = 200) -> None:
    zk = connect(ZkSettings(hosts=hosts))
    path = "/capacity/node"
    n, end = 0, time.monotonic() + seconds
    conn.send("ready")
    conn.recv()
    while time.monotonic() < end:
        for r in [zk.get_async(path) for _ in range(window)]:
            r.get()
        n += window
    conn.send(n)
    zk.stop()
    zk.close()


def saturate(zk_ensemble, seconds: float, jvm_cpu, readers: int = 3) -> dict[str, float]:
    """Reads per second the ensemble serves to ``readers`` pipelining processes here, and the CPU it uses."""
    admin = connect(ZkSettings(hosts=zk_ensemble.hosts))
    admin.create("/capacity/node", encode_instance(record(0)), makepath=True)
    pipes, procs = [], []
    for _ in range(readers):
        ours, theirs = Pipe()
        p = Process(target=_reader, args=(theirs, zk_ensemble.hosts, seconds), daemon=True)
        p.start()
        pipes.append(ours)
        procs.append(p)
    for pipe in pipes:
        pipe.recv()
    t0, cpu0 = time.monotonic(), jvm_cpu(zk_ensemble)
    for pipe in pipes:
        pipe.send("go")
    total = sum(pipe.recv() for pipe in pipes)
    dt, cpu = time.monotonic() - t0, jvm_cpu(zk_ensemble) - cpu0
    for p in procs:
        p.join(10)
    admin.delete("/capacity", recursive=True)
    admin.stop()
    admin.close()
    return {"reads_per_s": total / dt, "cores": cpu / dt}
