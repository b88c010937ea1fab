"""WeiClient overhead against a raw gRPC stub, side by side in one run.

One model server (a cheap Python model, so the client's own cost shows),
registered in an embedded ZooKeeper. For each payload (a small call and a
100 KB ranking call), calls alternate between

    raw:       encode_request -> channel.unary_unary(Predict) -> decode_response
    WeiClient: client.predict(...)  (snapshot, split, P2C pick, retry loop, load report, metrics)

so both see the same machine noise; the ratio of medians is printed (target
<= 1.05). Then the balancer's pick cost at 10, 100 and 1,000 endpoints.

    .venv/bin/python bench/overhead.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from registry.embedded import ZooKeeperEnsemble, free_ports  # noqa: E402
from registry.publisher import Publisher  # noqa: E402
from registry.records import InstanceRecord, State  # noqa: E402
from registry.zk import ZkSettings, connect  # noqa: E402
from weiclient import ClientConfig, WeiClient, wire  # noqa: E402

MODEL = """
import numpy as np
from serving.backends.signature import Signature, spec

class Sum:
    signature = Signature(inputs={"x": spec("<f4", [None, 13])}, outputs={"score": spec("<f4", [None])})

    def predict(self, inputs):
        return {"score": inputs["x"].sum(axis=1)}

def load(path):
    return Sum()
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000, help="calls per variant and payload")
    args = ap.parse_args()
    console = Console()
    models = Path(tempfile.mkdtemp(prefix="wei-bench-")) / "models"
    (models / "rank" / "1").mkdir(parents=True)
    (models / "rank" / "1" / "model.py").write_text(textwrap.dedent(MODEL))
    # The server is its own process, as in production (in one process the client's
    # Python would compete with the server's threads for the GIL). No batching: one
    # request is one model call, so only the client differs between the variants.
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, "-m", "serving.cli", "--models", str(models), "--host", "127.0.0.1",
                               "--port", str(port), "--status-port", "-1", "--no-batching", "--log-level", "warning"],
                              cwd=Path(__file__).resolve().parent.parent)
    grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=60)
    payloads = {
        "small (1 row, 52 B)": np.ones((1, 13), np.float32),
        "ranking (2,000 rows, 104 KB)": np.random.default_rng(0).random((2000, 13), dtype=np.float32),
    }
    rows = []
    with ZooKeeperEnsemble(1) as zk:
        admin = connect(ZkSettings(hosts=zk.hosts))
        pub = Publisher(admin, InstanceRecord(service="bench", id="pod-0", address="127.0.0.1",
                                              port=port, weight=1.0, state=State.SERVING,
                                              models={"rank": [1]}))
        pub.register()
        client = WeiClient(zk.hosts, "bench", config=ClientConfig(timeout_s=5.0))
        client._watcher.wait_for(lambda s: len(s.routable()) == 1)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        raw = channel.unary_unary(wire.PREDICT_METHOD)

        def raw_call(x: np.ndarray) -> np.ndarray:
            body = raw(wire.encode_request(wire.PredictRequest(model="rank", inputs={"x": x})), timeout=5.0)
            return wire.decode_response(body).results["rank"].outputs["score"]

        def sdk_call(x: np.ndarray) -> np.ndarray:
            return client.predict("rank", {"x": x})["score"]

        with Progress(console=console, transient=True) as progress:
            for name, x in payloads.items():
                np.testing.assert_allclose(raw_call(x), sdk_call(x))
                for _ in range(200):  # warm both paths
                    raw_call(x)
                    sdk_call(x)
                t_raw, t_sdk = [], []
                task = progress.add_task(name, total=args.calls)
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    raw_call(x)
                    t1 = time.perf_counter()
                    sdk_call(x)
                    t2 = time.perf_counter()
                    t_raw.append(t1 - t0)
                    t_sdk.append(t2 - t1)
                    progress.advance(task)
                rows.append((name, t_raw, t_sdk))
        client.close()
        channel.close()
        pub.close()
        admin.stop()
        admin.close()
    server.terminate()
    server.wait(timeout=30)

    table = Table(title=f"WeiClient.predict vs raw gRPC stub, one wei-serve process ({args.calls} calls each, "
                        "interleaved)")
    for col in ("payload", "raw p50 µs", "WeiClient p50 µs", "ratio p50", "raw p99 µs", "WeiClient p99 µs"):
        table.add_column(col, justify="left" if col == "payload" else "right")
    for name, t_raw, t_sdk in rows:
        r50, s50 = statistics.median(t_raw), statistics.median(t_sdk)
        table.add_row(name, f"{r50 * 1e6:.0f}", f"{s50 * 1e6:.0f}", f"{s50 / r50:.3f}",
                      f"{pct(t_raw, 0.99) * 1e6:.0f}", f"{pct(t_sdk, 0.99) * 1e6:.0f}")
    console.print(table)
    console.print("target: ratio of medians <= 1.05\n")
    from bench import pick_cost

    pick_cost.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
