"""A deterministic discrete-event fleet for policy tests, and tests of the simulator itself.

Servers are FIFO queues that work through rows at a given speed (rows per
second; one batch thread); a client sends calls of given row counts at
Poisson arrivals through a real :class:`Balancer` on fake time, and every
response carries a load report computed the way the server computes its
own (over the last ``window_s``): in-flight calls, queued rows, calls and
rows per second, busy fraction, and capacity as rows per busy second.
Nothing sleeps and nothing is random but the seeded generators, so a run is
exactly repeatable. Other test modules import :class:`Fleet` from here.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from registry.membership import snapshot_from_records
from registry.records import Capacity, InstanceRecord, State
from weiclient.balancer import Balancer, Endpoint, ServerLoad, build_policy


def rec(i: int, weight: float = 1.0, *, measured: bool = False) -> InstanceRecord:
    """``measured``: as an agent publishes it (its weight is the capacity it measured), not a static weight."""
    return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                          state=State.SERVING, models={"ctr": [1]},
                          capacity=Capacity(samples_per_s=weight if measured else None))


@dataclass
class SimServer:
    speed: float                                   # rows per second, now
    window_s: float = 10.0
    report_capacity: bool = True                   # False: capacity_rows_per_s reads 0 (unknown)
    busy_until: float = 0.0
    calls: deque[tuple[float, float, float]] = field(default_factory=deque)  # (start, finish, rows), FIFO
    done: deque[tuple[float, float, float]] = field(default_factory=deque)   # (start, finish, rows)

    def admit(self, now: float, rows: float) -> float:
        """Queue a call; returns when it will finish (FIFO at the speed of the moment it is queued)."""
        start = max(now, self.busy_until)
        finish = start + rows / self.speed
        self.busy_until = finish
        self.calls.append((start, finish, rows))
        return finish

    def report(self, now: float) -> ServerLoad:
        while self.calls and self.calls[0][1] <= now:
            self.done.append(self.calls.popleft())
        while self.done and self.done[0][1] <= now - self.window_s:
            self.done.popleft()
        span = min(self.window_s, now) or 1.0
        since = now - self.window_s
        busy = rows = 0.0
        for s, f, r in self.done:  # a call begun before the window counts for its part in it
            part = f - max(s, since)
            busy += part
            rows += r * part / (f - s)
        return ServerLoad(
            in_flight=float(len(self.calls)),
            queue_depth=sum(r for s, _, r in self.calls if s > now),
            rows_per_s=rows / span, rps_fractional=len(self.done) / span,
            application_utilization=min(1.0, busy / span),
            capacity_rows_per_s=rows / busy if self.report_capacity and busy > 0 else 0.0)


class Fleet:
    """One client's balancer in front of ``speeds`` servers published with ``weights``."""

    def __init__(self, policy: str, speeds: Sequence[float], *, weights: Sequence[float] | None = None,
                 knobs: dict | None = None, seed: int = 1, rtt_s: float = 0.0005, window_s: float = 10.0,
                 report_capacity: bool = True) -> None:
        weights = list(weights if weights is not None else speeds)
        self.balancer = Balancer(build_policy(policy, knobs), rng=random.Random(seed))
        self.balancer.update(snapshot_from_records(
            "ctr", [rec(i, w, measured=True) for i, w in enumerate(weights)], version=1), now=0.0)
        self.servers = {f"p{i}": SimServer(s, window_s, report_capacity) for i, s in enumerate(speeds)}
        self.rtt_s = rtt_s
        self.now = 0.0
        self._arrivals = random.Random(seed + 1000)
        self._ends: list[tuple[float, int, Endpoint, float, float]] = []  # (end, seq, endpoint, sent, rows)
        self._seq = 0
        self.rows: Counter[str] = Counter()   # rows sent, since the last reset()
        self.calls: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.by_size: dict[float, list[float]] = {}  # rows -> latencies of calls of that size

    def reset(self) -> None:
        self.rows.clear()
        self.calls.clear()
        self.latencies.clear()
        self.by_size.clear()

    def shares(self) -> dict[str, float]:
        total = sum(self.rows.values())
        return {name: self.rows[name] / total for name in sorted(self.servers)}

    def run(self, until: float, load: float, sizes: Sequence[int]) -> None:
        """Poisson arrivals of calls of ``sizes`` rows (drawn uniformly) at ``load`` x the fleet's speed."""
        mean_rows = sum(sizes) / len(sizes)
        rate = load * sum(s.speed for s in self.servers.values()) / mean_rows
        arrival = self.now + self._arrivals.expovariate(rate)
        while True:
            end = self._ends[0][0] if self._ends else float("inf")
            t = min(arrival, end)
            if t > until:
                break
            self.now = t
            if end <= arrival:
                self._finish(*heapq.heappop(self._ends)[2:], t)
            else:
                self._send(self._arrivals.choice(sizes), t)
                arrival = t + self._arrivals.expovariate(rate)
        self.now = until

    def _send(self, rows: int, now: float) -> None:
        ep = self.balancer.pick("ctr", now=now, cost=rows)
        self.balancer.on_start(ep, now, cost=rows)
        finish = self.servers[ep.instance_id].admit(now + self.rtt_s / 2, rows)
        self._seq += 1
        heapq.heappush(self._ends, (finish + self.rtt_s / 2, self._seq, ep, now, rows))
        self.rows[ep.instance_id] += rows
        self.calls[ep.instance_id] += 1

    def _finish(self, ep: Endpoint, sent: float, rows: float, now: float) -> None:
        report = self.servers[ep.instance_id].report(now - self.rtt_s / 2)
        self.balancer.on_finish(ep, now, now - sent, True, report, cost=rows)
        self.latencies.append(now - sent)
        self.by_size.setdefault(rows, []).append(now - sent)


# -- scenarios the policy tests share --------------------------------------------------------

SPEEDS = (700.0, 1400.0, 2800.0)              # rows per second: a 1:2:4 fleet
CAPACITY = {"p0": 1 / 7, "p1": 2 / 7, "p2": 4 / 7}
SWAPPED = {"p0": 4 / 7, "p1": 2 / 7, "p2": 1 / 7}
SIZES = (10, 50, 100)                         # rows per call, drawn uniformly
LOAD = 0.9                                    # of the fleet's speed


def steady(policy: str, *, weights: Sequence[float] = (1.0, 2.0, 4.0), knobs: dict | None = None,
           seed: int = 1) -> Fleet:
    """40 s at 90 % load; ``rows`` and ``latencies`` cover the last 20 s."""
    fleet = Fleet(policy, SPEEDS, weights=weights, knobs=knobs, seed=seed)
    fleet.run(20.0, LOAD, SIZES)
    fleet.reset()
    fleet.run(40.0, LOAD, SIZES)
    return fleet


def swap_speeds(fleet: Fleet) -> Fleet:
    """The fastest and the slowest pod swap speeds (published weights stay); ``rows`` cover 20-50 s after."""
    fleet.servers["p0"].speed, fleet.servers["p2"].speed = fleet.servers["p2"].speed, fleet.servers["p0"].speed
    start = fleet.now
    fleet.run(start + 20.0, LOAD, SIZES)
    fleet.reset()
    fleet.run(start + 50.0, LOAD, SIZES)
    return fleet


def full_queue(policy: str, *, knobs: dict | None = None, picks: int = 2000, seed: int = 1) -> dict[str, float]:
    """Shares of ``picks`` 50-row calls when p2 (the biggest pod) reports a full queue.

    Every pod answered at the same latency and reported twice, 11 s apart
    (past ``orca_wrr``'s blackout). p0 and p1 are half busy; p2 has 50,000
    rows queued and 200 calls in progress, three of them (100 rows each)
    this client's, and refuses 20 calls for each it serves (ORCA ``eps``).
    Picks are decisions only: nothing starts.
    """
    b = Balancer(build_policy(policy, knobs), rng=random.Random(seed))
    b.update(snapshot_from_records("ctr", [rec(0, 1.0), rec(1, 2.0), rec(2, 4.0)], version=1), now=0.0)
    eps = {ep.instance_id: ep for ep in b.candidates.endpoints}
    reports = {
        "p0": ServerLoad(in_flight=2, application_utilization=0.5, rps_fractional=7.0, rows_per_s=350.0,
                         capacity_rows_per_s=700.0),
        "p1": ServerLoad(in_flight=2, application_utilization=0.5, rps_fractional=14.0, rows_per_s=700.0,
                         capacity_rows_per_s=1400.0),
        "p2": ServerLoad(in_flight=200, queue_depth=50_000, application_utilization=1.0, rps_fractional=56.0,
                         eps=1120.0, rows_per_s=2800.0, capacity_rows_per_s=2800.0),
    }
    for t in (0.0, 11.0):
        for name, ep in eps.items():
            b.on_start(ep, t, cost=50)
            b.on_finish(ep, t + 0.05, 0.05, True, reports[name], cost=50)
    for _ in range(3):
        b.on_start(eps["p2"], 11.0, cost=100)
    counts = Counter(b.pick("ctr", now=11.5, cost=50).instance_id for _ in range(picks))
    return {name: counts[name] / picks for name in eps}


def assert_shares(got: dict[str, float], want: dict[str, float], tolerance: float) -> None:
    assert all(abs(got[k] - want[k]) <= tolerance for k in want), (got, want)


# -- the simulator itself ------------------------------------------------------------------

def test_a_lone_server_reports_what_it_does():
    fleet = Fleet("random", [1000.0], seed=3)
    fleet.run(60.0, 0.5, [100])
    rep = fleet.servers["p0"].report(60.0)
    assert rep.application_utilization == pytest.approx(0.5, abs=0.1)
    assert rep.rows_per_s == pytest.approx(500.0, rel=0.2) and rep.rps_fractional == pytest.approx(5.0, rel=0.2)
    assert rep.capacity_rows_per_s == pytest.approx(1000.0)
    assert fleet.balancer.stats(60.0).in_flight == fleet.servers["p0"].report(60.0).in_flight


def test_runs_are_exactly_repeatable_and_every_call_ends():
    def run() -> tuple[dict[str, float], float]:
        fleet = Fleet("weighted_p2c", [700.0, 1400.0, 2800.0], seed=5)
        fleet.run(20.0, 0.8, [10, 50, 100])
        fleet.run(40.0, 0.0001, [10])  # nearly no arrivals: everything in flight drains
        assert fleet.balancer.stats(40.0).in_flight == 0 and fleet.balancer.stats(40.0).in_flight_rows == 0
        return fleet.shares(), sum(fleet.latencies)

    assert run() == run()


def test_a_queue_builds_on_an_overloaded_server():
    fleet = Fleet("random", [1000.0, 1000.0], seed=2)
    fleet.servers["p1"].speed = 200.0  # p1 can no longer keep up with half of 80 %
    fleet.run(20.0, 0.8, [100])
    assert fleet.servers["p1"].report(20.0).queue_depth > 1000
    assert fleet.servers["p0"].report(20.0).queue_depth < 500
