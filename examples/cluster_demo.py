"""The main job, on one machine: ranking calls go straight to serving pods, no proxy.

    .venv/bin/python examples/cluster_demo.py [--fast]      (make demo)

1. an embedded ZooKeeper starts; the Wide&Deep CTR model is trained and
   exported as versions 1 and 2;
2. three pods, each a ``wei-serve`` process with a ``wei-agent`` sidecar. The
   pods differ in real speed, 1:2:4: each serves the real CTR model on an
   emulated accelerator (:mod:`examples.emulated`: the model's real outputs,
   plus device time per row / speed), and each agent declares the same 8
   cores. The agents probe their servers, register them (WARMING, slow
   start, then SERVING) and publish the capacity they *measure*;
3. a ranking service's ``WeiClient`` sends 2,000-candidate calls from several
   threads; a live table shows each pod's measured capacity, weight, share
   of calls and latency as they converge;
4. for comparison, plain round robin on the same pods, under the same load;
5. a noisy neighbour: pod-2, the fastest, slows to a quarter of its speed,
   and its traffic leaves it;
6. a canary: ``split ctr 1=90 2=10`` in the service config;
7. pod-2 leaves as Kubernetes would stop it: SIGTERM to its agent (drain,
   wait for clients and in-flight calls, deregister), then to its server;
8. ZooKeeper is stopped: the client keeps routing on its last snapshot;
9. a summary: calls, errors (0 expected), latency, shares against weights,
   and what plain round robin did on the same fleet.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.live import Live  # noqa: E402
from rich.table import Table  # noqa: E402

from examples.emulated import set_speed, write_accelerated  # noqa: E402
from registry.publisher import Publisher  # noqa: E402
from registry.records import InstanceRecord, State  # noqa: E402
from registry.service_config import ConfigStore  # noqa: E402
from registry.testing import ZooKeeperEnsemble, free_ports  # noqa: E402
from registry.testing.process import die_with_parent_prefix  # noqa: E402
from registry.zk import ZkSettings, connect  # noqa: E402
from weiclient import ClientConfig, WeiClient  # noqa: E402
from weiclient.errors import WeiClientError  # noqa: E402

SERVICE = "ranking"
SPEEDS = (1.0, 2.0, 4.0)  # the pods' emulated devices; each agent declares the same 8 cores
console = Console()


class Traffic:
    """Ranking calls from ``threads`` threads until stopped; counts outcomes."""

    def __init__(self, client: WeiClient, rows: int, threads: int) -> None:
        rng = np.random.default_rng(0)
        self.features = {"dense": rng.random((rows, 13), dtype=np.float32),
                         "sparse": rng.integers(0, 10_000, (rows, 26), dtype=np.int64)}
        self.client = client
        self.calls = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []  # of successful calls, in order
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                scores = self.client.predict(SERVICE_MODEL, self.features, timeout=5.0)["ctr"]
                assert scores.shape == (len(self.features["dense"]),)
                ok = True
            except WeiClientError as e:
                ok = False
                with self._lock:
                    self.errors.append(str(e))
            with self._lock:
                self.calls += 1
                if ok:
                    self.latencies.append(time.perf_counter() - t0)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


SERVICE_MODEL = "ctr"


def ok_calls_by_endpoint() -> dict[str, float]:
    counts: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "weiclient_attempts":
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("service") == SERVICE and s.labels["code"] == "OK":
                    counts[s.labels["endpoint"]] = counts.get(s.labels["endpoint"], 0) + s.value
    return counts


def table(client: WeiClient, traffic: Traffic, step: str, since: dict[str, float]) -> Table:
    now_counts = ok_calls_by_endpoint()
    window = {ep: now_counts.get(ep, 0) - since.get(ep, 0) for ep in now_counts}
    total = sum(window.values()) or 1
    snap = client.snapshot
    stats = {e.address: e for e in client.stats().balancer.endpoints}
    lat = sorted(traffic.latencies[-500:])
    p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
    split = "; ".join(f"{m} " + " ".join(f"v{v}={s:g}%" for v, s in sp.items())
                      for m, sp in client.service_config.splits.items()) or "none"
    t = Table(title=f"{step}", caption=(
        f"calls {traffic.calls} · errors {len(traffic.errors)} · p50 {p50:.1f} ms · membership v{snap.version}"
        f"{' STALE (ZooKeeper down)' if snap.stale else ''} · split: {split}"))
    for col in ("pod", "device speed", "measured rows/s", "weight", "state", "share", "in flight", "ms (EWMA)"):
        t.add_column(col, justify="left" if col in ("pod", "state") else "right")
    for rec in snap.instances.values():
        st = stats.get(rec.endpoint)
        measured = rec.capacity.samples_per_s
        t.add_row(rec.id, f"{speeds.get(rec.id, 0):g}x", f"{measured:,.0f}" if measured else "(prior)",
                  f"{rec.weight:g}", rec.state.value if rec.enabled else "DRAINING",
                  f"{100 * window.get(rec.endpoint, 0) / total:5.1f} %",
                  str(st.in_flight if st else 0), f"{st.latency_ms:.1f}" if st else "-")
    return t


speeds: dict[str, float] = {}  # pod id -> its device's current speed, for the table


def step(live: Live, client: WeiClient, traffic: Traffic, name: str, seconds: float,
         action: Callable[[], None] | None = None) -> dict[str, float]:
    since = ok_calls_by_endpoint()
    if action is not None:
        action()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        live.update(table(client, traffic, name, since))
        time.sleep(0.25)
    live.update(table(client, traffic, name, since))
    now = ok_calls_by_endpoint()
    return {ep: now.get(ep, 0) - since.get(ep, 0) for ep in now}


class Pod:
    """A wei-serve process and its wei-agent sidecar."""

    def __init__(self, index: int, models: Path, zk_hosts: str, fast: bool) -> None:
        self.index = index
        self.models = models
        self.port, self.status_port, self.agent_port = free_ports(3)
        self.server = subprocess.Popen(
            [*die_with_parent_prefix(), sys.executable, "-m", "serving.cli", "--models", str(models),
             "--host", "127.0.0.1", "--port",
             str(self.port), "--status-port", str(self.status_port), "--version-policy", "all",
             "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.agent = subprocess.Popen(
            [*die_with_parent_prefix(), sys.executable, "-m", "server_agent.cli", "run", "--zk", zk_hosts,
             "--service", SERVICE,
             "--target", f"127.0.0.1:{self.port}", "--status-url", f"http://127.0.0.1:{self.status_port}",
             "--http-port", str(self.agent_port), "--instance-id", f"pod-{index}", "--cpu-cores", "8",
             "--ramp-s", "2" if fast else "8", "--drain-wait-s", "1", "--startup-period-s", "0.5",
             "--readiness-period-s", "0.5", "--status-poll-s", "0.5", "--session-timeout-s", "4",
             "--log-level", "warning"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop_gracefully(self) -> None:
        """The preStop order: the agent drains and deregisters, then the server stops."""
        self.agent.send_signal(signal.SIGTERM)
        self.agent.wait(timeout=60)
        self.server.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        for proc in (self.agent, self.server):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def p99_ms(latencies: list[float]) -> float:
    lat = sorted(latencies)
    return lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")


def round_robin_phase(admin, zk_hosts: str, pods: list[Pod], rows: int, threads: int, seconds: float) -> Traffic:
    """The same pods under a second service name at equal weights, called with plain round robin."""
    pubs = [Publisher(admin, InstanceRecord(service=f"{SERVICE}-rr", id=f"pod-{p.index}", address="127.0.0.1",
                                            port=p.port, weight=1.0, state=State.SERVING,
                                            models={"ctr": [1, 2]})) for p in pods]
    for pub in pubs:
        pub.register()
    client = WeiClient(zk_hosts, f"{SERVICE}-rr", config=ClientConfig(balancer="round_robin", timeout_s=5.0,
                                                                      metrics=False))
    client._watcher.wait_for(lambda s: len(s.routable()) == len(pods), timeout=30)
    rr = Traffic(client, rows, threads).start()
    time.sleep(seconds)
    rr.stop()
    client.close()
    for pub in pubs:
        pub.close()
    return rr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="short steps and small calls (for tests)")
    args = ap.parse_args()
    secs = 1.5 if args.fast else 5.0
    rows, threads = (200, 2) if args.fast else (2000, 6)
    unit_s = 100e-6 if args.fast else 40e-6  # device time per row at speed 1: 20 ms (fast), 80 ms a call
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # the outage step is meant to fail its reconnects
    work = Path(tempfile.mkdtemp(prefix="wei-demo-"))
    with console.status("training and exporting the Wide&Deep CTR model (versions 1 and 2) ..."):
        # in a child process: TensorFlow's start-up log lines stay out of the demo's output
        code = ("import sys; from pathlib import Path; from examples.ctr_widedeep import widedeep\n"
                "for v in (1, 2): widedeep.export(Path(sys.argv[1]), v, steps=int(sys.argv[2]))")
        done = subprocess.run([sys.executable, "-c", code, str(work / "real" / "ctr"), "20" if args.fast else "100"],
                              cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"demo: exporting the model failed: {done.stderr.strip()[-1500:]}")
    for i, speed in enumerate(SPEEDS):
        for version in (1, 2):
            write_accelerated(work / f"pod-{i}", "ctr", version, target=work / "real" / "ctr" / str(version),
                              speed=speed, unit_s=unit_s)
        speeds[f"pod-{i}"] = speed
    zk = ZooKeeperEnsemble(1).start()
    pods: list[Pod] = []
    try:
        console.print(f"ZooKeeper {zk.hosts}; starting {len(SPEEDS)} pods (wei-serve + wei-agent): devices "
                      f"{' : '.join(f'{s:g}' for s in SPEEDS)}, every agent declaring 8 cores ...")
        pods = [Pod(i, work / f"pod-{i}", zk.hosts, args.fast) for i in range(len(SPEEDS))]
        admin = connect(ZkSettings(hosts=zk.hosts, session_timeout_s=4.0))
        client = WeiClient(zk.hosts, SERVICE, config=ClientConfig(timeout_s=5.0, zk_session_timeout_s=4.0))
        with console.status("waiting for the agents to register their pods (startup and readiness probes) ..."):
            try:
                client._watcher.wait_for(lambda s: len(s.routable()) == len(SPEEDS), timeout=180)
            except TimeoutError:
                errors = "".join(p.agent.stderr.read()[-800:] for p in pods if p.agent.poll() is not None)
                raise SystemExit(f"demo: the pods did not register: {errors}") from None
        traffic = Traffic(client, rows, threads).start()
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            shares = step(live, client, traffic, f"1. {rows}-candidate calls; agents measure capacity (8 cores "
                                                 f"declared by each)", secs * 3)
            settled_from = len(traffic.latencies)
            step(live, client, traffic, "   ... converged", secs)
            ours = p99_ms(traffic.latencies[settled_from:])
            weights = {r.id: r.weight for r in client.snapshot.instances.values()}
        traffic.stop()
        first = traffic
        with console.status(f"2. for comparison: plain round robin on the same pods, same callers ({secs:g} s) ..."):
            rr = round_robin_phase(admin, zk.hosts, pods, rows, threads, secs * 2)
        traffic = Traffic(client, rows, threads).start()
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            def slow_down() -> None:
                for version in (1, 2):
                    set_speed(pods[2].models, "ctr", version, SPEEDS[2] / 4)
                speeds["pod-2"] = SPEEDS[2] / 4

            noisy = step(live, client, traffic, "3. noisy neighbour: pod-2's device slows to a quarter", secs * 3,
                         slow_down)
            step(live, client, traffic, "4. canary: split ctr 1=90 2=10", secs,
                 lambda: ConfigStore(admin).set_split(SERVICE, "ctr", {1: 90, 2: 10}))
            leaving = threading.Thread(target=pods[2].stop_gracefully, daemon=True)
            drained = step(live, client, traffic, "5. pod-2: SIGTERM to its agent (drain, deregister), then its server",
                           secs, leaving.start)
            leaving.join(timeout=60)
            outage = step(live, client, traffic, "6. ZooKeeper stopped: routing on the last snapshot", secs,
                          zk.stop_all_members)
            stale_for = client.stats().staleness_s
        traffic.stop()
        client.close()
        admin.stop()
        admin.close()
        lat = sorted(first.latencies + traffic.latencies)
        by_port = {f"127.0.0.1:{p.port}": f"pod-{p.index}" for p in pods}

        def share_text(counts: dict[str, float]) -> str:
            total = sum(counts.values()) or 1
            return ", ".join(f"{by_port.get(ep, ep)} {100 * n / total:.0f}%" for ep, n in sorted(counts.items()))

        pod2 = drained.get(f"127.0.0.1:{pods[2].port}", 0)
        published = ", ".join(f"{i} {w:g}" for i, w in sorted(weights.items()))
        console.print(f"weights the agents measured and published (devices 1:2:4, cores declared equal): {published}; "
                      f"shares in step 1: {share_text(shares)}")
        console.print(f"plain round robin on the same fleet: p99 {p99_ms(rr.latencies):.1f} ms against "
                      f"{ours:.1f} ms with measured weights ({p99_ms(rr.latencies) / ours:.1f}x), "
                      f"{rr.calls} calls, {len(rr.errors)} errors")
        console.print(f"noisy neighbour (pod-2 at a quarter speed): shares in step 3: {share_text(noisy)}")
        console.print(f"pod-2 left by the preStop path (agent exit code {pods[2].agent.returncode}); "
                      f"calls it answered during step 5: {pod2:.0f}")
        console.print(f"ZooKeeper down: {sum(outage.values()):.0f} calls served on a snapshot stale for "
                      f"{stale_for:.1f}s")
        errors = len(first.errors) + len(traffic.errors)
        console.print(f"demo {'ok' if not errors else 'FAILED'}: {first.calls + traffic.calls} calls, "
                      f"{errors} errors, p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
                      f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms; no proxy in the path")
        for e in (first.errors + traffic.errors)[:3]:
            console.print(f"  error: {e}")
        return 0 if not errors else 1
    finally:
        for pod in pods:  # ZooKeeper is gone by now: no deregistration to wait for
            pod.kill()
        zk.stop()


if __name__ == "__main__":
    raise SystemExit(main())
