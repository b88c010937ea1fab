"""An OIP server's Prometheus metrics -> WorkTotals and ServerSample (oip_metrics, oip_tracker): pure, no I/O.

Triton does not run here; its exposition is recorded in tests/agent/data from its documented names
(two scrapes 10 s apart, numbers chosen so the deltas are exact):

    ctr  (batching): +1,000 requests (+10 failed), +120,000 rows, +250 batches, model time +24 s summed per
                     request -> busy 24 x 250 / 1,000 = 6 s; request time +40 s -> 40 ms mean; 3 waiting
    rank (no batch):   +500 requests, +500 rows, +500 batches, model time +2.5 s -> busy 2.5 s; 8 ms mean

MLServer's expositions there are captured from a real pod (tests/mlserver/pods.py), each file saying what
calls it had seen.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server_agent.estimator import CapacityEstimator, WorkTotals
from server_agent.oip_io import OipReading
from server_agent.oip_metrics import parse_exposition, parse_scrape
from server_agent.oip_tracker import MetricsTracker
from server_agent.weight import ServerSample

DATA = Path(__file__).resolve().parents[1] / "agent" / "data"
T0 = (DATA / "triton_metrics_t0.txt").read_text()
T1 = (DATA / "triton_metrics_t1.txt").read_text()
MLS_REFUSED = (DATA / "mlserver_metrics_refused.txt").read_text()  # real MLServer 1.7.1 captures (see each file's
MLS_IN_FLIGHT = (DATA / "mlserver_metrics_in_flight.txt").read_text()  # first line)

MLSERVER = """\
# MLServer 1.7's names and labels (as its /metrics on the metrics port shows them); a health GET is no inference
# HELP model_infer_request_success_total Model infer request success count
# TYPE model_infer_request_success_total counter
model_infer_request_success_total{model="iris",version="v1"} {ok}
# HELP model_infer_request_failure_total Model infer request failure count
# TYPE model_infer_request_failure_total counter
model_infer_request_failure_total{model="iris",version="v1"} {failed}
# HELP model_infer_request_duration Model infer request duration
# TYPE model_infer_request_duration summary
model_infer_request_duration_count{model="iris",version="v1"} {n}
model_infer_request_duration_sum{model="iris",version="v1"} {total_s}
# HELP rest_server_requests_in_progress Total HTTP requests currently in progress
# TYPE rest_server_requests_in_progress gauge
rest_server_requests_in_progress{app_name="mlserver",method="POST"} 2.0
rest_server_requests_in_progress{app_name="mlserver",method="GET"} 1.0
# TYPE grpc_server_started_total counter
grpc_server_started_total{grpc_method="ModelInfer",grpc_service="inference.GRPCInferenceService",grpc_type="UNARY"} 7.0
grpc_server_started_total{grpc_method="ServerReady",grpc_service="inference.GRPCInferenceService",grpc_type="UNARY"} 9.0
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_code="OK",grpc_method="ModelInfer",grpc_type="UNARY"} 6.0
"""


def mlserver(ok: int, failed: int, n: int, total_s: float) -> str:
    return (MLSERVER.replace("{ok}", str(ok)).replace("{failed}", str(failed)).replace("{n}", str(n))
            .replace("{total_s}", str(total_s)))


def two_scrapes(t0: str = T0, t1: str = T1):
    tracker, first = MetricsTracker().step(parse_scrape(t0), 100.0)
    tracker, second = tracker.step(parse_scrape(t1), 110.0)
    return first, second


def test_a_triton_exposition_is_read_per_model_over_versions_and_failure_reasons():
    scrape = parse_scrape(T1)
    assert scrape.dialect == "triton" and set(scrape.models) == {"ctr", "rank"}  # GPU and CPU gauges carry no model
    ctr = scrape.models["ctr"]
    assert (ctr.succeeded, ctr.errors, ctr.requests) == (6000, 30, 6030)  # REJECTED + BACKEND, both versions
    assert (ctr.rows, ctr.batches, ctr.waiting) == (720000, 1500, 3)
    assert ctr.model_s == pytest.approx(12 + 120 + 12)  # input + infer + output, microseconds -> seconds
    assert ctr.latency_s == pytest.approx(240) and ctr.p99_s == pytest.approx(0.085)
    assert scrape.pending == 3


def test_triton_deltas_give_rows_busy_seconds_latency_and_queue():
    first, second = two_scrapes()
    assert first.work == WorkTotals(rows=0, busy_s=0.0)  # the baseline: no interval yet
    assert first.busy_fraction is None and first.mean_latency_ms is None
    assert first.queue_rows == pytest.approx(1 * 600000 / 5000)  # 1 waiting x rows per request since start
    # busy: ctr 24 s of per-request model time x 250 batches / 1,000 requests = 6 s; rank 2.5 s (one per batch)
    assert second.work.rows == 120500 and second.work.busy_s == pytest.approx(8.5)
    assert second.busy_fraction == pytest.approx(6 / 10)  # the busiest model over the 10 s between scrapes
    assert second.mean_latency_ms == pytest.approx(40.0)  # the slower model's mean: 40 s over 1,000 requests
    assert second.p99_ms == pytest.approx(85.0)  # Triton's summary quantile (summary_latencies=true)
    assert second.queue_rows == pytest.approx(3 * 120000 / 1000)  # 3 waiting x this interval's rows per request
    assert (second.requests, second.errors, second.pending) == (8530, 30, 3)


def test_the_work_feeds_the_capacity_estimator_and_the_sample_the_weight_controller():
    first, second = two_scrapes()
    est = CapacityEstimator(prior=1000.0)
    est.observe(first.work)
    assert est.observe(second.work) == pytest.approx(120500 / 8.5)  # rows per second of full use
    assert est.measured
    sample = OipReading(True, {"ctr": [1, 2], "rank": [1]}, second).sample()
    assert sample == ServerSample(ready=True, p99_ms=pytest.approx(85.0), ewma_ms=pytest.approx(40.0),
                                  queue_rows=pytest.approx(360.0), busy_fraction=pytest.approx(0.6),
                                  requests=8530, errors=30)
    assert OipReading(False, {}, second).sample() == ServerSample(ready=False, requests=8530, errors=30)
    assert OipReading(None, problem="down").sample() == ServerSample(ready=False)


def test_the_work_totals_only_grow_and_a_counter_reset_is_no_evidence():
    tracker, _ = MetricsTracker().step(parse_scrape(T0), 100.0)
    tracker, second = tracker.step(parse_scrape(T1), 110.0)
    tracker, reset = tracker.step(parse_scrape(T0), 120.0)  # counters went back: a reload
    assert reset.work == second.work and reset.busy_fraction is None and reset.mean_latency_ms is None
    tracker, after = tracker.step(parse_scrape(T1), 130.0)  # the same deltas again from the new baseline
    assert after.work.rows == 2 * 120500 and after.work.busy_s == pytest.approx(17.0)
    est = CapacityEstimator(prior=1000.0)
    for view in (second, reset, after):
        est.observe(view.work)
    assert est.value == pytest.approx(120500 / 8.5)


def test_an_interval_without_traffic_has_no_latency_and_no_busy_time():
    _, idle = two_scrapes(T1, T1)
    assert idle.work.busy_s == 0.0 and idle.busy_fraction == 0.0 and idle.mean_latency_ms is None


def test_without_model_time_the_capacity_is_unknown_but_requests_still_count():
    counts_only = "\n".join(line for line in T1.splitlines()
                            if line.startswith(("nv_inference_request_success", "nv_inference_request_failure")))
    _, view = two_scrapes(counts_only.replace(" 6000", " 5000"), counts_only)
    assert view.work is None  # capacity unknown: the estimator keeps the declared prior
    assert (view.requests, view.errors) == (8530, 30) and view.busy_fraction is None and view.p99_ms is None
    assert CapacityEstimator(prior=8.0).observe(view.work) == 8.0


@pytest.mark.parametrize("text", [
    "", "\x00\xff garbage \n{{{", "<html>404 Not Found</html>",
    "# HELP node_cpu_seconds_total\nnode_cpu_seconds_total{cpu=\"0\"} 12.5\n",  # someone else's metrics
    "nv_inference_count{model=\"a\" 12\nnv_inference_count{model=\"a\",version=\"1\"} twelve\n",  # nothing parses
])
def test_garbage_or_foreign_metrics_are_unknown_never_an_error(text):
    scrape = parse_scrape(text)
    if scrape is not None:  # a known prefix whose lines did not parse: no model, no figure
        assert scrape.models == {} and scrape.pending is None
        _, view = MetricsTracker().step(scrape, 1.0)
        assert view.work is None and view.requests is None


def test_nan_negative_and_infinite_values_are_no_figure():
    text = ('nv_inference_request_success{model="a",version="1"} NaN\n'
            'nv_inference_count{model="a",version="1"} -5\n'
            'nv_inference_exec_count{model="a",version="1"} +Inf\n'
            'nv_inference_pending_request_count{model="a",version="1"} 2\n'
            'nv_inference_request_summary_us{model="a",version="1",quantile="0.99"} NaN\n')
    a = parse_scrape(text).models["a"]
    assert (a.succeeded, a.rows, a.batches, a.p99_s, a.waiting) == (None, None, None, None, 2)
    _, view = MetricsTracker().step(parse_scrape(text), 1.0)
    assert view.queue_rows == 2.0 and view.work is None and view.pending == 2


def test_label_values_with_escapes_and_a_timestamp_parse():
    text = 'nv_inference_count{model="a \\"quoted\\", b",version="1"} 7 1700000000000\n'
    (s,) = parse_exposition(text)
    assert s.labels == {"model": 'a "quoted", b', "version": "1"} and s.value == 7


def test_a_different_server_behind_the_url_starts_over():
    tracker, _ = MetricsTracker().step(parse_scrape(T0), 100.0)
    tracker, view = tracker.step(parse_scrape(mlserver(5, 0, 5, 0.5)), 110.0)
    assert view.dialect == "mlserver" and view.busy_fraction is None and view.mean_latency_ms is None


def test_mlserver_requests_errors_mean_latency_and_in_flight_no_capacity():
    scrape = parse_scrape(mlserver(10, 1, 11, 0.55))
    assert scrape.in_flight_estimate  # no handling histogram here: gRPC started - handled, an upper bound
    tracker, first = MetricsTracker().step(scrape, 0.0)
    assert first.dialect == "mlserver" and first.pending == 3  # 2 REST /infer in progress + 7 - 6 gRPC ModelInfer
    tracker, view = tracker.step(parse_scrape(mlserver(30, 1, 31, 1.55)), 5.0)
    assert (view.requests, view.errors) == (31, 1)
    assert view.mean_latency_ms == pytest.approx(1000 / 20)  # 1 s over 20 requests
    assert view.work is None and view.busy_fraction is None  # MLServer reports no model time: capacity unknown


def test_a_real_mlserver_idle_after_refused_calls_has_nothing_in_flight():
    # gRPC: 2 OK, 2 INVALID_ARGUMENT, 1 NOT_FOUND, 1 malformed (never started); REST: 1 OK, 1 400 (see the file)
    scrape = parse_scrape(MLS_REFUSED)
    assert scrape.dialect == "mlserver" and scrape.pending == 0 and not scrape.in_flight_estimate
    _, view = MetricsTracker().step(scrape, 0.0)
    assert (view.requests, view.errors) == (3 + 4, 4)  # MLServer counts the callers' mistakes as failures
    assert view.pending == 0
    # Without the handling histogram the count would be started - handled (5 - 2): the refused calls, for good
    no_histogram = "\n".join(line for line in MLS_REFUSED.splitlines() if "grpc_server_handling_seconds" not in line)
    leaky = parse_scrape(no_histogram)
    assert leaky.pending == 3 and leaky.in_flight_estimate


def test_a_real_mlserver_with_slow_calls_in_flight_counts_them_exactly():
    busy, idle = parse_scrape(MLS_IN_FLIGHT), parse_scrape(MLS_REFUSED)
    assert busy.pending == 2 and not busy.in_flight_estimate  # 7 started - 5 ended; started - handled says 5
    assert busy.progress != idle.progress  # the calls' start moved a counter
    assert dict(busy.progress)["grpc_started"] == 7 and dict(busy.progress)["grpc_ended"] == 5


def test_wei_serve_metrics_read_as_a_dialect():
    text = """\
# TYPE weiserving_requests_total counter
weiserving_requests_total{model="ctr",code="OK"} 40.0
weiserving_requests_total{model="ctr",code="INVALID_ARGUMENT"} 3.0
weiserving_requests_total{model="ctr",code="UNAVAILABLE"} 2.0
# TYPE weiserving_queue_rows gauge
weiserving_queue_rows{model="ctr",version="1"} 64.0
# TYPE weiserving_latency_ewma_seconds gauge
weiserving_latency_ewma_seconds{model="ctr",version="1"} 0.012
weiserving_latency_ewma_seconds{model="ctr",version="2"} 0.02
# TYPE weiserving_in_flight gauge
weiserving_in_flight 4.0
"""
    _, view = MetricsTracker().step(parse_scrape(text), 0.0)
    assert view.dialect == "weiserving" and (view.requests, view.errors) == (45, 2)  # a caller's mistake is no error
    assert view.queue_rows == 64.0 and view.mean_latency_ms == pytest.approx(20.0) and view.pending == 4
    assert view.work is None


def test_a_huge_number_of_models_is_cut_not_a_memory_sink():
    text = "".join(f'nv_inference_count{{model="m{i}",version="1"}} 1\n' for i in range(5000))
    assert len(parse_scrape(text).models) == 1024
    assert MetricsTracker().step(parse_scrape(text), 0.0)[1].work is None  # rows but no model time
