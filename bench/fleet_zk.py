"""Fleet scale on one real 3-node ZooKeeper ensemble.

1,000 pods registered by real :class:`~registry.publisher.Publisher` sessions
(several processes, several sessions each, addresses nothing answers on) and
200 real WeiClients (each its own session, watchers, balancer and
housekeeping thread, no metrics export; several processes; zones off). Two
arms, one after the other on the same pods:

- ``all``: subsetting off (``SubsetConfig(enabled=False)``): a data watch on
  every member, and the old ramp cadence (a write whenever the weight moved
  10 % at a 5 s poll);
- ``subset``: the client's rendezvous subset of ``--subset`` members
  (``SubsetConfig(size=...)``; the watch filter is the client's own), and
  the publisher's minimum write interval of ``ramp_s / 4`` (the agent's
  setting).

For each arm it measures the watches per client (the servers' ``wchc``, plus
``mntr``'s total for the children watches), notifications and reads per
weight write (counted at the clients), the ensemble's CPU (its JVMs' /proc
times), the time for a membership change to reach the clients (p50/p99 of
every delivery, and of the time until all clients had it), and the same
during a rolling restart of ``--restart`` pods. Capacity is measured first:
the reads per second and CPU the ensemble gives a saturating reader here.

Then, before any pod starts, the ensemble's CPU per operation (the sum over
its JVMs, from /proc, net of its idle CPU), each kind in its own phase with
nothing else running: getData of a record-sized node (the capacity phase),
getChildren of 1,000 pod-named children, setData and create + delete by
pipelining writers, getData one in flight per session from 200 sessions,
and a watch notification (those sessions watch one node and re-read it with
a watch whenever it changes, as our watcher does; the node is set 60 times).
The sequence runs 3 times; medians are kept. They go to
``bench/out/zk_costs.json``, where bench/fleet_sim.py reads them
(``--only-costs``: this part alone, ~1.5 min on 2 cores).

    .venv/bin/python bench/fleet_zk.py                   # 1,000 pods, 200 clients (~5 min on 2 cores)
    .venv/bin/python bench/fleet_zk.py --pods 300 --clients 50 --restart 100 --restart-s 20   # quick
    .venv/bin/python bench/fleet_zk.py --only-costs      # bench/out/zk_costs.json for bench/fleet_sim.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.fleet_zk_costs import measure_costs, saturate  # noqa: E402
from bench.fleet_zk_parts import Arm, Procs, client_main, pct, pod_main  # noqa: E402
from registry.testing import ZooKeeperEnsemble, ZooKeeperSettings  # noqa: E402
from registry.testing.process import four_letter_word  # noqa: E402

console = Console(width=160)


def cpu_s(pids) -> float:
    """CPU seconds (user + system) the processes used so far."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def jvm_cpu(zk: ZooKeeperEnsemble) -> float:
    """CPU seconds the ensemble's JVMs used so far."""
    return cpu_s(m.process.pid for m in zk.members if m.process is not None)


def mntr_sum(zk: ZooKeeperEnsemble, *keys: str) -> dict[str, float]:
    sums = dict.fromkeys(keys, 0.0)
    for m in zk.members:
        got = m.mntr()
        for k in keys:
            sums[k] += got.get(k, 0.0)
    return sums


PACKETS = ("zk_packets_received", "zk_packets_sent", "zk_sum_node_changed_watch_count",
           "zk_cnt_node_changed_watch_count", "zk_sum_node_children_watch_count")


class Meter:
    """Ensemble CPU, packets and client counters over one phase."""

    def __init__(self, zk, clients: Procs):
        self.zk, self.clients = zk, clients
        self.t, self.cpu, self.m = time.monotonic(), jvm_cpu(zk), mntr_sum(zk, *PACKETS)
        self.ccpu = cpu_s(p.pid for p in clients.procs)
        self.c = sum_stats(clients.ask("stats"))

    def done(self) -> dict[str, float]:
        dt = time.monotonic() - self.t
        m, c = mntr_sum(self.zk, *PACKETS), sum_stats(self.clients.ask("stats"))
        out = {"s": dt, "cpu": (jvm_cpu(self.zk) - self.cpu) / dt,
               "client_cpu": (cpu_s(p.pid for p in self.clients.procs) - self.ccpu) / dt}
        out.update({k: m[k] - self.m[k] for k in PACKETS})
        out.update({k: c[k] - self.c[k] for k in c})
        return out


def sum_stats(replies) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in replies:
        for k, v in r.items():
            out[k] = out.get(k, 0) + v
    return out


def latencies(replies, kind: str) -> tuple[list[float], list[float]]:
    """(every delivery's delay, each event's delay until the last client had it)."""
    every, last = [], {}
    for events in replies:
        for k, key, delay in events:
            if k == kind:
                every.append(delay)
                last[key] = max(last.get(key, 0.0), delay)
    return every, list(last.values())


def run_arm(arm: Arm, zk, pods: Procs, args, results: dict) -> None:
    per = args.clients // args.client_procs
    clients = Procs(client_main, [(zk.hosts, i * per, per, arm.subset, args.pods) for i in range(args.client_procs)])
    try:
        t0 = time.monotonic()
        clients.ask("ready")
        r = results.setdefault(arm.name, {})
        r["sync_s"] = time.monotonic() - t0
        pods.ask("cadence", arm.min_write_interval_s)
        time.sleep(2)  # let the start-up reads finish before counting

        sessions = [s for reply in clients.ask("sessions") for s in reply]
        data = zk.watches()
        counts = [len(data.get(s, ())) for s in sessions]
        child = zk.watch_count() - zk.watch_totals()[2]
        r["watches"] = (sum(counts) / len(counts) + child / len(sessions), max(counts) + 1, child)

        # Weight writes: one at a time through the owning publisher; counted at the clients.
        meter = Meter(zk, clients)
        ids = [f"p{(i * 7919) % args.pods:04d}" for i in range(args.writes)]
        clients.ask("track", ids)
        pods.ask("weights", ids, args.write_gap_s, time.time() + 0.5)
        time.sleep(2)
        w = meter.done()
        r["per_write"] = (w["data_events"] / len(ids), w["reads"] / len(ids),
                          # each server applies every write and fires its own sessions' watches
                          w["zk_sum_node_changed_watch_count"] / max(1, w["zk_cnt_node_changed_watch_count"] / zk.size))
        r["write_delay"] = latencies(clients.ask("events"), "upd")

        # Membership changes: probe pods join one at a time.
        meter = Meter(zk, clients)
        pods.ask("join", args.joins, 0.5, time.time() + 0.5)
        time.sleep(2)
        j = meter.done()
        r["join"] = latencies(clients.ask("events"), "add")
        r["join_cost"] = (j["child_events"] / (2 * args.joins), j["reads"] / (2 * args.joins))
        r["join_cpu"] = j["client_cpu"]

        # Rolling restart: --restart pods over --restart-s, each ramping over --ramp-s.
        meter = Meter(zk, clients)
        writes0 = sum_stats(pods.ask("pubstats"))
        pods.ask("restart", args.restart, args.restart_s, args.ramp_s, time.time() + 0.5)
        rr = meter.done()
        writes = sum_stats(pods.ask("pubstats"))
        r["restart"] = rr
        r["restart_writes"] = {k: writes[k] - writes0.get(k, 0) for k in writes}
        r["restart_join"] = latencies(clients.ask("events"), "add")
    finally:
        clients.stop()


def report(results: dict, cap: dict, args) -> None:
    t = Table(title=f"{args.pods} pods x {args.clients} clients, one 3-node ensemble on this machine "
                    f"({os.cpu_count()} cores)")
    t.add_column("measure")
    for name in results:
        t.add_column(name, justify="right")

    def row(label, fn):
        t.add_row(label, *(fn(r) for r in results.values()))

    def pp(xs):
        return f"{pct(xs, 0.5) * 1000:.0f} / {pct(xs, 0.99) * 1000:.0f} ms" if xs else "-"

    row("every client's first full snapshot (s)", lambda r: f"{r['sync_s']:.1f}")
    row("watches per client: mean (max data + 1 children)", lambda r: f"{r['watches'][0]:.1f} ({r['watches'][1]})")
    row("notifications per weight write (clients)", lambda r: f"{r['per_write'][0]:.1f}")
    row("reads per weight write (clients)", lambda r: f"{r['per_write'][1]:.1f}")
    row("watches fired per setData (servers' mntr; + the pod's own)", lambda r: f"{r['per_write'][2]:.1f}")
    row("weight write -> watching client p50 / p99", lambda r: pp(r["write_delay"][0]))
    row("join -> a client p50 / p99", lambda r: pp(r["join"][0]))
    row("  client processes' CPU meanwhile (cores)", lambda r: f"{r['join_cpu']:.2f}")
    row("join -> all clients p50 / p99", lambda r: pp(r["join"][1]))
    row("reads per membership change (all clients together)", lambda r: f"{r['join_cost'][1]:.0f}")
    def writes(r):
        return sum(r["restart_writes"].get(k, 0) for k in ("creates", "sets", "deletes"))

    def rate(r):
        return r["restart"]["zk_packets_received"] / r["restart"]["s"]

    n, cores = args.restart, os.cpu_count() or 1
    row(f"restart of {n} pods: ZK writes (per pod)", lambda r: f"{writes(r):.0f} ({writes(r) / n:.1f})")
    row("  notifications / reads per pod restart",
        lambda r: f"{r['restart']['notifications'] / n:.0f} / {r['restart']['reads'] / n:.0f}")
    row("  client requests/s (server packets in)", lambda r: f"{rate(r):.0f}")
    row("  ensemble CPU (cores)", lambda r: f"{r['restart']['cpu']:.2f}")
    row("  client processes' CPU (cores)", lambda r: f"{r['restart']['client_cpu']:.2f}")
    row(f"  ensemble CPU, % of the machine's {cores} cores", lambda r: f"{100 * r['restart']['cpu'] / cores:.1f} %")
    row("  requests, % of the measured read capacity", lambda r: f"{100 * rate(r) / cap['reads_per_s']:.1f} %")
    row("  join -> a client p50 / p99", lambda r: pp(r["restart_join"][0]))
    row("  join -> all clients p50 / p99", lambda r: pp(r["restart_join"][1]))
    console.print(t)
    console.print(f"read capacity: {cap['reads_per_s']:.0f} reads/s of a {cap['record_bytes']}-byte node to 3 "
                  f"pipelining reader processes, nothing else running; the ensemble used {cap['cores']:.2f} cores "
                  "(the readers, in Python, had the rest): a lower bound of its capacity, so the % above is an "
                  "upper bound")


COSTS_OUT = Path(__file__).resolve().parent / "out" / "zk_costs.json"
PHASES = {  # phase -> (one operation, how it was driven)
    "get_data": ("getData, record-sized node", "3 sessions pipelining (+ the capacity phase's figure)"),
    "get_data_unbatched": ("getData, unbatched", "one in flight per watching session, all at once"),
    "get_children": ("getChildren, 1,000 names", "3 sessions pipelining; pod-named children"),
    "set_data": ("setData, record-sized node", "3 sessions pipelining, each its own node"),
    "create_delete": ("create or delete", "3 sessions pipelining create + delete pairs"),
    "watched_set": ("setData of a watched node", "one at a time, each once every watcher re-armed; "
                    "+ its notifications and re-reads"),
}


METHOD = {
    "get_data_us": "median us/op of the pipelined getData phases (the capacity phase's among them)",
    "get_children_us": "median us/op of the pipelined getChildren phases",
    "write_us": "median us/op of the pipelined setData phases (create_delete: median_us, not used)",
    "notify_us": "per_notified less get_data_us, medians: per_notified = (the watched setData phase's CPU "
                 "less write_us per write) / notifications, each notification followed by its re-read; so "
                 "notify_us + get_data_us is what was measured, the split between them is not",
}


def rounded(x):
    """Floats to 3 decimals, through dicts, lists and tuples (the JSON is read by people too)."""
    if isinstance(x, float):
        return round(x, 3)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v) for v in x]
    return x


def zk_version(zk: ZooKeeperEnsemble) -> str:
    first = four_letter_word(zk.members[0].client_port, "srvr").splitlines()[0]
    return first.partition(":")[2].split(",")[0].split("-")[0].strip()


def costs(zk: ZooKeeperEnsemble, cap: dict, args, load_before: tuple[float, ...]) -> dict:
    """Measure the per-operation costs, write them to ``args.costs_out`` with the machine's facts, print them."""
    got = measure_costs(zk, jvm_cpu, cap, seconds=args.cost_s, watchers=args.cost_watchers,
                        watcher_procs=args.cost_watcher_procs, rounds=args.cost_rounds, repeats=args.cost_repeats)
    doc = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "by": "bench/fleet_zk.py", "cores": os.cpu_count(), "load_avg_before": load_before,
           "load_avg_after": os.getloadavg(), "zookeeper": zk_version(zk),
           "ensemble": f"{zk.size} JVMs on this machine, -XX:TieredStopAtLevel=1 -XX:+UseSerialGC (the test harness)",
           "method": METHOD, **got}
    args.costs_out.parent.mkdir(parents=True, exist_ok=True)
    args.costs_out.write_text(json.dumps(rounded(doc), indent=2) + "\n")
    t = Table(title=f"ZooKeeper {doc['zookeeper']}: ensemble CPU per operation (sum of its {zk.size} JVMs, /proc, "
                    f"net of idle), median of {len(got['repeats'])} repeats; {doc['cores']} cores, load average "
                    f"{load_before[0]:.2f} before / {doc['load_avg_after'][0]:.2f} after")
    for col in ("operation", "how", "operations", "ops/s", "CPU s", "us / op", "range"):
        t.add_column(col, justify="left" if col in ("operation", "how") else "right")
    med, rng = got["median_us"], got["range_us"]
    for name, (what, how) in PHASES.items():
        phs = [r["phases"][name] for r in got["repeats"]]
        ops, secs, cpu = (sum(ph[k] for ph in phs) for k in ("ops", "s", "net_cpu_s"))
        t.add_row(what, how, f"{ops:,}", f"{ops / secs:,.0f}", f"{cpu:.2f}", f"{med[name]:,.1f}",
                  f"{rng[name][0]:,.1f} - {rng[name][1]:,.1f}")
    console.print(t)
    c, (lo, hi) = got["costs_us"], rng["per_notified"]
    console.print(f"per notified watcher (its notification and re-read; the write taken out): "
                  f"{med['per_notified']:.1f} us ({lo:.1f} - {hi:.1f}); less a pipelined getData: notify "
                  f"{med['notify']:.1f} us, less an unbatched one: {med['notify_after_unbatched']:.1f} us; "
                  f"idle {got['idle_cores']:.3f} cores")
    console.print("for fleet_sim: " + ", ".join(f"{k} {v:.1f}" for k, v in c.items()) + f" -> {args.costs_out}")
    for note in got["notes"]:
        console.print(f"[yellow]note: {note}")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--pod-procs", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=10, help="publisher sessions per pod process")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--client-procs", type=int, default=4)
    ap.add_argument("--subset", type=int, default=20)
    ap.add_argument("--writes", type=int, default=40)
    ap.add_argument("--write-gap-s", type=float, default=0.1)
    ap.add_argument("--joins", type=int, default=10)
    ap.add_argument("--restart", type=int, default=200, help="pods restarted in the rolling restart")
    ap.add_argument("--restart-s", type=float, default=40.0)
    ap.add_argument("--ramp-s", type=float, default=20.0)
    ap.add_argument("--capacity-s", type=float, default=5.0)
    ap.add_argument("--arms", default="all,subset")
    ap.add_argument("--only-costs", action="store_true", help="measure the per-operation costs alone (~1.5 min)")
    ap.add_argument("--no-costs", action="store_true", help="skip the per-operation costs (keep the last file)")
    ap.add_argument("--costs-out", type=Path, default=COSTS_OUT)
    ap.add_argument("--cost-s", type=float, default=2.5, help="seconds of each pipelined cost phase")
    ap.add_argument("--cost-repeats", type=int, default=3, help="the cost phases' repeats (medians are kept)")
    ap.add_argument("--cost-watchers", type=int, default=200, help="sessions watching one node")
    ap.add_argument("--cost-watcher-procs", type=int, default=4)
    ap.add_argument("--cost-rounds", type=int, default=60, help="setData of the watched node, per repeat")
    args = ap.parse_args()
    arms = {"all": Arm("all", None, 0.0), "subset": Arm("subset", args.subset, args.ramp_s / 4)}

    settings = ZooKeeperSettings(heap_mb=1024, max_session_ticks=150)
    load_before = os.getloadavg()
    with ZooKeeperEnsemble(3, settings=settings) as zk:
        cap = saturate(zk, args.capacity_s, jvm_cpu)
        console.print(f"ensemble up; capacity {cap['reads_per_s']:.0f} reads/s at {cap['cores']:.2f} cores")
        if not args.no_costs:
            costs(zk, cap, args, load_before)
        if args.only_costs:
            return
        per = args.pods // args.pod_procs
        pods = Procs(pod_main, [(zk.hosts, i * per, per, args.sessions) for i in range(args.pod_procs)])
        try:
            t0 = time.monotonic()
            pods.ask("ready")
            console.print(f"{args.pods} pods registered in {time.monotonic() - t0:.1f}s")
            results: dict = {}
            for name in args.arms.split(","):
                console.print(f"arm {name} ...")
                run_arm(arms[name], zk, pods, args, results)
            report(results, cap, args)
        finally:
            pods.stop()


if __name__ == "__main__":
    threading.excepthook = lambda a: console.print(f"[red]thread {a.thread.name}: {a.exc_value!r}")
    main()
