"""Dynamic batching vs none, side by side, on the example CTR models.

    python bench/batching.py [--models DIR] [--duration 5] [--repeats 3] [--concurrency 32]
                             [--rows 4] [--defaults] [--skip-reload | --only-reload]

For the small Wide&Deep CTR model and a heavier one (``ctr_heavy``), it
starts ``wei-serve`` twice as separate processes (batched and
``--no-batching``), drives each with ``--concurrency`` concurrent callers
(grpc.aio, one event loop) sending ``--rows``-row requests for
``--duration`` seconds, alternating between the two ``--repeats`` times, and
prints the median trial's throughput, p50 and p99 for both, and the ratios.
The batched server runs with fixed flags (``BATCHED``: 256 rows, 1 ms
timeout, a batch thread per CPU), or with ``--defaults`` with the server's
own batching defaults (:class:`serving.config.BatchingConfig`).
It then runs the batcher alone in this process (threads calling it, no
gRPC), which shows what batching does for the model once transport costs are
out of the picture. It also times one 2,000-candidate ranking call (median
of 41, the two servers called in turn) and measures the p99 of ``ctr`` while ``ctr_heavy`` is hot-reloaded
again and again in the same server. Client and server share the machine's cores: read the
ratios, not the absolute figures. Without ``--models`` it exports the models
to a temporary directory first (about 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from protocol import wire  # noqa: E402

BATCHED = ["--max-batch-size", "256", "--batch-timeout-micros", "1000",
           "--num-batch-threads", str(os.cpu_count() or 1), "--max-enqueued-batches", "64"]
UNBATCHED = ["--no-batching"]


@dataclass(frozen=True, kw_only=True)
class Run:
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else 0.0


def median_run(runs: list[Run]) -> Run:
    """The trial with the median throughput (its own latencies kept together)."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def export_models(root: Path) -> None:
    from examples.ctr_widedeep.widedeep import HEAVY, ModelSpec, export
    export(root / "ctr", 1, spec=ModelSpec(), steps=300)
    export(root / "ctr_heavy", 1, spec=HEAVY, steps=10)


def only(repo: Path, models: list[str], tmp: Path) -> Path:
    """A repository view holding just ``models`` (symlinks; nothing copied)."""
    view = Path(tempfile.mkdtemp(dir=tmp))
    for m in models:
        (view / m).symlink_to(repo / m, target_is_directory=True)
    return view


@contextlib.contextmanager
def server(models_dir: Path, flags: list[str]) -> Iterator[int]:
    cmd = [sys.executable, "-m", "serving.cli", "--models", str(models_dir), "--host",
           "127.0.0.1", "--port", "0", "--status-port", "-1", "--log-level", "WARNING", *flags]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.search(r":(\d+)", line.split(" on ", 1)[-1])
        if not m:
            raise SystemExit(f"server did not start: {line!r}")
        yield int(m.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def body_for(rows: int, seed: int = 0) -> bytes:
    from examples.ctr_widedeep.widedeep import synthetic_data
    dense, sparse, _ = synthetic_data(rows, seed)
    return wire.encode_request(wire.PredictRequest(model="ctr", inputs={"dense": dense,
                                                                        "sparse": sparse}))


def with_model(body: bytes, model: str) -> bytes:
    req = wire.decode_request(body)
    return wire.encode_request(wire.PredictRequest(model=model, inputs=dict(req.inputs)))


async def _load(port: int, body: bytes, duration: float, concurrency: int) -> Run:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(wire.PREDICT_METHOD)
        stop = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    wire.decode_response(await call(body, timeout=30))
                    latencies.append((time.perf_counter() - t0) * 1000)
                except grpc.aio.AioRpcError:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Run(requests=len(latencies), seconds=seconds, latencies_ms=np.array(latencies),
               errors=errors)


def load(port: int, body: bytes, duration: float, concurrency: int) -> Run:
    asyncio.run(_load(port, body, min(1.0, duration / 4), concurrency))   # warm the path
    return asyncio.run(_load(port, body, duration, concurrency))


def ranking_call_ms(ports: dict[str, int], body: bytes, n: int = 41) -> dict[str, float]:
    """Median latency of one call alone, per server; the servers are called in turn, in an
    order that alternates (a call just after the other server's may run warmer or colder)."""
    channels = {mode: grpc.insecure_channel(f"127.0.0.1:{port}") for mode, port in ports.items()}
    times: dict[str, list[float]] = {mode: [] for mode in ports}
    try:
        calls = {mode: ch.unary_unary(wire.PREDICT_METHOD) for mode, ch in channels.items()}
        for i in range(n + 2):
            for mode, call in sorted(calls.items(), reverse=bool(i % 2)):
                t0 = time.perf_counter()
                wire.decode_response(call(body, timeout=60))
                times[mode].append((time.perf_counter() - t0) * 1000)
    finally:
        for ch in channels.values():
            ch.close()
    return {mode: float(np.median(ts[2:])) for mode, ts in times.items()}


def in_process(repo: Path, model: str, args: argparse.Namespace) -> dict[str, float]:
    """req/s of the batcher alone (threads calling the runner, no gRPC), batched vs not."""
    from serving.backends import load_backend
    from serving.batching import Batcher, DirectRunner
    from serving.config import BatchingConfig

    backend = load_backend(repo / model / "1")
    req = wire.decode_request(body_for(args.rows)).inputs
    cfg = BatchingConfig() if args.defaults else BatchingConfig(
        max_batch_size=256, batch_timeout_micros=1000, num_batch_threads=os.cpu_count() or 1,
        max_enqueued_batches=64)
    out = {}
    for mode in ("batched", "unbatched"):
        runner = Batcher(backend, cfg) if mode == "batched" else DirectRunner(backend)
        stop = time.perf_counter() + args.duration
        counts = [0] * args.concurrency

        def caller(i: int, runner=runner, stop=stop, counts=counts) -> None:
            while time.perf_counter() < stop:
                runner.run(req, args.rows)         # the server's call path
                counts[i] += 1

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(args.concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[mode] = sum(counts) / (time.perf_counter() - start)
        runner.close()
    backend.close()
    return out


def reload_interference(repo: Path, tmp: Path, args: argparse.Namespace) -> tuple[Run, Run, int]:
    """p99 of ctr with and without ctr_heavy being reloaded in the same server."""
    view = Path(tempfile.mkdtemp(dir=tmp))
    (view / "ctr").symlink_to(repo / "ctr", target_is_directory=True)
    shutil.copytree(repo / "ctr_heavy", view / "ctr_heavy")
    body = body_for(args.rows)
    with server(view, ([] if args.defaults else BATCHED) + ["--poll-interval-s", "0.2"]) as port:
        quiet = load(port, body, args.duration, args.concurrency)
        stop = threading.Event()
        reloads = [0]

        def churn() -> None:
            version = 1
            while not stop.is_set():
                version += 1
                shutil.copytree(repo / "ctr_heavy" / "1", view / "ctr_heavy" / f".{version}")
                os.rename(view / "ctr_heavy" / f".{version}", view / "ctr_heavy" / str(version))
                reloads[0] += 1
                stop.wait(1.0)

        t = threading.Thread(target=churn, daemon=True)
        t.start()
        busy = load(port, body, args.duration, args.concurrency)
        stop.set()
        t.join()
    return quiet, busy, reloads[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, help="repository with ctr/1 and ctr_heavy/1")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="alternating trials per mode; "
                   "the median trial is reported")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rows", type=int, default=4, help="candidates per request")
    p.add_argument("--defaults", action="store_true", help="batched server with the server's "
                   "batching defaults instead of the fixed BATCHED flags")
    p.add_argument("--skip-reload", action="store_true", help="skip the hot-reload run")
    p.add_argument("--only-reload", action="store_true", help="only the hot-reload run")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        repo = args.models
        if repo is None:
            repo = tmp / "models"
            print("exporting ctr and ctr_heavy ...", flush=True)
            export_models(repo)
        batched = [] if args.defaults else BATCHED
        print(f"machine: {os.cpu_count()} CPUs; concurrency {args.concurrency}, "
              f"{args.rows} rows/request, median of {args.repeats} alternating "
              f"{args.duration:.0f} s trials; batched: {' '.join(batched) or 'server defaults'}\n",
              flush=True)
        if args.only_reload:
            report_reload(repo, tmp, args)
            return 0
        print(f"{'model':<10} {'mode':<10} {'req/s':>8} {'rows/s':>9} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'errors':>6}")
        body = body_for(args.rows)
        big = body_for(2000, seed=1)
        ranking: dict[str, float] = {}
        runs: dict[tuple[str, str], Run] = {}
        for model in ("ctr", "ctr_heavy"):
            view = only(repo, [model], tmp)
            req = with_model(body, model)
            with server(view, batched) as bport, server(view, UNBATCHED) as uport:
                ports = {"batched": bport, "unbatched": uport}
                # alternate the two servers so that drift on a shared machine hits both
                trials: dict[str, list[Run]] = {"batched": [], "unbatched": []}
                for _ in range(args.repeats):
                    for mode, port in ports.items():
                        trials[mode].append(load(port, req, args.duration, args.concurrency))
                if model == "ctr":
                    ranking = ranking_call_ms(ports, big)
            for mode, rs in trials.items():
                r = runs[model, mode] = median_run(rs)
                print(f"{model:<10} {mode:<10} {r.rps:>8.0f} {r.rps * args.rows:>9.0f} "
                      f"{r.pct(50):>8.2f} {r.pct(99):>8.2f} {r.errors:>6}", flush=True)
        print()
        for model in ("ctr", "ctr_heavy"):
            b, u = runs[model, "batched"], runs[model, "unbatched"]
            print(f"{model}: batched/unbatched throughput x{b.rps / u.rps:.2f}, "
                  f"p50 x{b.pct(50) / u.pct(50):.2f}, p99 x{b.pct(99) / u.pct(99):.2f}")
        for model in ("ctr", "ctr_heavy"):
            ip = in_process(repo, model, args)
            print(f"{model} in-process (no gRPC, {args.concurrency} threads): batched "
                  f"{ip['batched']:.0f} req/s vs unbatched {ip['unbatched']:.0f} req/s "
                  f"(x{ip['batched'] / ip['unbatched']:.2f})", flush=True)
        print(f"one 2,000-candidate ranking call (ctr, median of 41): "
              f"batched {ranking['batched']:.2f} ms, unbatched {ranking['unbatched']:.2f} ms "
              f"(x{ranking['batched'] / ranking['unbatched']:.3f})")
        if not args.skip_reload:
            report_reload(repo, tmp, args)
    return 0


def report_reload(repo: Path, tmp: Path, args: argparse.Namespace) -> None:
    quiet, busy, n = reload_interference(repo, tmp, args)
    print(f"ctr p99 while ctr_heavy reloads ({n} reloads): {busy.pct(99):.2f} ms vs "
          f"{quiet.pct(99):.2f} ms without (x{busy.pct(99) / quiet.pct(99):.2f}); "
          f"p50 x{busy.pct(50) / quiet.pct(50):.2f}; throughput x{busy.rps / quiet.rps:.2f}",
          flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
