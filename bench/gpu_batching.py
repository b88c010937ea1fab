"""Batched vs unbatched throughput of a PyTorch MLP ranking model through our batcher on CUDA.

    python bench/gpu_batching.py [--device cuda] [--duration 10] [--threads 64] [--rows 8]

Self-contained: needs torch and numpy, plus grpcio (imported by our error
module); TensorFlow and msgpack are not used. Run from anywhere: it puts the
repository root on ``sys.path`` to import ``serving``. No gRPC here: callers
are threads submitting straight to the runner, so the figures isolate what
dynamic batching does for the device. Prints rows/s, p50/p99 and the ratios
for two model sizes, and the latency of a 2,000-candidate call. Finishes in
about 1-2 minutes (``--duration`` seconds per run x 4 runs + setup).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from serving.backends.signature import Signature, spec  # noqa: E402
from serving.backends.torch import TorchBackend  # noqa: E402
from serving.batching import Batcher, DirectRunner  # noqa: E402
from serving.config import BatchingConfig  # noqa: E402

N_DENSE, N_SPARSE = 13, 26
SIGNATURE = Signature(inputs={"dense": spec("<f4", [None, N_DENSE]),
                              "sparse": spec("<i8", [None, N_SPARSE])},
                      outputs={"ctr": spec("<f4", [None])})


class RankingMlp(torch.nn.Module):
    """Embeddings for 26 categorical fields + an MLP tower (a DLRM-like ranking model)."""

    def __init__(self, vocab: int, dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.vocab = vocab
        self.emb = torch.nn.Embedding(N_SPARSE * vocab, dim)
        self.register_buffer("offsets", torch.arange(N_SPARSE) * vocab)
        layers, width = [], N_SPARSE * dim + N_DENSE
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        self.tower = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        e = self.emb(torch.remainder(sparse, self.vocab) + self.offsets).flatten(1)
        x = torch.cat([e, torch.log1p(dense.clamp_min(0))], dim=1)
        return torch.sigmoid(self.tower(x)).squeeze(1)


def inputs(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"dense": rng.lognormal(1.0, 1.2, (rows, N_DENSE)).astype(np.float32),
            "sparse": rng.integers(0, 10**6, (rows, N_SPARSE), dtype=np.int64)}


def drive(runner, threads: int, rows: int, duration: float) -> tuple[float, float, float]:
    """rows/s, p50 ms, p99 ms with ``threads`` closed-loop callers."""
    stop = time.perf_counter() + duration
    lat: list[list[float]] = [[] for _ in range(threads)]
    rng = np.random.default_rng(0)
    reqs = [inputs(rows, rng) for _ in range(threads)]

    def caller(i: int) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            runner.submit(reqs[i], rows).result(60)
            lat[i].append((time.perf_counter() - t0) * 1000)

    ts = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    all_lat = np.concatenate([np.array(x) for x in lat])
    return all_lat.size * rows / elapsed, *np.percentile(all_lat, [50, 99])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=64)
    p.add_argument("--rows", type=int, default=8, help="candidates per request")
    p.add_argument("--max-batch-size", type=int, default=1024)
    args = p.parse_args(argv)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {args.threads} callers x "
          f"{args.rows} rows, {args.duration:.0f} s per run", flush=True)
    rng = np.random.default_rng(1)
    cfg = BatchingConfig(max_batch_size=args.max_batch_size, batch_timeout_micros=500,
                         num_batch_threads=2, max_enqueued_batches=64)
    print(f"{'model':<8} {'mode':<10} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for label, hidden in (("mlp-S", (256, 128)), ("mlp-L", (2048, 2048, 1024))):
        torch.manual_seed(0)
        backend = TorchBackend(RankingMlp(vocab=20000, dim=32, hidden=hidden), SIGNATURE,
                               device=args.device)
        for n in (1, args.rows, args.max_batch_size):   # warm up kernels and allocator
            backend.predict(inputs(n, rng))
        results = {}
        for mode in ("batched", "unbatched"):
            runner = Batcher(backend, cfg, name=label) if mode == "batched" else \
                DirectRunner(backend)
            results[mode] = drive(runner, args.threads, args.rows, args.duration)
            big = inputs(2000, rng)
            runner.submit(big, 2000).result(60)
            t = []
            for _ in range(10):
                t0 = time.perf_counter()
                runner.submit(big, 2000).result(60)
                t.append((time.perf_counter() - t0) * 1000)
            runner.close()
            rps, p50, p99 = results[mode]
            print(f"{label:<8} {mode:<10} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f}   "
                  f"2000-candidate call {np.median(t):.2f} ms", flush=True)
        (b, b50, b99), (u, u50, u99) = results["batched"], results["unbatched"]
        print(f"{label}: batched/unbatched throughput x{b / u:.2f}, p50 x{b50 / u50:.2f}, "
              f"p99 x{b99 / u99:.2f}", flush=True)
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
