"""A real fleet of three emulated accelerators (speeds 1:2:4, equal declared cores): the weights
the agents publish find the true ratio by measurement, and hold when the traffic stops."""

from __future__ import annotations

import threading

import agent_shell_helpers as h
import numpy as np
import pytest

from examples.emulated import FEATURES, write_model
from registry.records import State
from server_agent.agent import Agent
from server_agent.config import CalibrationConfig, WeightConfig
from server_agent.estimator import EstimatorConfig
from serving.config import BatchingConfig, ModelConfig, ServerConfig
from serving.server import ModelServer
from weiclient import ClientConfig, WeiClient

SPEEDS = {"slow": 1.0, "mid": 2.0, "fast": 4.0}
ROWS = 100  # per call: 20 ms of model time on the slow pod, 5 ms on the fast one


@pytest.fixture
def fleet(zk_settings, tmp_path):
    made: list = []
    for name, speed in SPEEDS.items():
        write_model(tmp_path / name, "ctr", 1, speed=speed)
        server = ModelServer(ServerConfig(
            models_dir=tmp_path / name, host="127.0.0.1", port=0, status_port=0, poll_interval_s=3600, grace_s=5,
            defaults=ModelConfig(batching=BatchingConfig(num_batch_threads=1, max_batch_size=256,
                                                         batch_timeout_micros=500)))).start()
        config = h.fast_config(
            zk_settings, target=f"127.0.0.1:{server.port}", instance_id=name,
            status_url=f"http://127.0.0.1:{server.status_port}", samples_per_core_s=1000.0, status_poll_s=0.25,
            estimator=EstimatorConfig(min_busy_s=0.01),
            # latency far under its target and no queue-growth term: this test is about capacity
            weight=WeightConfig(ramp_s=0.5, latency_target_ms=5000.0, queue_growth_scale_rows_per_s=1e9))
        agent = Agent(config, capacity=h.capacity(2.0)).start()  # equal declared cores: 2, 2, 2
        made.append((name, agent, server, config.zk.paths.instance("ctr", name)))
    yield made
    for _, agent, server, _ in made:
        agent.close()
        server.stop()


class Traffic:
    """Closed-loop callers through one WeiClient until stopped; counts errors."""

    def __init__(self, client: WeiClient, threads: int = 6) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.calls = 0
        x = np.ones((ROWS, FEATURES), np.float32)
        self._threads = [threading.Thread(target=self._run, args=(client, x), daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, client: WeiClient, x: np.ndarray) -> None:
        while not self.stop.is_set():
            try:
                client.predict("ctr", {"x": x}, timeout=5.0)
                self.calls += 1
            except Exception as e:  # counted, not raised: the test reads them
                self.errors.append(f"{type(e).__name__}: {e}")

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(10)


def ratios(zk, fleet) -> dict[str, float]:
    weights = {name: h.wait_record(zk, path, lambda r: r is not None).weight for name, _, _, path in fleet}
    return {name: w / weights["slow"] for name, w in weights.items()}


def test_published_weights_converge_to_the_true_ratio_and_hold_without_traffic(zk, zk_settings, fleet):
    for _, _, _, path in fleet:  # equal priors: 2 cores x 1,000 samples/s each
        rec = h.wait_record(zk, path, lambda r: r is not None and r.state is State.SERVING)
        assert rec.weight == pytest.approx(2000.0)
    client = WeiClient(zk_settings.hosts, "ctr", root=zk_settings.root, config=ClientConfig(timeout_s=5.0))
    load = Traffic(client)
    try:
        def converged(name: str, want: float):
            return lambda r: r is not None and r.weight > 0 and abs(r.weight / (5000.0 * want) - 1) < 0.3

        published = {name: h.wait_record(zk, path, converged(name, SPEEDS[name]), timeout=60.0)
                     for name, _, _, path in fleet}
        assert all(r.capacity.samples_per_s is not None for r in published.values())
    finally:
        load.close()
        client.close()
    assert not load.errors, load.errors[:3]
    got = ratios(zk, fleet)
    assert got["mid"] == pytest.approx(2.0, rel=0.3) and got["fast"] == pytest.approx(4.0, rel=0.3), got

    # No traffic: once the agents have read the last calls' counters, many more polls move nothing.
    def settle(probe_results: int) -> dict[str, tuple[float, float]]:
        for _, agent, _, _ in fleet:
            seen = sum(agent.view.probe_results.values())
            agent.wait_for(lambda v, n=seen: sum(v.probe_results.values()) >= n + probe_results, timeout=30.0)
        return {name: (agent.view.weight, agent.view.estimator.value) for name, agent, _, _ in fleet}

    before = settle(10)  # probes run every 0.2 s and the status every 0.25 s: several polls
    after = settle(40)
    assert after == before
    assert ratios(zk, fleet) == got


@pytest.mark.parametrize("model", ["ctr", "missing"])
def test_calibration_sets_the_prior_before_registering_and_a_failed_one_keeps_the_guess(zk, zk_settings, tmp_path,
                                                                                         model):
    write_model(tmp_path / "m", "ctr", 1, speed=2.0)  # 10,000 rows/s per batch thread
    server = ModelServer(ServerConfig(
        models_dir=tmp_path / "m", host="127.0.0.1", port=0, status_port=0, poll_interval_s=3600, grace_s=5,
        defaults=ModelConfig(batching=BatchingConfig(num_batch_threads=1, max_batch_size=512)))).start()
    config = h.fast_config(zk_settings, target=f"127.0.0.1:{server.port}", instance_id="cal",
                           status_url=f"http://127.0.0.1:{server.status_port}", samples_per_core_s=1000.0,
                           calibration=CalibrationConfig(batch_sizes=(64, 256), repeats=2), calibrate_model=model,
                           weight=WeightConfig(ramp_s=0.5, latency_target_ms=5000.0))
    agent = Agent(config, capacity=h.capacity(2.0)).start()
    try:
        rec = h.wait_record(zk, config.zk.paths.instance("ctr", "cal"),
                            lambda r: r is not None and r.state is State.SERVING)
        if model == "ctr":
            assert rec.capacity.samples_per_s == pytest.approx(10_000.0, rel=0.3)
            assert rec.weight == pytest.approx(rec.capacity.samples_per_s, rel=0.05)
            assert agent.view.estimator.calibrated and "calibrated" in agent.view.capacity.notes[-1]
        else:  # no such model: the guessed prior (2 cores x 1,000) and the pod still registers
            assert rec.weight == pytest.approx(2000.0) and not agent.view.estimator.calibrated
    finally:
        agent.close()
        server.stop()
