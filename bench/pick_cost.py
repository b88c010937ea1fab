"""Pick cost: median nanoseconds per ``Balancer.pick`` at 10, 100 and 1,000 endpoints, per policy.

Each cell times ``ROUNDS`` batches of ``BATCH`` picks (tables warm: the
per-event O(n) rebuilds are not in the steady state a request sees) and
reports the median batch, so one GC pause or scheduler hiccup does not move
it. ``pick+events`` adds the ``on_start``/``on_finish`` pair a real request
makes (P2C). Endpoints have weights 1-10 and idle-ish load. Target: under
20 us per pick at 1,000 endpoints. Runs in well under a minute.

    python bench/pick_cost.py
"""

from __future__ import annotations

import os
import random
import statistics
import time

from rich.console import Console
from rich.table import Table

from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from weiclient.balancer import POLICIES, Balancer, build_policy

SIZES = (10, 100, 1000)
BATCH = 2000
ROUNDS = 15


def _snapshot(n: int, rng: random.Random):
    recs = [InstanceRecord(service="ctr", id=f"pod-{i}", address=f"10.0.{i // 250}.{i % 250 + 1}",
                           port=8500, weight=float(rng.randint(1, 10)), state=State.SERVING,
                           models={"ctr": [1]}) for i in range(n)]
    return snapshot_from_records("ctr", recs, version=1)


def _time_picks(b: Balancer, keys: list[str], events: bool) -> float:
    pick, start, finish = b.pick, b.on_start, b.on_finish
    samples = []
    for r in range(ROUNDS + 2):
        t0 = time.perf_counter_ns()
        if events:
            for _ in range(BATCH):
                ep = pick("ctr", now=1.0)
                start(ep, 1.0)
                finish(ep, 1.0, 0.01, True)
        elif keys:
            for k in keys:
                pick("ctr", key=k, now=1.0)
        else:
            for _ in range(BATCH):
                pick("ctr", now=1.0)
        if r >= 2:  # two warm-up rounds build tables, cycles and rings
            samples.append((time.perf_counter_ns() - t0) / BATCH)
    return statistics.median(samples)


def main() -> None:
    rng = random.Random(7)
    keys = [f"user-{i}" for i in range(BATCH)]
    rows: dict[str, list[float]] = {}
    for n in SIZES:
        snap = _snapshot(n, rng)
        for name in POLICIES:
            b = Balancer(build_policy(name), rng=random.Random(1))
            b.update(snap, 0.0)
            for ep in b.candidates.endpoints:  # some latency and load so P2C compares real costs
                b.on_finish(ep, 0.5, rng.uniform(0.005, 0.03), True)
            rows.setdefault(name, []).append(_time_picks(b, keys if name == "consistent_hash" else [], False))
        b = Balancer(build_policy("weighted_p2c"), rng=random.Random(1))
        b.update(snap, 0.0)
        rows.setdefault("weighted_p2c pick+events", []).append(_time_picks(b, [], True))
    load = os.getloadavg()[0]
    table = Table(title=f"median ns per pick ({BATCH} picks x {ROUNDS} rounds; "
                        f"{os.cpu_count()} cores, load average {load:.1f}: noisy)")
    table.add_column("policy")
    for n in SIZES:
        table.add_column(f"{n:,} endpoints", justify="right")
    for name, cells in rows.items():
        table.add_row(name, *(f"{c:,.0f}" for c in cells))
    Console().print(table)


if __name__ == "__main__":
    main()
