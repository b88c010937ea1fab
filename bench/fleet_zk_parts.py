"""The processes of bench/fleet_zk.py: pods (publishers), clients (watchers), a saturating reader.

Each runs a command loop on a pipe and answers every command with one reply
(or the exception it raised). Times across processes are ``time.time()``:
one machine, one clock.
"""

from __future__ import annotations

import hashlib
import heapq
import statistics
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import Pipe, Process, Value

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


class Procs:
    """Child processes, each on a pipe that answers each command with one reply."""

    def __init__(self, target, args_list):
        self.pipes, self.procs = [], []
        for args in args_list:
            ours, theirs = Pipe()
            p = Process(target=target, args=(theirs, *args), daemon=True)
            p.start()
            self.pipes.append(ours)
            self.procs.append(p)

    def ask(self, *cmd, timeout: float = 600.0):
        for pipe in self.pipes:
            pipe.send(cmd)
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"no answer to {cmd[0]} within {timeout}s")
            reply = pipe.recv()
            if isinstance(reply, BaseException):
                raise reply
            out.append(reply)
        return out

    def stop(self):
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()


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


# -- capacity and per-operation costs ----------------------------------------------------------------

CAP = "/capacity"


def _ops(zk, kind: str, path: str, window: int, k: int) -> int:
    """``window`` requests of one kind in flight at once; the requests they made (create + delete: two each)."""
    data = encode_instance(record(0))
    if kind == "create_delete":
        names = [f"{path}-{k}-{i}" for i in range(window)]
        for r in [zk.create_async(name, data) for name in names]:
            r.get()
        for r in [zk.delete_async(name) for name in names]:
            r.get()
        return 2 * window
    send = {"get": lambda: zk.get_async(path), "children": lambda: zk.get_children_async(path),
            "set": lambda: zk.set_async(path, data)}[kind]
    for r in [send() for _ in range(window)]:
        r.get()
    return window


def _pipeline(conn, hosts: str, kind: str, path: str, seconds: float, window: int, warm_s: float) -> None:
    """One session, ``window`` requests in flight: warm the servers' code paths, then count for ``seconds``."""
    zk = connect(ZkSettings(hosts=hosts))
    k, end = 0, time.monotonic() + warm_s
    while time.monotonic() < end:
        _ops(zk, kind, path, window, k := k + 1)
    conn.send("ready")
    conn.recv()
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n += _ops(zk, kind, path, window, k := k + 1)
    conn.send(n)
    zk.stop()
    zk.close()


def pipelined(zk_ensemble, jvm_cpu, kind: str, paths: list[str], seconds: float, *, window: int = 200,
              warm_s: float = 0.0) -> dict[str, float]:
    """One process per path, each pipelining requests of ``kind``; nothing else runs meanwhile.
    The requests made, the seconds, and the ensemble's CPU seconds (its JVMs' /proc times)."""
    pipes, procs = [], []
    for path in paths:
        ours, theirs = Pipe()
        p = Process(target=_pipeline, args=(theirs, zk_ensemble.hosts, kind, path, seconds, window, warm_s),
                    daemon=True)
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
    return {"ops": total, "s": dt, "cpu_s": cpu}


def saturate(zk_ensemble, seconds: float, jvm_cpu, readers: int = 3) -> dict[str, float]:
    """Reads per second of a record-sized node the ensemble serves to ``readers`` pipelining processes
    here, and the CPU it uses (cores) and ``get`` (:func:`pipelined`'s figures)."""
    admin = connect(ZkSettings(hosts=zk_ensemble.hosts))
    admin.create(f"{CAP}/node", encode_instance(record(0)), makepath=True)
    got = pipelined(zk_ensemble, jvm_cpu, "get", [f"{CAP}/node"] * readers, seconds)
    admin.delete(CAP, recursive=True)
    admin.stop()
    admin.close()
    return {"reads_per_s": got["ops"] / got["s"], "cores": got["cpu_s"] / got["s"], "get": got,
            "record_bytes": len(encode_instance(record(0)))}


def pod_names(n: int) -> list[str]:
    """Distinct names like Kubernetes pods' (the agent's CLI passes the pod name as the instance id)."""
    alphabet, width = "bcdfghjklmnpqrstvwxz2456789", 5
    out = []
    for i in range(n):
        x = (i * 7919 + 12345) % len(alphabet) ** width  # 7919 is prime to 27: distinct for n < 27**5
        out.append("ctr-serving-7d9f8b6c5-" + "".join(alphabet[x // len(alphabet) ** j % len(alphabet)]
                                                     for j in range(width)))
    return out


def watchers_main(conn, hosts: str, count: int, path: str, armed) -> None:
    """``count`` sessions, each holding a data watch on ``path`` and re-arming it as our watcher does:
    a notified session re-reads the node with a watch. ``armed`` (a shared counter) counts the reads done."""
    zks = [connect(ZkSettings(hosts=hosts, session_timeout_s=10.0)) for _ in range(count)]
    counts = {"notified": 0, "rereads": 0}
    lock = threading.Lock()

    def done(_result) -> None:
        with armed.get_lock():
            armed.value += 1

    def arm(zk) -> None:
        def on_event(_event) -> None:
            with lock:
                counts["notified"] += 1
                counts["rereads"] += 1
            zk.get_async(path, watch=on_event).rawlink(done)
        zk.get_async(path, watch=on_event).rawlink(done)

    def arm_all() -> int:
        for zk in zks:
            arm(zk)
        return count

    def reads(rounds: int) -> int:
        """Plain reads as the re-reads come: one in flight per session, every session at once."""
        for _ in range(rounds):
            for r in [zk.get_async(path) for zk in zks]:
                r.get()
        return rounds * count

    _serve(conn, {"arm": arm_all, "reads": reads, "counts": lambda: dict(counts)})
    for zk in zks:
        zk.stop()
        zk.close()


def _sum(replies: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in replies:
        for k, v in r.items():
            out[k] = out.get(k, 0) + v
    return out


def _idle(zk_ensemble, jvm_cpu, seconds: float) -> float:
    """The ensemble's CPU (cores) with nothing asked of it: subtracted from every phase."""
    t0, cpu0 = time.monotonic(), jvm_cpu(zk_ensemble)
    time.sleep(seconds)
    return (jvm_cpu(zk_ensemble) - cpu0) / (time.monotonic() - t0)


def _watch_rounds(admin, path: str, armed, watchers: int, rounds: int) -> int:
    """``rounds`` setData of the watched node, each once every watcher re-armed (or 5 s passed); the late ones."""
    data, late = encode_instance(record(0)), 0
    target = armed.value
    for _ in range(rounds):
        admin.set(path, data)
        target += watchers
        deadline = time.monotonic() + 5.0
        while armed.value < target and time.monotonic() < deadline:
            time.sleep(0.002)
        late += armed.value < target
        target = armed.value
    return late


def _timed(zk_ensemble, jvm_cpu, fn) -> dict[str, float]:
    t0, cpu0 = time.monotonic(), jvm_cpu(zk_ensemble)
    out = fn()
    return {**out, "s": time.monotonic() - t0, "cpu_s": jvm_cpu(zk_ensemble) - cpu0}


def measure_costs(zk_ensemble, jvm_cpu, cap: dict, *, seconds: float = 2.5, watchers: int = 200,
                  watcher_procs: int = 4, rounds: int = 60, repeats: int = 3, children: int = 1000) -> dict:
    """Ensemble CPU per operation, each kind in its own phase with nothing else running.

    Phases: getData of a record-sized node, getChildren of a node with
    ``children`` pod-named children, setData of a record-sized node and create
    + delete pairs (3 pipelining processes each, ``seconds`` each); plain
    getData one in flight per session from ``watchers`` sessions (as re-reads
    come); ``rounds`` setData of a node those sessions all watch, each re-armed
    by a re-read with a watch as our watcher does. The whole sequence runs
    ``repeats`` times (the first after a warm-up of every path); each figure
    is the median of the repeats (``cap``, :func:`saturate`'s answer, adds a
    getData sample). The idle CPU, watchers' sessions open, is subtracted.
    """
    hosts, root = zk_ensemble.hosts, "/costs"
    admin = connect(ZkSettings(hosts=hosts))
    rec = encode_instance(record(0))
    admin.ensure_path(f"{root}/children")
    for r in [admin.create_async(f"{root}/children/{name}", rec) for name in pod_names(children)]:
        r.get()
    for w in range(3):
        admin.create(f"{root}/get/w{w}", rec, makepath=True)
        admin.create(f"{root}/set/w{w}", rec, makepath=True)
    admin.ensure_path(f"{root}/cd")
    admin.create(f"{root}/watched", rec)
    armed = Value("q", 0)
    per = watchers // watcher_procs
    n = per * watcher_procs
    procs = Procs(watchers_main, [(hosts, per, f"{root}/watched", armed) for _ in range(watcher_procs)])
    paths = {"get": [f"{root}/get/w{w}" for w in range(3)], "children": [f"{root}/children"] * 3,
             "set": [f"{root}/set/w{w}" for w in range(3)], "create_delete": [f"{root}/cd/w{w}" for w in range(3)]}
    kinds = {"get_data": ("get", 200), "get_children": ("children", 20), "set_data": ("set", 50),
             "create_delete": ("create_delete", 50)}
    samples: list[dict] = []
    try:
        procs.ask("arm")
        while armed.value < n:
            time.sleep(0.01)
        _watch_rounds(admin, f"{root}/watched", armed, n, 10)  # warm the notification path
        idle = _idle(zk_ensemble, jvm_cpu, 3.0)
        for k in range(repeats):
            phases = {name: pipelined(zk_ensemble, jvm_cpu, kind, paths[kind], seconds, window=window,
                                      warm_s=1.0 if k == 0 else 0.0)
                      for name, (kind, window) in kinds.items()}
            phases["get_data_unbatched"] = _timed(
                zk_ensemble, jvm_cpu, lambda: {"ops": sum(procs.ask("reads", max(1, rounds // 2)))})
            c0 = _sum(procs.ask("counts"))
            w = _timed(zk_ensemble, jvm_cpu, lambda: {"ops": rounds, "late_rounds": _watch_rounds(
                admin, f"{root}/watched", armed, n, rounds)})
            c = _sum(procs.ask("counts"))
            phases["watched_set"] = {**w, "watchers": n, **{q: c[q] - c0[q] for q in c}}
            samples.append(derive(phases, idle))
    finally:
        procs.stop()
        admin.delete(root, recursive=True)
        admin.stop()
        admin.close()
    saturated = derive({"get_data": dict(cap["get"])}, idle, partial=True)
    return {**summarize(samples, saturated), "idle_cores": idle, "record_bytes": len(rec), "children": children,
            "watchers": n, "repeats": samples}


NOTIFY_FLOOR_US = 0.5


def derive(phases: dict, idle: float, *, partial: bool = False) -> dict:
    """One repeat's microseconds of ensemble CPU per operation, net of the idle CPU."""
    for ph in phases.values():
        ph["net_cpu_s"] = max(0.0, ph["cpu_s"] - idle * ph["s"])
        ph["us_per_op"] = 1e6 * ph["net_cpu_s"] / ph["ops"]
    us = {name: ph["us_per_op"] for name, ph in phases.items()}
    if partial:
        return {"us": us, "phases": phases}
    w = phases["watched_set"]
    notified = max(1, w["notified"])
    # each round: one setData, then every notified watcher re-reads (a getData) with a watch
    us["per_notified"] = (1e6 * w["net_cpu_s"] - w["ops"] * us["set_data"]) / notified
    us["notify"] = us["per_notified"] - us["get_data"] * w["rereads"] / notified
    us["notify_after_unbatched"] = us["per_notified"] - us["get_data_unbatched"] * w["rereads"] / notified
    return {"us": us, "phases": phases}


def summarize(samples: list[dict], saturated: dict) -> dict:
    """Each figure's median over the repeats (getData: + the capacity phase's), its range, the costs for
    bench/fleet_sim.py, and notes on what to doubt."""
    figures: dict[str, list[float]] = {}
    for s in samples:
        for k, v in s["us"].items():
            figures.setdefault(k, []).append(v)
    figures["get_data"].append(saturated["us"]["get_data"])
    med = {k: statistics.median(v) for k, v in figures.items()}
    # notify is per_notified less a getData: both medians, so that notify + get_data = the measured per_notified
    med["notify"] = med["per_notified"] - med["get_data"]
    med["notify_after_unbatched"] = med["per_notified"] - med["get_data_unbatched"]
    notes = []
    if med["notify"] < NOTIFY_FLOOR_US:
        notes.append(f"notify_us came out {med['notify']:.1f} us (a difference of two noisy figures): "
                     f"clipped to {NOTIFY_FLOOR_US}")
    late = sum(s["phases"]["watched_set"]["late_rounds"] for s in samples)
    if late:
        notes.append(f"{late} watched writes went out before every watcher re-armed")
    costs = {"notify_us": max(NOTIFY_FLOOR_US, med["notify"]), "get_data_us": med["get_data"],
             "get_children_us": med["get_children"], "write_us": med["set_data"]}
    return {"costs_us": costs, "median_us": med, "range_us": {k: (min(v), max(v)) for k, v in figures.items()},
            "notes": notes, "capacity_get_data": saturated["phases"]["get_data"]}
