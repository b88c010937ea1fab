"""Admission (pure): refuse at once what cannot finish in time, or would wait in a standing queue."""

from __future__ import annotations

import pytest

from serving.batching.admission import Admission, AdmissionConfig
from serving.errors import ConfigError

CAP = 1000.0  # rows per second


def check(adm: Admission, **kw):
    """1,000 rows/s in 50 ms batches: a default call may wait 150 ms (3 batches), a sheddable one 75."""
    args = dict(rows=100, now=10.0, deadline=None, priority="default", queued_rows=0, running_rows=0,
                capacity_rows_per_s=CAP, batch_s=0.05)
    args.update(kw)
    return adm.check(**args)


@pytest.mark.parametrize(("kw", "refused", "retry_after_ms"), [
    ({}, False, None),                                              # empty queue
    ({"deadline": 10.001}, False, None),                            # idle: runs, whatever the pace says
    ({"queued_rows": 150}, False, None),                            # 150 ms: 3 batches of 50 ms
    ({"queued_rows": 250}, True, 100.0),                            # 250 ms > 150 ms: drains to it in 100
    ({"queued_rows": 100, "running_rows": 200}, True, 50.0),        # half the running batch counts
    ({"queued_rows": 100, "priority": "sheddable"}, True, 25.0),    # sheddable: half the bound
    ({"queued_rows": 550, "priority": "critical"}, False, None),    # critical: four times it
    ({"queued_rows": 100, "deadline": 10.15}, True, 50.0),          # 100 + 100 ms > 150 ms left
    ({"queued_rows": 100, "deadline": 10.25}, False, None),
    ({"queued_rows": 100, "deadline": 9.0}, False, None),           # already late: expiry's to answer
    ({"queued_rows": 10_000, "capacity_rows_per_s": None}, False, None),  # nothing measured: no time bound
    ({"queued_rows": 10_000, "batch_s": None}, False, None),        # no batch time: no wait bound ...
    ({"queued_rows": 10_000, "batch_s": None, "deadline": 11.0}, True, 9100.0),  # ... the deadline holds
])
def test_admission_table(kw, refused, retry_after_ms):
    r = check(Admission(AdmissionConfig(min_queue_delay_ms=20)), **kw)  # the bound: 3 batches of 50 ms
    assert (r is not None) == refused
    if refused:
        assert r.retry_after_s * 1000 == pytest.approx(retry_after_ms)
        assert r.reason.startswith("overloaded:") and "retry on another endpoint" in r.reason


def test_a_fixed_bound_a_floor_and_off():
    fixed = Admission(AdmissionConfig(max_queue_delay_ms=500))
    assert check(fixed, queued_rows=450) is None
    assert check(fixed, queued_rows=505).retry_after_s == pytest.approx(0.010)  # the floor: 10 ms
    assert check(Admission(AdmissionConfig(max_queue_delay_ms=0)), queued_rows=10_000) is None
    assert check(Admission(AdmissionConfig(enabled=False)), queued_rows=10_000, deadline=10.001) is None
    tiny = Admission(AdmissionConfig(min_queue_delay_ms=20))
    assert check(tiny, queued_rows=15, batch_s=0.001) is None  # 4 x 1 ms < the 20 ms floor


def test_the_reason_names_the_figures():
    r = check(Admission(), queued_rows=100, deadline=10.15)
    assert "200 ms" in r.reason and "150 ms left" in r.reason


@pytest.mark.parametrize("bad", [{"max_queue_delay_ms": -1}, {"queue_delay_batches": float("nan")},
                                 {"min_retry_after_ms": "5"}, {"enabled": 1}])
def test_config_is_checked(bad):
    with pytest.raises(ConfigError, match="admission"):
        AdmissionConfig(**bad)
