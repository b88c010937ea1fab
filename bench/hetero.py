"""A heterogeneous fleet under open-loop load: which routing gets close to the oracle?

Pods are emulated accelerators (:mod:`examples.emulated`): ``wei-serve``
processes whose model sleeps ``rows x unit / speed`` per batch, with batching
on and one batch thread, so each server sees its queue and its busy time as
it would on a GPU. Speeds are a flag (``--speeds 1,2,4``). Load is open-loop
Poisson at ``--load`` of the fleet's capacity, and latency is measured from
each call's *scheduled* arrival, so a stalled client cannot hide queueing
(no coordinated omission). Every arm runs on the same pods, one after the
other, for ``--seconds``:

- ``rr/equal``: plain round robin, equal weights (what a user gets first);
- ``oracle``: round robin with the true weights (static, 1:2:4);
- each policy with the weights declared ``equal`` and declared ``true``;
- ``measured/POLICY``: equal declared cores, one ``wei-agent`` per pod
  publishing the capacity it measures (after a warm-up it has converged);
- ``p2c_jsed+static/equal``: ``p2c_jsed`` told to trust the servers' reported
  capacity over static weights (``measure_static_pods``): bare servers, no agents;
- ``haproxy``: HAProxy (Debian's 2.6) in front of the same pods, h2 both
  sides, ``balance leastconn``, the true weights: what a user would pick
  instead of client-side balancing.

``--swap`` adds arms (``weighted_p2c`` and ``p2c_jsed``, agents measuring) in
which the fastest and the slowest pod trade speeds halfway: the p99 of each
second after the swap shows how fast routing adapts, and "adapted after" is
the first second from which every second's p99 stays within 2x the median
of the seconds before the swap.

Every call has the same ``--timeout-s`` (30 s): a short deadline would cap
plain round robin's latency at the deadline and turn its queue into errors,
hiding how far it falls behind. Each arm waits for its last call to end, so
no backlog reaches the next arm.

    .venv/bin/python bench/hetero.py                       # 80 % load, every arm, ~6 minutes
    .venv/bin/python bench/hetero.py --load 0.5 --arms rr/equal,oracle,weighted_p2c/equal
    .venv/bin/python bench/hetero.py --swap --plots bench/out
    .venv/bin/python bench/hetero.py --mix 0.5             # 20- and 2,000-row calls: count calls or rows?

Prints p50 / p99 / p99.9, errors, the traffic share of each pod, and the
p99's ratio to the oracle's and to plain round robin's; with ``--plots``,
PNGs of the latency CDFs and of weights and shares over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from examples.emulated import FEATURES, UNIT_S, set_speed, write_model  # noqa: E402
from protocol import wire  # noqa: E402
from registry.publisher import Publisher  # noqa: E402
from registry.records import InstanceRecord, State  # noqa: E402
from registry.testing import ZooKeeperEnsemble, free_ports  # noqa: E402
from registry.testing.process import die_with_parent_prefix  # noqa: E402
from registry.zk import ZkSettings, connect  # noqa: E402
from weiclient import ClientConfig, WeiClient  # noqa: E402
from weiclient.balancer import POLICIES  # noqa: E402

console = Console(width=160)


@dataclass
class Pod:
    name: str
    speed: float
    models: Path
    port: int = 0
    status_port: int = 0
    server: subprocess.Popen | None = None
    agent: subprocess.Popen | None = None
    extra_args: tuple[str, ...] = ()

    def start(self) -> None:
        self.port, self.status_port = free_ports(2)
        self.server = subprocess.Popen(
            [*die_with_parent_prefix(), sys.executable, "-m", "serving.cli", "--models", str(self.models),
             "--host", "127.0.0.1",
             "--port", str(self.port), "--status-port", str(self.status_port), "--num-batch-threads", "1",
             "--max-batch-size", "512", "--batch-timeout-micros", "500", "--log-level", "warning",
             *self.extra_args],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def requests(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/status", timeout=5) as r:
            return int(json.load(r)["models"]["m"]["work"]["requests"])

    def start_agent(self, zk: str, service: str) -> None:
        self.agent = subprocess.Popen(
            [*die_with_parent_prefix(), sys.executable, "-m", "server_agent.cli", "run", "--zk", zk,
             "--service", service,
             "--target", f"127.0.0.1:{self.port}", "--status-url", f"http://127.0.0.1:{self.status_port}",
             "--http-port", "0", "--http-host", "127.0.0.1", "--instance-id", self.name, "--cpu-cores", "2",
             "--ramp-s", "2", "--latency-target-ms", "1000", "--startup-period-s", "0.5",
             "--readiness-period-s", "0.5", "--status-poll-s", "1",
             "--drain-wait-s", "0.5", "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=(self.models / "agent.log").open("w"))

    def stop(self) -> None:
        for proc in (self.agent, self.server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.agent, self.server):
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@dataclass
class Result:
    arm: str
    latencies: np.ndarray
    errors: int
    shares: list[float]
    p99_by_second: list[float] = field(default_factory=list)
    weights: list[tuple[float, list[float]]] = field(default_factory=list)
    small: np.ndarray = field(default_factory=lambda: np.zeros(0))

    error_times: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies.size else float("nan")

    def adapted_after(self) -> float | None:
        """Seconds after the swap (half-way) until every second's p99 stays within 2x the median before it."""
        half = len(self.p99_by_second) // 2
        before = [v for v in self.p99_by_second[1:half] if v == v]
        if not before:
            return None
        bound = 2.0 * float(np.median(before))
        after = self.p99_by_second[half:]
        for i in range(len(after)):
            if all(v == v and v <= bound for v in after[i:]):
                return float(i)
        return None


MIX = {"small_fraction": 0.0, "small_rows": 20, "big_rows": 2000}  # --mix: each call small or big
ERROR_KINDS: Counter[str] = Counter()  # the current arm's errors by class
ERROR_EXAMPLES: dict[str, str] = {}     # one message per class, for the log


async def open_loop(call, rate: float, seconds: float) -> tuple[list[tuple[float, float, bool]], list[float]]:
    """Poisson arrivals for ``seconds``; (scheduled time, latency, small?) per successful call, and the
    scheduled time of each failed one."""
    rng = np.random.default_rng(7)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10)
    arrivals = start + np.cumsum(gaps)
    arrivals = arrivals[arrivals < start + seconds]
    done: list[tuple[float, float, bool]] = []
    errors: list[float] = []

    async def one(at: float, small: bool) -> None:
        try:
            await call(small)
            done.append((at - start, loop.time() - at, small))
        except Exception as exc:  # noqa: BLE001 - every failure is a data point
            errors.append(at - start)
            ERROR_KINDS[type(exc).__name__] += 1
            ERROR_EXAMPLES.setdefault(type(exc).__name__, str(exc)[:300])

    tasks = []
    smalls = rng.random(len(arrivals)) < MIX["small_fraction"]
    for at, small in zip(arrivals, smalls, strict=True):
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(at, bool(small))))
    await asyncio.gather(*tasks)
    return done, errors


class WeightSampler:
    """Published weights every ``period_s`` while an arm runs (a thread reading ZooKeeper)."""

    def __init__(self, zk, service: str, pods: list[Pod], period_s: float = 0.5) -> None:
        self.samples: list[tuple[float, list[float]]] = []
        self._stop = threading.Event()
        t0 = time.monotonic()

        def run() -> None:
            while not self._stop.wait(period_s):
                self.samples.append((time.monotonic() - t0, published_weights(zk, service, pods)))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def close(self) -> list[tuple[float, list[float]]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


def settled_at(samples: list[tuple[float, list[float]]], truth: list[float], after: float = 0.0,
               tolerance: float = 0.15) -> float | None:
    """The first time after ``after`` from which every weight ratio stays within ``tolerance`` of the truth."""
    def ok(ws: list[float]) -> bool:
        return all(w > 0 for w in ws) and all(abs((w / ws[0]) / (t / truth[0]) - 1) <= tolerance
                                              for w, t in zip(ws, truth, strict=True))
    found = None
    for t, ws in samples:
        if t < after:
            continue
        found = (t if found is None else found) if ok(ws) else None
    return None if found is None else found - after


def seconds_or(value: float | None, otherwise: str) -> str:
    return otherwise if value is None else f"{value:.1f} s"


def run_arm(name: str, pods: list[Pod], make_call, rate: float, seconds: float, swap: bool = False) -> Result:
    before = [p.requests() for p in pods]

    async def main() -> tuple[list[tuple[float, float, bool]], list[float]]:
        call, close = await make_call()
        try:
            if swap:
                async def swapper() -> None:
                    await asyncio.sleep(seconds / 2)
                    slow, fast = min(pods, key=lambda p: p.speed), max(pods, key=lambda p: p.speed)
                    set_speed(slow.models, "m", 1, fast.speed)
                    set_speed(fast.models, "m", 1, slow.speed)
                task = asyncio.ensure_future(swapper())
                out = await open_loop(call, rate, seconds)
                await task
                return out
            return await open_loop(call, rate, seconds)
        finally:
            await close()

    done, errors = asyncio.run(main())
    if swap:  # put the speeds back for the next arm
        for p in pods:
            set_speed(p.models, "m", 1, p.speed)
    counts = [p.requests() - b for p, b in zip(pods, before, strict=True)]
    total = max(1, sum(counts))
    lat = np.array([d for _, d, _ in done])
    by_second = []
    for s in range(int(seconds)):
        window = [d for t, d, _ in done if s <= t < s + 1]
        by_second.append(float(np.percentile(window, 99)) * 1000 if window else float("nan"))
    small = np.array([d for _, d, is_small in done if is_small])
    return Result(name, lat, len(errors), [c / total for c in counts], by_second, small=small, error_times=errors)


TIMEOUT_S = {"value": 30.0}
SUFFIXES = {"rows": {"load.count_rows": True}, "static": {"measure_static_pods": True}}


def weiclient_call(zk: str, service: str, policy: str, rows: int):
    """``policy`` may end in ``+rows`` (count load in rows: ``load.count_rows``) or ``+static``
    (``p2c_jsed``: reported capacities overrule static weights)."""
    policy, _, suffix = policy.partition("+")
    knobs = SUFFIXES.get(suffix, {})
    x = np.ones((rows, FEATURES), np.float32)
    small_x = np.ones((MIX["small_rows"], FEATURES), np.float32)
    big_x = np.ones((MIX["big_rows"], FEATURES), np.float32)

    async def make():
        client = WeiClient(zk, service, config=ClientConfig(balancer=policy, balancer_knobs=knobs,
                                                            timeout_s=TIMEOUT_S["value"], metrics=False))

        async def call(small: bool):
            inputs = x if not MIX["small_fraction"] else (small_x if small else big_x)
            await client.apredict("m", {"x": inputs})

        async def close():
            await client.aclose()

        return call, close

    return make


def haproxy_call(port: int, rows: int):
    body = wire.encode_request(wire.PredictRequest(model="m", inputs={"x": np.ones((rows, FEATURES), np.float32)}))

    async def make():
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = channel.unary_unary(wire.PREDICT_METHOD)

        async def call(small: bool):
            wire.decode_response(await stub(body, timeout=TIMEOUT_S["value"]))

        async def close():
            await channel.close()

        return call, close

    return make


def start_haproxy(pods: list[Pod], weights: list[float], workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_ports(1)[0]
    scale = 64 / max(weights)
    servers = "\n".join(f"    server {p.name} 127.0.0.1:{p.port} proto h2 weight {max(1, round(w * scale))}"
                        for p, w in zip(pods, weights, strict=True))
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client {TIMEOUT_S["value"] + 5:.0f}s
    timeout server {TIMEOUT_S["value"] + 5:.0f}s
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend pods
backend pods
    balance leastconn
{servers}
""")
    proc = subprocess.Popen([*die_with_parent_prefix(), "haproxy", "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=10)
    return proc, port


def publish_static(zk, service: str, pods: list[Pod], weights: list[float]) -> list[Publisher]:
    pubs = []
    for p, w in zip(pods, weights, strict=True):
        pub = Publisher(zk, InstanceRecord(service=service, id=p.name, address="127.0.0.1", port=p.port, weight=w,
                                           state=State.SERVING, models={"m": [1]}))
        pub.register()
        pubs.append(pub)
    return pubs


def published_weights(zk, service: str, pods: list[Pod]) -> list[float]:
    from registry.records import decode_instance
    from registry.zk import RegistryPaths

    out = []
    for p in pods:
        try:
            data, _ = zk.get(RegistryPaths("/weiserving").instance(service, p.name))
            out.append(decode_instance(data).weight)
        except Exception:
            out.append(float("nan"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speeds", default="1,2,4")
    ap.add_argument("--rows", type=int, default=400, help="rows per call")
    ap.add_argument("--load", type=float, default=0.8, help="offered load, a fraction of the fleet's capacity")
    ap.add_argument("--seconds", type=float, default=20.0, help="per arm")
    ap.add_argument("--arms", help="comma-separated arm names (default: all)")
    ap.add_argument("--swap", action="store_true", help="add speed-swap arms (weighted_p2c and p2c_jsed, measured)")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="every call's deadline")
    ap.add_argument("--plots", type=Path, help="write PNGs here")
    ap.add_argument("--mix", type=float, help="a fraction of 20-row calls among 2,000-row ones: counting calls vs "
                                              "counting rows, on the true weights")
    args = ap.parse_args()
    speeds = [float(s) for s in args.speeds.split(",")]
    TIMEOUT_S["value"] = args.timeout_s
    if args.mix is not None:
        MIX["small_fraction"] = args.mix
        args.rows = round(args.mix * MIX["small_rows"] + (1 - args.mix) * MIX["big_rows"])  # the mean, for the rate
    capacity_calls = sum(speeds) / UNIT_S / args.rows
    rate = args.load * capacity_calls
    policies = sorted(POLICIES)
    arms = ["rr/equal", "oracle", *(f"{p}/{w}" for p in policies if p not in ("round_robin",)
                                     for w in ("equal", "true")), "p2c_jsed+static/equal",
            "measured/weighted_p2c", "measured/p2c_jsed", "haproxy"]
    if args.swap:
        arms += ["swap/measured/weighted_p2c", "swap/measured/p2c_jsed"]
    if args.mix is not None:
        arms = ["oracle", "weighted_p2c/true", "weighted_p2c+rows/true", "least_outstanding/true", "p2c_jsed/true"]
    if args.arms:
        arms = [a for a in args.arms.split(",") if a]
    workdir = Path(tempfile.mkdtemp(prefix="wei-hetero-"))
    pods = [Pod(f"pod{i}", s, workdir / f"pod{i}") for i, s in enumerate(speeds)]
    for p in pods:
        write_model(p.models, "m", 1, speed=p.speed)
    load_before = os.getloadavg()
    results: list[Result] = []
    console.print(f"{len(pods)} pods, speeds {speeds} ({UNIT_S * 1e6:.0f} µs/row at speed 1), {args.rows} rows "
                  f"per call: capacity {capacity_calls:.0f} calls/s; offered {rate:.0f} calls/s "
                  f"({args.load:.0%}), {args.seconds:g} s per arm; load average {load_before[0]:.2f}")
    with ZooKeeperEnsemble(1) as ensemble:
        zk = connect(ZkSettings(hosts=ensemble.hosts))
        try:
            for p in pods:
                p.start()
            for p in pods:
                grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{p.port}")).result(timeout=60)
            true_w = [s / min(speeds) for s in speeds]
            statics = publish_static(zk, "equal", pods, [1.0] * len(pods)) + \
                publish_static(zk, "true", pods, true_w)
            measured_started = False
            for arm in arms:
                kind, _, rest = arm.partition("/")
                swap = kind == "swap"
                if swap:
                    kind, _, rest = rest.partition("/")
                if kind == "haproxy":
                    proc, port = start_haproxy(pods, true_w, workdir)
                    try:
                        make = haproxy_call(port, args.rows)
                        results.append(run_arm(arm, pods, make, rate, args.seconds))
                    finally:
                        proc.terminate()
                        proc.wait(10)
                    continue
                if kind == "measured":
                    if not measured_started:
                        for p in pods:
                            p.start_agent(ensemble.hosts, "measured")
                        measured_started = True
                        deadline = time.monotonic() + 60
                        while any(w != w for w in published_weights(zk, "measured", pods)):  # NaN: not yet
                            if time.monotonic() > deadline:
                                raise RuntimeError("the agents did not register within 60 s")
                            time.sleep(0.1)
                        sampler = WeightSampler(zk, "measured", pods)
                        warm = run_arm("warm-up", pods, weiclient_call(ensemble.hosts, "measured", rest, args.rows),
                                       rate, 60.0)
                        warm.weights = sampler.close()
                        results.append(warm)
                        took = settled_at(warm.weights, speeds)
                        console.print(f"agents from equal priors: weights {published_weights(zk, 'measured', pods)} "
                                      f"within 15 % of the true ratio after "
                                      f"{seconds_or(took, 'never (60 s)')}; "
                                      f"warm-up p99 {warm.pct(99):.1f} ms")
                    service, policy = "measured", rest
                elif kind == "rr":
                    service, policy = rest, "round_robin"
                elif kind == "oracle":
                    service, policy = "true", "round_robin"
                else:
                    service, policy = rest, kind
                sampler = WeightSampler(zk, "measured", pods) if kind == "measured" else None
                result = run_arm(arm, pods, weiclient_call(ensemble.hosts, service, policy, args.rows), rate,
                                 args.seconds, swap=swap)
                if sampler is not None:
                    result.weights = sampler.close()
                if swap:
                    swapped = list(speeds)
                    lo, hi = speeds.index(min(speeds)), speeds.index(max(speeds))
                    swapped[lo], swapped[hi] = speeds[hi], speeds[lo]
                    took = settled_at(result.weights, swapped, after=args.seconds / 2)
                    late = sum(1 for t in result.error_times if t >= args.seconds / 2)
                    console.print(f"  after the swap: p99 per second adapted after "
                                  f"{seconds_or(result.adapted_after(), 'more than the arm lasted')}, "
                                  f"{late} errors; published weights within 15 % of the new ratio after "
                                  f"{seconds_or(took, 'more than the arm lasted')}")
                results.append(result)
                kinds = ", ".join(f"{k} {n}" for k, n in ERROR_KINDS.most_common())
                console.print(f"  {arm}: p99 {result.pct(99):.1f} ms, errors {result.errors}"
                              + (f" ({kinds})" if kinds else ""), style="dim")
                for kind, text in ERROR_EXAMPLES.items():
                    console.print(f"    e.g. {kind}: {text}", style="dim", markup=False)
                ERROR_KINDS.clear()
                ERROR_EXAMPLES.clear()
            for pub in statics:
                pub.close()
        finally:
            for p in pods:
                p.stop()
            zk.stop()
            zk.close()
    load_after = os.getloadavg()
    report(results, speeds, load_before, load_after)
    if args.plots:
        plot(results, args.plots)
    if os.environ.get("HETERO_KEEP"):
        console.print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(results: list[Result], speeds: list[float], before, after) -> None:
    by = {r.arm: r for r in results}
    oracle, rr = by.get("oracle"), by.get("rr/equal")
    true_share = [s / sum(speeds) for s in speeds]
    shown = " ".join(f"{100 * s:.0f}%" for s in true_share)
    table = Table(title=f"open-loop latency from scheduled arrival (true shares {shown}; shares count retries)")
    mixed = any(r.small.size for r in results)
    cols = ("arm", "p50 ms", "p99 ms", "p99.9 ms", *(("small p99 ms",) if mixed else ()), "errors", "shares",
            "p99 / oracle", "p99 / rr")
    for col in cols:
        table.add_column(col, justify="left" if col in ("arm", "shares") else "right")
    for r in results:
        shares = " ".join(f"{100 * s:.0f}%" for s in r.shares)
        small = (f"{float(np.percentile(r.small, 99)) * 1000:.1f}" if r.small.size else "-",) if mixed else ()
        table.add_row(r.arm, f"{r.pct(50):.1f}", f"{r.pct(99):.1f}", f"{r.pct(99.9):.1f}", *small, str(r.errors),
                      shares,
                      f"{r.pct(99) / oracle.pct(99):.2f}" if oracle else "-",
                      f"{r.pct(99) / rr.pct(99):.3f}" if rr else "-")
    console.print(table)
    for r in results:
        if r.weights:
            console.print(f"{r.arm}: published weights {r.weights[-1][1]}")
        if r.arm.startswith("swap/"):
            half = len(r.p99_by_second) // 2
            console.print(f"{r.arm}: p99 per second around the swap (at {half} s): "
                          + " ".join(f"{v:.0f}" for v in r.p99_by_second[half - 3:half + 8])
                          + f"; adapted after {seconds_or(r.adapted_after(), 'never')}")
    console.print(f"load average: {before[0]:.2f} before, {after[0]:.2f} after (1 min), {os.cpu_count()} CPUs")


def plot(results: list[Result], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors[:len(results)] or None)
    for r in results:
        if r.latencies.size:
            xs = np.sort(r.latencies) * 1000
            ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=f"{r.arm} (p99 {r.pct(99):.0f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency from scheduled arrival (ms, log)")
    ax.set_ylabel("fraction of calls")
    ax.set_ylim(0.5, 1.001)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("heterogeneous fleet: latency CDF per routing arm")
    fig.tight_layout()
    fig.savefig(out / "hetero_cdf.png", dpi=110)
    weighed = [r for r in results if len(r.weights) > 1]
    if weighed:
        fig, axes = plt.subplots(len(weighed), 1, figsize=(9, 3 * len(weighed)), squeeze=False)
        for ax, r in zip(axes[:, 0], weighed, strict=True):
            ts = [t for t, _ in r.weights]
            for i in range(len(r.weights[0][1])):
                ax.plot(ts, [ws[i] for _, ws in r.weights], label=f"pod{i}")
            ax.set_title(f"{r.arm}: published weights (true speeds ratio as configured)")
            ax.set_xlabel("seconds")
            ax.set_ylabel("weight (samples/s)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "hetero_weights.png", dpi=110)
    swaps = [r for r in results if r.arm.startswith("swap/")]
    if swaps:
        fig, ax = plt.subplots(figsize=(9, 4))
        for r in swaps:
            ax.plot(range(len(r.p99_by_second)), r.p99_by_second, marker="o", label=r.arm)
        ax.axvline(len(swaps[0].p99_by_second) / 2, color="grey", linestyle="--", label="speeds swapped")
        ax.set_xlabel("second of the arm")
        ax.set_ylabel("p99 in that second (ms)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "hetero_swap.png", dpi=110)
    console.print(f"plots in {out}/")


if __name__ == "__main__":
    sys.exit(main())
