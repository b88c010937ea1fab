"""What the Open Inference Protocol costs against our msgpack protocol, side by side in one run.

One wei-serve process (as in production, batching on) serves two models with
the CTR signature (dense float32 [n, 13], sparse int64 [n, 26] -> ctr, logit):
a toy Python model that costs next to nothing, so the protocols' own cost
shows, and the example Wide&Deep SavedModel (skipped without TensorFlow). On
the 2,000-candidate call (520 KB of inputs), rounds interleave, in rotating
order, four ways to make the same call:

    msgpack:          wire.encode_request -> weiserving.v1 Predict -> wire.decode_response
    OIP gRPC, stub:   protocol.oip encode  -> inference ModelInfer  -> protocol.oip decode
    OIP gRPC, triton: tritonclient.grpc InferInput/infer/as_numpy (the official client)
    OIP REST, triton: tritonclient.http, binary tensors
    WeiClient, msgpack: WeiClient.predict over a registry record that says weiserving
    WeiClient, OIP:     WeiClient.predict over a record of the same pod that says oip

The two WeiClient ways (a one-node ZooKeeper of this run's own, ``--no-weiclient``
to skip) price what a ranking service pays to talk OIP to a mixed fleet's
third-party pods: the same client, balancer and retries, another codec.

The stub and tritonclient send the same bytes, so stub vs msgpack is the
protocol's cost (protobuf on both sides) and tritonclient vs stub the client
library's. A second table times each codec step in this process on the same
payload (what each side of a call spends encoding and decoding).

    .venv/bin/python bench/oip.py [--calls 300] [--no-tf]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from protocol import oip, wire  # noqa: E402
from protocol.oip.infer import (  # noqa: E402
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)
from registry.testing import free_ports  # noqa: E402
from registry.testing.process import die_with_parent_prefix  # noqa: E402

TOY = """
import numpy as np
from serving.backends.signature import Signature, spec

class Toy:
    signature = Signature(inputs={"dense": spec("<f4", [None, 13]), "sparse": spec("<i8", [None, 26])},
                          outputs={"ctr": spec("<f4", [None]), "logit": spec("<f4", [None])})

    def predict(self, inputs):
        logit = inputs["dense"][:, 0].copy()
        return {"ctr": logit, "logit": logit}

def load(path):
    return Toy()
"""
ROWS = 2000
Call = Callable[[str, dict[str, np.ndarray]], np.ndarray]


def median_us(xs: list[float]) -> float:
    return statistics.median(xs) * 1e6


def pct_us(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="calls per way and model")
    ap.add_argument("--no-tf", action="store_true", help="skip the Wide&Deep model")
    ap.add_argument("--no-weiclient", action="store_true", help="skip the WeiClient ways (they start a ZooKeeper)")
    args = ap.parse_args()
    console = Console()
    models = Path(tempfile.mkdtemp(prefix="wei-bench-oip-")) / "models"
    (models / "toy" / "1").mkdir(parents=True)
    (models / "toy" / "1" / "model.py").write_text(textwrap.dedent(TOY))
    names = ["toy"] + (["ctr"] if not args.no_tf and export_ctr(models, console) else [])
    port, status_port = free_ports(2)
    server = subprocess.Popen([*die_with_parent_prefix(), sys.executable, "-m", "serving.cli", "--models", str(models),
                               "--host", "127.0.0.1", "--port", str(port), "--status-port", str(status_port),
                               "--log-level", "warning"], cwd=Path(__file__).resolve().parent.parent)
    rng = np.random.default_rng(0)
    inputs = {"dense": rng.random((ROWS, 13), dtype=np.float32),
              "sparse": rng.integers(0, 10_000, (ROWS, 26), dtype=np.int64)}
    with ExitStack() as stack:
        stack.callback(server.wait, timeout=30)
        stack.callback(server.terminate)
        grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=120)
        clients = {} if args.no_weiclient else stack.enter_context(weiclients(port, names, console))
        results = {name: measure(port, status_port, name, inputs, args.calls, console, clients) for name in names}
    report(results, console)
    codec_table(inputs, console)
    return 0


def export_ctr(models: Path, console: Console) -> bool:
    try:
        from examples.ctr_widedeep import widedeep
    except ImportError:
        console.print("TensorFlow not installed: no Wide&Deep rows")
        return False
    with console.status("exporting the Wide&Deep CTR model ..."):
        widedeep.export(models / "ctr", 1, steps=50)
    return True


@contextmanager
def weiclients(port: int, names: list[str], console: Console) -> Iterator[dict[str, Any]]:
    """A one-node ZooKeeper, the pod registered twice (one record per protocol), a WeiClient for each."""
    from kazoo.client import KazooClient

    from registry.records import InstanceRecord, Protocol, State, encode_instance
    from registry.testing import ZooKeeperEnsemble
    from registry.zk import RegistryPaths
    from weiclient import ClientConfig, WeiClient

    with console.status("starting ZooKeeper for the WeiClient ways ..."), ExitStack() as stack:
        zk = stack.enter_context(ZooKeeperEnsemble(1))
        kz = KazooClient(hosts=zk.hosts)
        kz.start(timeout=30)
        stack.callback(kz.close)
        stack.callback(kz.stop)
        paths, clients = RegistryPaths(), {}
        for protocol in Protocol:
            service = f"bench-{protocol.value}"
            rec = InstanceRecord(service=service, id="pod-0", address="127.0.0.1", port=port, weight=1.0,
                                 state=State.SERVING, models=dict.fromkeys(names, [1]), protocol=protocol)
            kz.create(paths.instance(service, rec.id), encode_instance(rec), ephemeral=True, makepath=True)
            client = clients[protocol.value] = WeiClient(zk.hosts, service, config=ClientConfig(metrics=False))
            stack.callback(client.close)
        yield clients


def ways(port: int, status_port: int, clients: dict[str, Any]) -> tuple[dict[str, Call], Callable[[], None]]:
    import tritonclient.grpc as tg
    import tritonclient.http as th

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 30)])
    predict = channel.unary_unary(wire.PREDICT_METHOD)
    model_infer = channel.unary_unary(oip.METHODS["ModelInfer"])
    tgc = tg.InferenceServerClient(f"127.0.0.1:{port}")
    thc = th.InferenceServerClient(f"127.0.0.1:{status_port}", network_timeout=10)

    def msgpack_call(model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        body = predict(wire.encode_request(wire.PredictRequest(model=model, inputs=inputs)), timeout=10)
        return wire.decode_response(body).outputs()["ctr"]

    def stub_call(model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return decode_infer_response(model_infer(encode_infer_request(model, inputs), timeout=10)).outputs["ctr"]

    def triton_call(mod, client, **kw) -> Call:  # noqa: ANN001 (tritonclient's grpc or http module)
        def call(model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
            tensors = []
            for name, arr in inputs.items():
                t = mod.InferInput(name, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64")
                t.set_data_from_numpy(arr)
                tensors.append(t)
            return client.infer(model, tensors, **kw).as_numpy("ctr")
        return call

    def close() -> None:
        tgc.close()
        thc.close()
        channel.close()

    def weiclient_call(client) -> Call:  # noqa: ANN001
        def call(model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
            return client.predict(model, inputs, timeout=10)["ctr"]
        return call

    found = {"msgpack": msgpack_call, "OIP gRPC, stub": stub_call,
             "OIP gRPC, tritonclient": triton_call(tg, tgc, client_timeout=10),
             "OIP REST, tritonclient": triton_call(th, thc)}
    if clients:
        found["WeiClient, msgpack"] = weiclient_call(clients["weiserving"])
        found["WeiClient, OIP"] = weiclient_call(clients["oip"])
    return found, close


def measure(port: int, status_port: int, model: str, inputs: dict[str, np.ndarray], calls: int,
            console: Console, clients: dict[str, Any]) -> dict[str, list[float]]:
    calls_by_way, close = ways(port, status_port, clients)
    order = list(calls_by_way)
    times: dict[str, list[float]] = {w: [] for w in order}
    try:
        want = calls_by_way["msgpack"](model, inputs)
        for way, call in calls_by_way.items():
            np.testing.assert_array_equal(call(model, inputs), want, err_msg=way)
            for _ in range(20):
                call(model, inputs)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{model}: {calls} rounds", total=calls)
            for i in range(calls):
                for way in order[i % len(order):] + order[:i % len(order)]:   # rotate: no way always first
                    t0 = time.perf_counter()
                    calls_by_way[way](model, inputs)
                    times[way].append(time.perf_counter() - t0)
                progress.advance(task)
    finally:
        close()
    return times


def report(results: dict[str, dict[str, list[float]]], console: Console) -> None:
    table = Table(title=f"One {ROWS}-candidate CTR call (520 KB in), one wei-serve process, calls interleaved")
    for col in ("model", "way", "n", "p50 µs", "p90 µs", "p50 / msgpack", "p50 - msgpack µs"):
        table.add_column(col, justify="left" if col in ("model", "way") else "right")
    for model, times in results.items():
        base = median_us(times["msgpack"])
        for way, ts in times.items():
            m = median_us(ts)
            table.add_row(model, way, str(len(ts)), f"{m:.0f}", f"{pct_us(ts, 0.9):.0f}", f"{m / base:.2f}",
                          f"{m - base:+.0f}")
    console.print(table)


def codec_table(inputs: dict[str, np.ndarray], console: Console, n: int = 200) -> None:
    outputs = {"ctr": np.zeros(ROWS, np.float32), "logit": np.zeros(ROWS, np.float32)}
    m_req = wire.encode_request(wire.PredictRequest(model="ctr", inputs=inputs))
    m_resp = wire.encode_response(wire.PredictResponse(results={"ctr": wire.ModelResult(version=1, outputs=outputs)}))
    o_req = encode_infer_request("ctr", inputs)
    o_resp = encode_infer_response("ctr", 1, outputs)
    steps = [
        ("client encodes the request", lambda: wire.encode_request(wire.PredictRequest(model="ctr", inputs=inputs)),
         lambda: encode_infer_request("ctr", inputs)),
        ("server decodes the request", lambda: wire.decode_request(m_req), lambda: decode_infer_request(o_req)),
        ("server encodes the response",
         lambda: wire.encode_response(wire.PredictResponse(results={"ctr": wire.ModelResult(version=1,
                                                                                            outputs=outputs)})),
         lambda: encode_infer_response("ctr", 1, outputs)),
        ("client decodes the response", lambda: wire.decode_response(m_resp), lambda: decode_infer_response(o_resp)),
    ]
    table = Table(title=f"Codec steps on the same call, in this process (median of {n})")
    for col in ("step", "msgpack µs", "OIP µs", "OIP - msgpack µs"):
        table.add_column(col, justify="left" if col == "step" else "right")
    total = [0.0, 0.0]
    for name, m_fn, o_fn in steps:
        tm, to = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            m_fn()
            t1 = time.perf_counter()
            o_fn()
            to.append(time.perf_counter() - t1)
            tm.append(t1 - t0)
        a, b = median_us(tm), median_us(to)
        total[0] += a
        total[1] += b
        table.add_row(name, f"{a:.0f}", f"{b:.0f}", f"{b - a:+.0f}")
    table.add_row("all four", f"{total[0]:.0f}", f"{total[1]:.0f}", f"{total[1] - total[0]:+.0f}")
    console.print(table)
    console.print(f"bytes on the wire: request msgpack {len(m_req):,}, OIP {len(o_req):,}; "
                  f"response msgpack {len(m_resp):,}, OIP {len(o_resp):,}")


if __name__ == "__main__":
    raise SystemExit(main())
