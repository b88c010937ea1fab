"""The ensemble's capacity and per-operation costs for bench/fleet_zk.py (``--only-costs``).

Each phase runs alone on the ensemble: pipelining processes issue one kind
of request, and the JVMs' CPU (from /proc) over the phase divided by the
requests served is that operation's cost. ``bench/fleet_sim.py`` reads the
result (``bench/out/zk_costs.json``).
"""

from __future__ import annotations

import statistics
import threading
import time
from multiprocessing import Pipe, Process, Value

from bench.fleet_zk_parts import Procs, _serve, record
from registry.records import encode_instance
from registry.zk import ZkSettings, connect

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
