"""The weight a real agent publishes: proportional to capacity, and falling when the server's
latency (read from its /status) exceeds the target."""

from __future__ import annotations

import threading

import agent_shell_helpers as h
import grpc
import numpy as np
import pytest

from protocol import wire
from registry.records import State
from server_agent.agent import Agent
from server_agent.config import WeightConfig


class Load:
    """Bare gRPC predicts in a loop against each server (no balancer: both get the same calls)."""

    def __init__(self, ports: list[int]) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in ports]
        for t in self.threads:
            t.start()

    def _run(self, port: int) -> None:
        body = wire.encode_request(wire.PredictRequest(model="ctr", inputs={"x": np.ones((2, 3), np.float32)}))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(wire.PREDICT_METHOD)
            while not self.stop.is_set():
                try:
                    call(body, timeout=5)
                except grpc.RpcError as e:
                    self.errors.append(str(e.code()))

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


@pytest.fixture
def pods(zk_settings, tmp_path):
    made: list = []

    def make(name: str, cores: float, *, delay_s: float = 0.0, weight: WeightConfig | None = None):
        server = h.start_server(h.write_model(tmp_path / name, delay_s=delay_s))
        config = h.fast_config(zk_settings, target=f"127.0.0.1:{server.port}", instance_id=name,
                               status_url=f"http://127.0.0.1:{server.status_port}",
                               weight=weight or WeightConfig(ramp_s=0.5))
        agent = Agent(config, capacity=h.capacity(cores)).start()
        made.append((agent, server))
        return agent, server, config.zk.paths.instance("ctr", name)

    yield make
    for agent, server in made:
        agent.close()
        server.stop()


def test_weight_is_proportional_to_capacity(zk, pods):
    _, _, small = pods("small", 2.0)
    _, _, big = pods("big", 8.0)
    a = h.wait_record(zk, small, lambda r: r is not None and r.state is State.SERVING)
    b = h.wait_record(zk, big, lambda r: r is not None and r.state is State.SERVING)
    assert (a.weight, b.weight) == (2.0, 8.0)
    assert (a.capacity.cpu_cores, b.capacity.cpu_cores) == (2.0, 8.0)


def test_weight_rises_through_slow_start_and_falls_when_latency_exceeds_the_target(zk, pods):
    # target 100 ms; the slow pod's model sleeps 200 ms per batch (twice the target) and
    # the fast pod answers in about a millisecond: a margin wide enough that a busy CI
    # machine's scheduling hiccups never push the fast pod's p99 over the target. A high
    # gain so the integrator acts within seconds (the default sheds at most 2.8%/s). The
    # queue-growth term is switched off (a huge scale): this test is about latency, and a
    # queue of a few rows building between two polls on a busy machine would trim the fast
    # pod by a few percent (1 / (1 + 20 rows/s / 1000)), as it should in production.
    knobs = {"latency_target_ms": 100.0, "latency_gain_per_s": 1.0, "smoothing_tau_s": 0.0, "ramp_s": 1.0,
             "queue_growth_scale_rows_per_s": 1e12}
    seen: list[float] = []
    fast, fast_server, fast_path = pods("fast", 4.0, weight=WeightConfig(**knobs))
    slow, slow_server, slow_path = pods("slow", 4.0, delay_s=0.2, weight=WeightConfig(**knobs))

    def ramping(r):
        if r is not None:
            seen.append(r.weight)
        return r is not None and r.state is State.SERVING

    h.wait_record(zk, slow_path, ramping)
    assert seen[0] < 1.0 and seen == sorted(seen) and seen[-1] == 4.0  # rises from the floor to capacity
    load = Load([fast_server.port, slow_server.port])
    try:
        falling = h.wait_record(zk, slow_path, lambda r: r is not None and r.weight < 2.0, timeout=20)
        assert falling.enabled and falling.state is State.SERVING  # slow is not unhealthy: still routable
        assert slow.view.health.latency < 0.5
        assert zk.get(fast_path)[0] and h.decode_instance(zk.get(fast_path)[0]).weight == 4.0
        assert fast.view.weight == 4.0
    finally:
        load.close()
    assert load.errors == []
