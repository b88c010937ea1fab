"""p2c_jsed over a fleet where some pods send no load report (third-party OIP servers), on fake time.

Several clients, each with its own :class:`Balancer`, share simulated FIFO
servers (:class:`test_policy_sim.SimServer`); a silent server's answers carry
no report, so its clients know only their own in-flight rows, their latency
samples and its published weight. Records are published as agents publish
them (weight = measured capacity), so a silent pod's weight is right.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections import Counter
from collections.abc import Sequence

import pytest
from test_policy_sim import SIZES, SimServer, assert_shares, rec

from registry.membership import snapshot_from_records
from weiclient.balancer import Balancer, ServerLoad, build_policy

RTT_S = 0.0005


def run(speeds: Sequence[float], silent: set[str], *, clients: int, load: float = 0.9, until: float = 40.0,
        seed: int = 1) -> tuple[dict[str, float], float]:
    """Poisson calls from ``clients`` clients at ``load`` x the fleet's speed: (row shares, mean latency)
    over the second half."""
    records = [rec(i, s / 700.0, measured=True) for i, s in enumerate(speeds)]
    balancers = []
    for c in range(clients):
        b = Balancer(build_policy("p2c_jsed"), rng=random.Random(seed + c))
        b.update(snapshot_from_records("ctr", records, version=1), now=0.0)
        balancers.append(b)
    servers = {f"p{i}": SimServer(s) for i, s in enumerate(speeds)}
    draw = random.Random(seed + 1000)
    rate = load * sum(speeds) / (sum(SIZES) / len(SIZES))
    ends: list = []
    seq, rows, latencies = 0, Counter(), []
    arrival = draw.expovariate(rate)
    while (t := min(arrival, ends[0][0] if ends else arrival)) <= until:
        if ends and ends[0][0] <= arrival:
            _, _, b, ep, sent, n = heapq.heappop(ends)
            report = None if ep.instance_id in silent else servers[ep.instance_id].report(t - RTT_S / 2)
            b.on_finish(ep, t, t - sent, True, report, cost=n)
            if t > until / 2:
                latencies.append(t - sent)
            continue
        b, n = balancers[draw.randrange(clients)], draw.choice(SIZES)
        ep = b.pick("ctr", now=t, cost=n)
        b.on_start(ep, t, cost=n)
        seq += 1
        heapq.heappush(ends, (servers[ep.instance_id].admit(t + RTT_S / 2, n) + RTT_S / 2, seq, b, ep, t, n))
        if t > until / 2:
            rows[ep.instance_id] += n
        arrival = t + draw.expovariate(rate)
    total = sum(rows.values())
    return {name: rows[name] / total for name in servers}, statistics.mean(latencies)


FLEETS = {"1:2:4": (700.0, 1400.0, 2800.0), "equal": (1000.0, 1000.0, 1000.0)}


@pytest.mark.parametrize("clients", [8, 32])
@pytest.mark.parametrize("silent", ["p0", "p2"])
@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_a_silent_pod_among_reporting_ones_takes_its_share_and_no_more(fleet, silent, clients):
    """Before the latency floor a silent pod looked emptier than the reporting ones (their
    queues hold every client's rows, its own count only this client's): with equal pods it
    took up to 38 % of the rows and the mean latency was 2x (8 clients) to 4x (32) the
    all-reporting fleet's."""
    speeds = FLEETS[fleet]
    capacity = {f"p{i}": s / sum(speeds) for i, s in enumerate(speeds)}
    _, reporting = run(speeds, set(), clients=clients)
    shares, mean = run(speeds, {silent}, clients=clients)
    assert_shares(shares, capacity, 0.05)
    assert mean < 1.3 * reporting, (mean, reporting)


def test_half_the_fleet_silent():
    speeds = (700.0, 1400.0, 2800.0) * 2
    _, reporting = run(speeds, set(), clients=32, load=0.7)
    shares, mean = run(speeds, {"p3", "p4", "p5"}, clients=32, load=0.7)
    assert_shares(shares, {f"p{i}": s / sum(speeds) for i, s in enumerate(speeds)}, 0.05)
    assert mean < 1.3 * reporting, (mean, reporting)


def test_the_delay_of_a_silent_pod_is_at_least_its_recent_latency():
    b = Balancer(build_policy("p2c_jsed"), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(0, 1000.0, measured=True), rec(1, 1000.0, measured=True)],
                                   version=1), now=0.0)
    talks, silent = b.candidates.endpoints
    b.on_finish(talks, 1.0, 0.4, True, ServerLoad(queue_depth=300.0, capacity_rows_per_s=1000.0))
    b.on_finish(silent, 1.0, 0.4, True, None)  # the same latency, no report
    sel = b.selector
    assert sel.delay(talks, 1000.0, 1.0, 100) == pytest.approx(0.4)   # (0 + 300 + 100) / 1000
    assert sel.delay(silent, 1000.0, 1.0, 100) == pytest.approx(0.4)  # max(100 / 1000, 0.4 s)
    b.on_start(silent, 1.0, cost=500)
    assert sel.delay(silent, 1000.0, 1.0, 100) == pytest.approx(0.6)  # its own rows beyond the latency
    assert sel.delay(silent, 1000.0, 9.0, 100) == pytest.approx(0.6)  # the latency decays; the rows stay
    b.on_finish(silent, 9.0, None, None, None, cost=500)
    assert sel.delay(silent, 1000.0, 9.0, 100) == pytest.approx(0.1)  # idle and long quiet: rows alone
