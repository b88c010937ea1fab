"""Fleet scale (issue 11): 1,000 pods x 10,000 clients, three zones, capacities 1:2:4:8.

Drives the project's real pure cores, not copies: every client is a real
:class:`weiclient.balancer.Balancer` with its real :class:`Subsetter` and
:class:`Locality`, fed snapshots made by the real :class:`MembershipReducer`;
pods' weight writes come from the real agent :class:`WeightController`.
10,000 clients' calls are taken in aggregate: each client's load (rows/s)
is spread by :meth:`Balancer.shares`, the share of calls each endpoint gets
from that client's table and zone plan while pods are idle (what every
weight-proportional pick converges to; load-aware policies only correct it
further under load). Subset sizes come from the real ``subset_size`` on each
client's peak load.

Arms: no subsetting (today), rendezvous (the default), aperture with random
offsets, aperture with evenly spread offsets (Finagle's deterministic
aperture, which needs every client's coordinate). Then churn (one pod leaves,
one joins: how many clients' subsets change), zone spill (40 % of one
zone's pods drain) and ZooKeeper watches and notifications, extrapolated
from per-operation costs: the ensemble CPU per notification, getData,
getChildren and write that bench/fleet_zk.py measured on a real 3-node
ensemble (``--zk-costs``, default ``bench/out/zk_costs.json``; make it with
``bench/fleet_zk.py --only-costs``). Without that file the assumed defaults
of ``ZK_COSTS`` are used and the report says so; ``--notify-us`` and the
other per-cost flags override either.

    python bench/fleet_sim.py                       # ~3 min on 2 cores
    python bench/fleet_sim.py --clients 2000 --plots bench/out
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from registry.membership import MembershipReducer, Observation
from registry.records import Capacity, InstanceRecord, State
from server_agent.config import WeightConfig
from server_agent.weight import ServerSample, WeightController
from weiclient.balancer import Balancer, Locality, SubsetConfig, Subsetter, ZoneConfig, build_policy
from weiclient.balancer.subset import pod_capacity, subset_size
from weiclient.balancer.zones import zone_plan

# rows/s of an 8-, 16-, 32-core CPU pod and a GPU pod, and their share of the fleet
CLASSES = ((2000.0, 0.4), (4000.0, 0.3), (8000.0, 0.2), (16000.0, 0.1))
ZONES = ("z1", "z2", "z3")
UTILISATION = 0.7  # the fleet's mean load / capacity

# ZooKeeper per-operation costs, ensemble CPU microseconds (summed over its servers). ASSUMED, NOT
# MEASURED: used only when --zk-costs (bench/fleet_zk.py's measurement, bench/out/zk_costs.json) is
# missing; the flags of the same names override both.
ZK_COSTS_FILE = Path(__file__).resolve().parent / "out" / "zk_costs.json"
ZK_COSTS = {
    "notify_us": 5.0,            # one watch notification sent to one client
    "get_data_us": 20.0,         # one getData (a client re-reading a member after its watch fired)
    "get_children_us": 400.0,    # one getChildren of ~1,000 names (after the children watch fired)
    "write_us": 500.0,           # one setData / create / delete, quorum included
}


def make_fleet(n: int, rng: random.Random) -> list[InstanceRecord]:
    caps, probs = zip(*CLASSES, strict=True)
    return [InstanceRecord(service="ctr", id=f"pod-{i:04d}", address=f"10.{i // 250}.{i % 250}.1", port=8500,
                           weight=cap, capacity=Capacity(samples_per_s=cap), state=State.SERVING,
                           zone=ZONES[i % len(ZONES)], models={"ctr": [1]})
            for i, cap in enumerate(rng.choices(caps, probs, k=n))]


def make_clients(c: int, total_capacity: float, rng: random.Random) -> list[tuple[str, float]]:
    """(zone, rows/s): lognormal loads (sigma 1: a few callers carry much of the traffic)."""
    raw = [rng.lognormvariate(0.0, 1.0) for _ in range(c)]
    scale = UTILISATION * total_capacity / math.fsum(raw)
    return [(ZONES[j % len(ZONES)], x * scale) for j, x in enumerate(raw)]


def snapshot_of(reducer: MembershipReducer, state, records, now: float):
    nxt = reducer.observe(state, Observation(instances={r.id: r for r in records}), now, "sim")
    return nxt, nxt.snapshot


def run_arm(name, snap, clients, cfg: SubsetConfig | None, zones: ZoneConfig, offsets: bool = False, later=None):
    """Every client's real balancer on ``snap``: load per pod, connections per pod, watches; and the
    load per pod and zone once the balancer is updated to ``later`` (a snapshot), if given."""
    policy = build_policy()
    recs = list(snap.instances.values())
    cap = pod_capacity(recs)
    per_zone = Counter(z for z, _ in clients)
    seen: Counter = Counter()
    load: Counter = Counter()
    conns: Counter = Counter()
    watches = 0
    cross = after_cross = 0.0
    after: Counter = Counter()
    for j, (zone, rows) in enumerate(clients):
        sub = None
        if cfg is not None:
            offset = (seen[zone] + 0.5) / per_zone[zone] if offsets else None
            sub = Subsetter(config=cfg, client_id=f"client-{j}", zone=zone, offset=offset)
        seen[zone] += 1
        b = Balancer(policy, rng=random.Random(j), service="ctr", subset=sub, locality=Locality(zone=zone,
                                                                                                 config=zones))
        if cfg is not None:
            b.resize(subset_size(cfg, 1.5 * rows, cap), 0.0)  # a client's busiest second: 1.5x its mean
        b.update(snap, 0.0)
        for ep, share in b.shares("ctr", now=1.0).items():
            load[ep.instance_id] += rows * share
            conns[ep.instance_id] += 1
            cross += rows * share * (ep.record.zone != zone)
        w = b.watched(snap.instances)
        watches += (len(snap.instances) if w is None else len(w)) + 2  # + the children and the config watch
        if later is not None:
            b.update(later, 10.0)
            for ep, share in b.shares("ctr", now=11.0).items():
                after[ep.record.zone] += rows * share
                after[ep.instance_id] += rows * share
                after_cross += rows * share * (ep.record.zone != zone)
    total = math.fsum(rows for _, rows in clients)
    return {"name": name, "load": load, "conns": conns, "watches": watches, "cross": cross / total,
            "after": after, "after_cross": after_cross / total}


def evenness(arm, snap) -> dict[str, float]:
    recs = [r for r in snap.instances.values() if r.routable]
    ratio = [arm["load"][r.id] / r.capacity.samples_per_s for r in recs]
    conns = [arm["conns"][r.id] for r in recs]
    mean_r, mean_c = statistics.fmean(ratio), statistics.fmean(conns)
    by_class = {cap: statistics.fmean(arm["load"][r.id] / cap for r in recs if r.capacity.samples_per_s == cap)
                / mean_r for cap, _ in CLASSES}
    return {"conn_max": max(conns) / mean_c, "conn_mean": mean_c, "load_max": max(ratio) / mean_r,
            "load_min": min(ratio) / mean_r, "load_p99": sorted(ratio)[int(0.99 * len(ratio))] / mean_r,
            "mean_util": mean_r, **{f"class_{int(c)}": v for c, v in by_class.items()}, "ratios": ratio,
            "conns": conns}


def churn(cfg: SubsetConfig, records, clients, sample: int, rng: random.Random) -> dict[str, float]:
    """Fraction of clients whose subset changes when one pod leaves, and when one joins."""
    size = cfg.min_size
    gone = rng.choice(records).id
    joined = records[0].with_changes(id="pod-new", port=8600)
    out = {}
    picked = rng.sample(range(len(clients)), min(sample, len(clients)))
    for label, after in (("leave", [r for r in records if r.id != gone]), ("join", [*records, joined])):
        changed = moved = 0
        for j in picked:
            s = Subsetter(config=cfg, client_id=f"client-{j}", zone=clients[j][0])
            a, b = set(s.choose(records, size)), set(s.choose(after, size))
            changed += a != b
            moved += len(b - a)
        out[label] = changed / len(picked)
        out[f"{label}_pods"] = moved / max(1, changed)
    return out


def weight_writes(rng: random.Random, pods: int = 30, minutes: int = 30) -> tuple[float, float]:
    """Real agent weight controllers at 5 s polls: writes/s per pod in steady state (capacity
    estimates wobble +-3 %, p99 noisy below target), and writes per restart (register + ramp)."""
    cfg = WeightConfig()
    steady = 0
    for _ in range(pods):
        ctl = WeightController(cfg, capacity_score=4000.0, now=0.0)
        ctl.decide(0.0)
        for t in range(5, minutes * 60 + 1, 5):
            ctl.set_capacity_score(4000.0 * (1 + rng.uniform(-0.03, 0.03)))
            d = ctl.step(ServerSample(p99_ms=rng.uniform(30, 70), queue_rows=rng.uniform(0, 200),
                                      busy_fraction=0.6), float(t))
            steady += d.publish
    ramp = WeightController(cfg, capacity_score=4000.0, now=0.0)
    ramp.registered(0.0)
    writes = sum(ramp.step(ServerSample(p99_ms=50.0, busy_fraction=0.5), float(t)).publish
                 for t in range(0, int(cfg.ramp_s) + 30, 5))
    return steady / (pods * minutes * 60.0), float(writes)


def zk_costs(path: Path, overrides: dict[str, float | None]) -> tuple[dict[str, float], str, str]:
    """The per-operation costs, where they come from (a title's words) and the details: ``path``
    (bench/fleet_zk.py's JSON) if it exists, else the assumed ``ZK_COSTS``; then any flag given."""
    costs = dict(ZK_COSTS)
    if path.is_file():
        doc = json.loads(path.read_text())
        costs.update({k: float(doc["costs_us"][k]) for k in ZK_COSTS})
        source = f"measured by bench/fleet_zk.py on {doc['date'][:10]}"
        detail = (f"{doc.get('cores', '?')} cores, load average {doc['load_avg_before'][0]:.2f} before, "
                  f"ZooKeeper {doc.get('zookeeper', '?')}; {path}")
    else:
        source = "ASSUMED (the defaults in ZK_COSTS), NOT measured"
        detail = f"{path} missing: make it with bench/fleet_zk.py --only-costs"
    given = {k: v for k, v in overrides.items() if v is not None}
    costs.update(given)
    if given:
        source += "; overridden by flags: " + ", ".join(given)
    return costs, source, detail


def zk_figures(arm, base_watches_per_pod: float, writes_s: float, restart_writes: float, n_pods: int,
               n_clients: int, args, costs: dict[str, float]) -> dict[str, float]:
    """Notifications/s and ensemble CPU, steady and during a rolling restart, from per-op costs."""
    watchers = base_watches_per_pod  # clients with a data watch on a given pod (mean)
    steady_notify = n_pods * writes_s * watchers
    rate = args.restart_batch / args.restart_pod_s  # pods restarted per second
    per_restart_data = (2 + restart_writes) * watchers  # drain write, delete, then register + ramp writes
    per_restart_children = 2 * n_clients                  # the pod leaves, then comes back
    roll_notify = steady_notify + rate * (per_restart_data + per_restart_children)
    c = costs
    cpu_steady = (steady_notify * (c["notify_us"] + c["get_data_us"]) + n_pods * writes_s * c["write_us"]) / 1e6
    cpu_roll = cpu_steady + rate * (per_restart_data * (c["notify_us"] + c["get_data_us"])
                                    + per_restart_children * (c["notify_us"] + c["get_children_us"])
                                    + (3 + restart_writes) * c["write_us"]) / 1e6
    return {"steady": steady_notify, "rolling": roll_notify, "cpu_steady": cpu_steady, "cpu_rolling": cpu_roll}


def drain(records, fraction: float) -> list[InstanceRecord]:
    """``fraction`` of z1's pods drain (their capacity stays registered: demand does not move)."""
    z1 = [r.id for r in records if r.zone == "z1"]
    drained = set(z1[: int(fraction * len(z1))])
    return [r.with_changes(state=State.DRAINING, enabled=False, weight=0.0) if r.id in drained else r
            for r in records]


def zone_spill(arm, after) -> dict[str, object]:
    caps: Counter = Counter()
    for r in after:
        if r.routable:
            caps[r.zone] += r.capacity.samples_per_s
    ratio = [arm["after"][r.id] / r.capacity.samples_per_s for r in after if r.routable]
    return {"util": {z: arm["after"][z] / caps[z] for z in ZONES}, "cross": arm["after_cross"],
            "load_max": max(ratio) / statistics.fmean(ratio)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--min-size", type=int, default=SubsetConfig().min_size)
    ap.add_argument("--pod-share", type=float, default=SubsetConfig().pod_share)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--churn-sample", type=int, default=2000)
    ap.add_argument("--restart-batch", type=int, default=25, help="pods restarted at once (rolling update)")
    ap.add_argument("--restart-pod-s", type=float, default=90.0, help="seconds one pod takes to restart")
    ap.add_argument("--zk-costs", type=Path, default=ZK_COSTS_FILE,
                    help="bench/fleet_zk.py's measured per-operation costs (default: bench/out/zk_costs.json)")
    for k, v in ZK_COSTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", dest=k, type=float, default=None,
                        help=f"override (assumed default {v:g})")
    ap.add_argument("--plots", type=Path, default=None, help="write fleet_sim.png there")
    args = ap.parse_args()
    console = Console(width=170)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    records = make_fleet(args.pods, rng)
    clients = make_clients(args.clients, math.fsum(r.capacity.samples_per_s for r in records), rng)
    demand = Counter()
    for z, rows in clients:
        demand[z] += rows
    zones = ZoneConfig(demand=dict(demand))
    reducer = MembershipReducer("ctr")
    state, snap = snapshot_of(reducer, reducer.initial(), records, 0.0)
    cfg = SubsetConfig(min_size=args.min_size, pod_share=args.pod_share)
    ape = SubsetConfig(min_size=args.min_size, pod_share=args.pod_share, method="aperture")
    arms = [run_arm("no subsetting, no zones (today)", snap, clients, None, ZoneConfig(enabled=False))]
    drained = drain(records, 0.4)
    _, later = snapshot_of(reducer, state, drained, 10.0)
    arms.append(run_arm("rendezvous (default)", snap, clients, cfg, zones, later=later))
    arms.append(run_arm("aperture, random offsets", snap, clients, ape, zones))
    arms.append(run_arm("aperture, deterministic", snap, clients, ape, zones, offsets=True))
    figures = [evenness(a, snap) for a in arms]
    churns = {c.method: churn(c, records, clients, args.churn_sample, rng) for c in (cfg, ape)}

    t = Table(title=f"{args.pods:,} pods x {args.clients:,} clients, 3 zones, capacities 1:2:4:8, "
                    f"{UTILISATION:.0%} load, min_size {args.min_size}")
    for col in ("arm", "connections/pod max/mean", "mean", "load/cap max/mean", "p99/mean", "min/mean",
                "load/cap by class 1:2:4:8 (/mean)", "leave: clients moved", "join: clients moved"):
        t.add_column(col, justify="right" if col != "arm" else "left")
    for a, f in zip(arms, figures, strict=True):
        c = churns.get("rendezvous" if "rendezvous" in a["name"] else "aperture" if "aperture" in a["name"]
                       else "", {})
        classes = " ".join(f"{f[f'class_{int(cap)}']:.2f}" for cap, _ in CLASSES)
        t.add_row(a["name"], f"{f['conn_max']:.2f}", f"{f['conn_mean']:,.0f}", f"{f['load_max']:.3f}",
                  f"{f['load_p99']:.3f}", f"{f['load_min']:.3f}", classes,
                  f"{c['leave']:.1%} ({c['leave_pods']:.1f} pods)" if c else "-",
                  f"{c['join']:.1%} ({c['join_pods']:.1f} pods)" if c else "-")
    console.print(t)

    spill = zone_spill(arms[1], drained)
    plan = zone_plan("z1", drained, zones)
    z = Table(title="Zone affinity (rendezvous): cross-zone traffic and load / capacity per zone")
    for col in ("case", "cross-zone", "z1", "z2", "z3", "load/cap max/mean", "z1 clients' plan"):
        z.add_column(col)
    z.add_row("all pods up", f"{arms[1]['cross']:.1%}", "", "", "", f"{figures[1]['load_max']:.3f}",
              zone_plan("z1", records, zones).reason)
    z.add_row("40 % of z1 drains", f"{spill['cross']:.1%}", *(f"{spill['util'][q]:.2f}" for q in ZONES),
              f"{spill['load_max']:.3f}", plan.reason if plan else "zones ignored")
    console.print(z)

    writes_s, restart_writes = weight_writes(rng)
    costs, source, detail = zk_costs(args.zk_costs, {k: getattr(args, k) for k in ZK_COSTS})
    k = Table(title=f"ZooKeeper: watches and notifications (per-op costs {source})")
    for col in ("arm", "watches", "watchers/pod", "notif/s steady", "notif/s rolling restart",
                "ensemble CPU steady", "rolling"):
        k.add_column(col, justify="right" if col != "arm" else "left")
    for a in arms[:2]:
        per_pod = (a["watches"] - 2 * args.clients) / args.pods
        zk = zk_figures(a, per_pod, writes_s, restart_writes, args.pods, args.clients, args, costs)
        k.add_row(a["name"], f"{a['watches']:,}", f"{per_pod:,.0f}", f"{zk['steady']:,.0f}", f"{zk['rolling']:,.0f}",
                  f"{zk['cpu_steady']:.2f} cores", f"{zk['cpu_rolling']:.2f} cores")
    console.print(k)
    console.print("ZooKeeper per-op costs, ensemble CPU us: " + ", ".join(f"{q} {v:.1f}" for q, v in costs.items())
                  + f" ({source}; {detail})")
    console.print(f"weight writes: {writes_s * 60:.2f}/min per pod in steady state, {restart_writes:.0f} per restart "
                  f"(real WeightController, 5 s polls); rolling restart: {args.restart_batch} pods at a time, "
                  f"{args.restart_pod_s:g} s each; {time.monotonic() - t0:.0f} s")
    if args.plots:
        plot(args.plots, arms, figures)


def plot(out: Path, arms, figures) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for a, f in zip(arms[1:], figures[1:], strict=True):
        mean = statistics.fmean(f["ratios"])
        a1.hist([r / mean for r in f["ratios"]], bins=60, histtype="step", label=a["name"])
        a2.hist(f["conns"], bins=60, histtype="step", label=a["name"])
    a1.axvline(1.15, color="grey", ls="--", lw=0.8)
    a1.set(xlabel="load / capacity per pod, / mean", ylabel="pods", title="evenness of load")
    a2.set(xlabel="connections per pod", ylabel="pods", title="connections")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fleet_sim.png", dpi=120)


if __name__ == "__main__":
    main()
