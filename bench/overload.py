"""Overload without collapse: a 1:2:4 fleet at 80 % load loses its fastest pod's speed (140 %).

Pods are emulated accelerators (:mod:`examples.emulated`, as in
``bench/hetero.py``), published with their true weights. Load is open-loop
Poisson at ``--load`` (80 %) of the fleet's capacity, every call with a
``--timeout-s`` deadline (1 s) and latency measured from its scheduled
arrival. Each arm runs three phases on fresh pods:

1. ``--phase-s`` at the offered load (80 % of capacity);
2. twice as long with the fastest pod slowed to speed 1 (the same calls
   now ask 140 % of what the fleet can do);
3. ``--phase-s`` with its speed back (80 % again).

Arms (the same pods' code, flags differ):

- ``queue``: what we had, server admission off (``--no-admission``:
  a queue bounded only by its length) and client throttling off;
- ``admission``: the server refuses what cannot finish within its deadline or
  would wait longer than ``--max-queue-delay-ms`` (RESOURCE_EXHAUSTED with a
  retry-after), the client takes a refusal as a signal and tries another pod;
- ``admission+throttle``: also the client's adaptive throttling (SRE), the
  defaults.

``--sheddable F`` sends a fraction F of the calls with ``priority="sheddable"``:
under overload they should be refused first.

    .venv/bin/python bench/overload.py                          # 3 arms, ~2 minutes
    .venv/bin/python bench/overload.py --arms admission+throttle --sheddable 0.3

Prints, per arm: goodput in the overloaded phase (successful rows per second
over the capacity left), the p99 of successful calls at 80 % and at 140 %,
the median time to a refusal, errors by kind, and errors in the 2 s after the
load returns to 80 %; ``--plots`` draws goodput and p99 per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from hetero import REPO, Pod, console, publish_static  # noqa: E402
from rich.table import Table  # noqa: E402

from examples.emulated import FEATURES, UNIT_S, set_speed, write_model  # noqa: E402
from registry.testing import ZooKeeperEnsemble  # noqa: E402
from registry.zk import ZkSettings, connect  # noqa: E402
from weiclient import ClientConfig, WeiClient  # noqa: E402
from weiclient.throttle import ThrottleConfig  # noqa: E402

ARMS = {
    "queue": {"server": ("--no-admission",), "throttle": False},
    "admission": {"server": (), "throttle": False},
    "admission+throttle": {"server": (), "throttle": True},
}


@dataclass
class Call:
    at: float            # scheduled, seconds from the start
    took: float          # until the answer or the error
    ok: bool
    kind: str            # "ok" or the error's class name
    sheddable: bool


@dataclass
class ArmResult:
    arm: str
    calls: list[Call]
    phases: tuple[float, float, float]     # the starts of phases 2 and 3, and the end
    rows: int
    capacity_rows_per_s: tuple[float, float]  # normal, overloaded
    extra: dict = field(default_factory=dict)

    def within(self, lo: float, hi: float) -> list[Call]:
        return [c for c in self.calls if lo <= c.at < hi]

    def p99_ok_ms(self, lo: float, hi: float) -> float:
        lat = [c.took for c in self.within(lo, hi) if c.ok]
        return float(np.percentile(lat, 99)) * 1000 if lat else float("nan")

    def goodput(self, lo: float, hi: float, capacity: float) -> float:
        """Rows of the calls scheduled in [lo, hi) that succeeded, per second, over ``capacity``."""
        ok = sum(1 for c in self.within(lo, hi) if c.ok)
        return ok * self.rows / (hi - lo) / capacity


async def open_loop(call, rate: float, seconds: float, sheddable: float, on_phase) -> list[Call]:
    rng = np.random.default_rng(11)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10)
    arrivals = start + np.cumsum(gaps)
    arrivals = arrivals[arrivals < start + seconds]
    shed = rng.random(len(arrivals)) < sheddable
    out: list[Call] = []

    async def one(at: float, is_shed: bool) -> None:
        try:
            await call(is_shed)
            out.append(Call(at - start, loop.time() - at, True, "ok", is_shed))
        except Exception as exc:  # noqa: BLE001 - every failure is a data point here
            out.append(Call(at - start, loop.time() - at, False, type(exc).__name__, is_shed))

    tasks = []
    for at, is_shed in zip(arrivals, shed, strict=True):
        on_phase(at - start)
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(at, bool(is_shed))))
    await asyncio.gather(*tasks)
    return out


def run_arm(arm: str, args, speeds: list[float], workdir: Path) -> ArmResult:
    spec = ARMS[arm]
    pods = [Pod(f"pod{i}", s, workdir / arm / f"pod{i}", extra_args=spec["server"]) for i, s in enumerate(speeds)]
    for p in pods:
        write_model(p.models, "m", 1, speed=p.speed)
        p.start()
    fastest = max(pods, key=lambda p: p.speed)
    capacity = sum(speeds) / UNIT_S
    overloaded = (sum(speeds) - fastest.speed + min(speeds)) / UNIT_S
    rate = args.load * capacity / args.rows
    p1, p2 = args.phase_s, 3 * args.phase_s
    total = 4 * args.phase_s
    with ZooKeeperEnsemble(1) as ensemble:
        zk = connect(ZkSettings(hosts=ensemble.hosts))
        try:
            for p in pods:
                grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{p.port}")).result(timeout=60)
            pubs = publish_static(zk, "svc", pods, [s / min(speeds) for s in speeds])
            x = np.ones((args.rows, FEATURES), np.float32)
            state = {"phase": 1}

            def on_phase(t: float) -> None:
                phase = 1 if t < p1 else 2 if t < p2 else 3
                if phase != state["phase"]:
                    state["phase"] = phase
                    set_speed(fastest.models, "m", 1, min(speeds) if phase == 2 else fastest.speed)

            async def main() -> list[Call]:
                config = ClientConfig(timeout_s=args.timeout_s, metrics=False,
                                      throttle=ThrottleConfig(enabled=spec["throttle"]))
                client = WeiClient(ensemble.hosts, "svc", config=config)
                try:
                    async def call(is_shed: bool) -> None:
                        await client.apredict("m", {"x": x}, priority="sheddable" if is_shed else "default")
                    return await open_loop(call, rate, total, args.sheddable, on_phase)
                finally:
                    await client.aclose()

            calls = asyncio.run(main())
            set_speed(fastest.models, "m", 1, fastest.speed)
            for pub in pubs:
                pub.close()
        finally:
            for p in pods:
                p.stop()
            zk.stop()
            zk.close()
    return ArmResult(arm, calls, (p1, p2, total), args.rows, (capacity, overloaded))


def report(results: list[ArmResult], args) -> None:
    table = Table(title=f"offered {args.load:.0%} of capacity, then {args.load * 7 / 4:.0%} while the fastest pod "
                        f"is slowed, then {args.load:.0%} again ({args.timeout_s:g} s deadline)")
    for col in ("arm", "goodput at 140 %", "p99 ok 80 %", "p99 ok 140 %", "p99 ok / 80 %", "refusal p50 ms",
                "errors in 2 s after" + (" (default / sheddable)" if args.sheddable else ""), "errors by kind",
                *(("sheddable ok / default ok",) if args.sheddable else ())):
        table.add_column(col, justify="left" if col in ("arm", "errors by kind") else "right")
    for r in results:
        p1, p2, end = r.phases
        normal = r.p99_ok_ms(0.5, p1)
        over = r.p99_ok_ms(p1, p2)
        refused = [c.took * 1000 for c in r.calls if not c.ok and c.kind != "DeadlineExceeded"]
        late = [c for c in r.within(p2, p2 + 2.0) if not c.ok]
        after = str(len(late)) if not args.sheddable else \
            f"{sum(not c.sheddable for c in late)} / {sum(c.sheddable for c in late)}"
        kinds = Counter(c.kind for c in r.calls if not c.ok)
        shed_cell: tuple[str, ...] = ()
        if args.sheddable:
            def ok_ratio(shed: bool) -> float:
                cs = [c for c in r.within(p1, p2) if c.sheddable == shed]
                return sum(c.ok for c in cs) / max(1, len(cs))
            shed_cell = (f"{ok_ratio(True):.0%} / {ok_ratio(False):.0%}",)
        table.add_row(r.arm, f"{r.goodput(p1, p2, r.capacity_rows_per_s[1]):.0%}", f"{normal:.0f}", f"{over:.0f}",
                      f"{over / normal:.2f}", f"{np.median(refused):.1f}" if refused else "-", after,
                      ", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "none", *shed_cell)
    console.print(table)


def plot(results: list[ArmResult], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for r in results:
        p1, p2, end = r.phases
        secs = np.arange(int(end))
        cap = [r.capacity_rows_per_s[1] if p1 <= s < p2 else r.capacity_rows_per_s[0] for s in secs]
        top.plot(secs, [r.goodput(s, s + 1, c) for s, c in zip(secs, cap, strict=True)], marker=".", label=r.arm)
        bottom.plot(secs, [r.p99_ok_ms(s, s + 1) for s in secs], marker=".", label=r.arm)
    for ax in (top, bottom):
        ax.axvspan(results[0].phases[0], results[0].phases[1], color="grey", alpha=0.15)
        ax.grid(True, alpha=0.3)
    top.set_ylabel("goodput / capacity left")
    bottom.set_ylabel("p99 of successful calls (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("second (shaded: fastest pod slowed, 140 % offered)")
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "overload.png", dpi=110)
    console.print(f"plot in {out}/overload.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speeds", default="1,2,4")
    ap.add_argument("--rows", type=int, default=400, help="rows per call")
    ap.add_argument("--load", type=float, default=0.8, help="offered load, a fraction of the fleet's capacity")
    ap.add_argument("--phase-s", type=float, default=10.0, help="phases last this, 2x this, this")
    ap.add_argument("--timeout-s", type=float, default=1.0, help="every call's deadline")
    ap.add_argument("--sheddable", type=float, default=0.0, help="fraction of calls sent as sheddable")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated: " + ", ".join(ARMS))
    ap.add_argument("--plots", type=Path, help="write a PNG here")
    args = ap.parse_args()
    speeds = [float(s) for s in args.speeds.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"--arms: unknown {unknown}; expected some of {list(ARMS)}")
    workdir = Path(tempfile.mkdtemp(prefix="wei-overload-"))
    before = os.getloadavg()
    console.print(f"pods at speeds {speeds}, {args.rows} rows per call, {args.load:.0%} load, phases "
                  f"{args.phase_s:g}/{2 * args.phase_s:g}/{args.phase_s:g} s; load average {before[0]:.2f}; "
                  f"{REPO.name}")
    results = []
    try:
        for arm in arms:
            started = time.monotonic()
            results.append(run_arm(arm, args, speeds, workdir))
            console.print(f"  {arm}: {len(results[-1].calls)} calls in {time.monotonic() - started:.0f} s",
                          style="dim")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)
    after = os.getloadavg()
    console.print(f"load average: {before[0]:.2f} before, {after[0]:.2f} after (1 min), {os.cpu_count()} CPUs")
    if args.plots:
        plot(results, args.plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
