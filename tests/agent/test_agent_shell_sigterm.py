"""SIGTERM under load: ``wei-agent run`` as a process beside a real server, a WeiClient streaming
requests over three pods; the agent drains, waits, deregisters and exits 0; no request fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import agent_shell_helpers as h
import numpy as np

from registry.publisher import Publisher
from registry.records import InstanceRecord, State
from weiclient import ClientConfig, WeiClient

REPO = Path(__file__).resolve().parents[2]


def agent_process(zk_hosts: str, server, instance_id: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "server_agent.cli", "run", "--zk", zk_hosts, "--service", "ctr",
            "--target", f"127.0.0.1:{server.port}", "--status-url", f"http://127.0.0.1:{server.status_port}",
            "--http-host", "127.0.0.1", "--http-port", "0", "--instance-id", instance_id, "--address", "127.0.0.1",
            "--startup-period-s", "0.2", "--readiness-period-s", "0.2", "--readiness-failure-threshold", "2",
            "--status-poll-s", "0.2", "--ramp-s", "0.5", "--drain-wait-s", "1.0", "--cpu-cores", "2",
            "--session-timeout-s", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Load:
    """Requests in a loop from one thread; counts answers per pod and failures."""

    def __init__(self, client: WeiClient) -> None:
        self.client = client
        self.by_pod: dict[int, int] = {}
        self.failures: list[str] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        x = np.ones((4, 3), np.float32)
        while not self.stop.is_set():
            try:
                out = self.client.predict("ctr", {"x": x}, timeout=2.0)
                who = int(out["who"][0])
                with self.cond:
                    self.by_pod[who] = self.by_pod.get(who, 0) + 1
                    self.cond.notify_all()
            except Exception as e:  # any failure is what this test is about
                self.failures.append(f"{type(e).__name__}: {e}")

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.by_pod), timeout), (self.by_pod, self.failures[:3])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_sigterm_under_load_loses_no_request(zk, zk_settings, tmp_path):
    servers = [h.start_server(h.write_model(tmp_path / f"m{i}", who=i)) for i in range(3)]
    publishers = [Publisher(zk, InstanceRecord(service="ctr", id=f"pod-{i}", address="127.0.0.1", port=s.port,
                                               weight=2.0, state=State.SERVING, models={"ctr": [1]}))
                  for i, s in enumerate(servers[1:], start=1)]
    for p in publishers:
        assert p.register()
    proc = agent_process(zk_settings.hosts, servers[0], "pod-0")
    path = zk_settings.paths.instance("ctr", "pod-0")
    client = WeiClient(zk_settings.hosts, "ctr", config=ClientConfig(zk_session_timeout_s=4.0, metrics=False))
    load = None
    try:
        h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING, timeout=30)
        load = Load(client)
        load.wait_for(lambda by_pod: by_pod.get(0, 0) >= 20)  # the agent's pod takes its share first

        gone = threading.Event()
        zk.DataWatch(path, lambda data, stat: (gone.set() if data is None else None) or data is not None)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert gone.wait(15), "not deregistered"
        to_deregistration = time.monotonic() - t0
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err[-2000:]
        served_before_stop = load.by_pod.get(0, 0)
        servers[0].drain()  # Kubernetes' SIGTERM reaches the model server after the agent's preStop path
        servers[0].stop()
        total = sum(load.by_pod.values())
        load.wait_for(lambda by_pod: sum(by_pod.values()) >= total + 50)  # traffic goes on over the others
        load.close()
        assert load.failures == []
        assert load.by_pod.get(0, 0) == served_before_stop
        assert 1.0 <= to_deregistration < 6.0, to_deregistration
        assert "deregistered, bye" in err and "drain" in err.lower()
        print(f"\nSIGTERM -> deregistration: {to_deregistration:.2f}s (drain wait 1.0s); requests {load.by_pod}")
    finally:
        if load is not None:
            load.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
        for p in publishers:
            p.close()
        for s in servers:
            s.stop()
