"""Admission: refuse at once what the queue cannot serve in time. Pure: the time is an argument.

A queue that accepts everything turns overload into latency: at 140 % of
capacity every call waits until its deadline, the model spends its time on
calls whose callers have given up, and goodput collapses (we measured 55 %
of the capacity left, p50 2 s). A refusal that costs a millisecond lets the
client try another pod, shed the call, or back off, while the queue stays
short enough that what it accepts finishes in time.

A request of ``rows`` arriving at ``now`` is admitted when both hold:

- **its deadline can be met**: ``now + wait + rows / capacity <= deadline``,
  where ``wait = (queued rows + half the rows of the running batches) /
  capacity`` is what the queue ahead of it will take at the pace the
  runner measured (``capacity``: rows per second over its batch threads,
  :class:`~serving.batching.stats.RollingStats`' newest evidence);
- **the queue is not standing**: ``wait <= bound x share[priority]``, where
  ``bound`` is ``max_queue_delay_ms`` or, when that is ``None`` (the
  default), ``queue_delay_batches`` times the runner's mean batch time: a
  queue that does not drain within a few batches is a standing queue
  (CoDel's argument) and only adds latency; a batch or two queued keep
  every thread busy, so goodput is not lost. Three, not four: on a 1:2:4
  fleet at 140 % (``bench/overload.py``) four batch times let the p99 of
  the calls served reach 1.95x its value at 80 % load, with the same
  goodput (98 % of the capacity left).

  A ``sheddable`` call may wait half of it, a ``critical`` one four times
  it: under pressure sheddable calls are refused first and critical ones
  last. The bound is on every arrival, not CoDel's "above target for a
  whole interval": a burst allowance (4x the bound until the wait had
  stood above it for 10 batch times) flapped under sustained overload, each
  return to the burst mode letting the queue grow for a second, and the
  p99 of the calls served at 140 % went from 1.2-1.4x to 2.9x its value at
  80 % (``bench/overload.py``). A burst at 80 % load that passes the bound
  on one pod is refused there in a millisecond and served by another.

Without a capacity measurement (a new runner, an idle one) nothing is
refused on time grounds: the length bound of the queue still holds. An idle
runner (nothing queued, nothing running) admits every call: it can only be
refused there on a stale pace, and running is how the pace is measured
again. Without this a pod frozen for 5 s (SIGSTOP) came back with a batch
that "took" 5 s as its newest evidence and refused every call with a short
deadline until that evidence aged out (``tests/faults``). A
refusal says when to come back: the time for the queue to drain to the
bound (``retry_after_s``, at least ``min_retry_after_s``), sent to the
client as ``wei-retry-after-ms`` (see :mod:`protocol.wire`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.errors import ConfigError

__all__ = ["Admission", "AdmissionConfig", "Refusal", "SHARES"]

SHARES = {"sheddable": 0.5, "default": 1.0, "critical": 4.0}


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    """``enabled`` (true). ``max_queue_delay_ms`` (None: ``queue_delay_batches`` (3) batch times,
    at least ``min_queue_delay_ms`` (250)); 0 turns the wait bound off (deadlines still count).
    The floor: a fast pod's batches are short (20 ms on the fastest pod of ``bench/hetero.py``), and
    three of them (60 ms), or a 100 ms floor, were passed on all three pods at once by Poisson bursts
    at 80 % load often enough that 1-3 calls in 1,400 met refusals everywhere, twice. At 80 % a late
    answer is better than an error; 250 ms of queue is within a ranking call's deadline, and under
    overload the bound still keeps the calls served within 2x their p99 at 80 %.
    ``min_retry_after_ms`` (10): the smallest back-off a refusal asks for."""

    enabled: bool = True
    max_queue_delay_ms: float | None = None
    queue_delay_batches: float = 3.0
    min_queue_delay_ms: float = 250.0
    min_retry_after_ms: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_queue_delay_ms", "queue_delay_batches", "min_queue_delay_ms", "min_retry_after_ms"):
            value = getattr(self, name)
            if value is None and name == "max_queue_delay_ms":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(f"admission.{name}: expected a finite number >= 0, got {value!r}")
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"admission.enabled: expected true or false, got {self.enabled!r}")


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    retry_after_s: float


class Admission:
    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()

    def bound_s(self, batch_s: float | None) -> float | None:
        """The longest wait a default-priority call may queue for; None: no bound."""
        c = self.config
        if c.max_queue_delay_ms is not None:
            return c.max_queue_delay_ms / 1000 if c.max_queue_delay_ms > 0 else None
        if batch_s is None:
            return None
        return max(c.min_queue_delay_ms / 1000, c.queue_delay_batches * batch_s)

    def check(self, *, rows: int, now: float, deadline: float | None, priority: str, queued_rows: int,
              running_rows: int, capacity_rows_per_s: float | None, batch_s: float | None) -> Refusal | None:
        """None to admit, or why not and when to come back."""
        c = self.config
        if not c.enabled or not capacity_rows_per_s or capacity_rows_per_s <= 0:
            return None
        wait = (queued_rows + running_rows / 2) / capacity_rows_per_s
        service = rows / capacity_rows_per_s
        floor = c.min_retry_after_ms / 1000
        if queued_rows == 0 and running_rows == 0:
            return None
        bound = self.bound_s(batch_s)
        if bound is not None:
            allowed = bound * SHARES.get(priority, 1.0)
            if wait > allowed:
                return Refusal(f"overloaded: the queue ahead would take {wait * 1000:.0f} ms, over the "
                               f"{allowed * 1000:.0f} ms a {priority} call may wait here; retry on another "
                               f"endpoint", max(floor, wait - allowed))
        if deadline is not None and now < deadline < now + wait + service:  # one already past: expiry answers it
            left = deadline - now
            return Refusal(f"overloaded: this call would finish in about {(wait + service) * 1000:.0f} ms "
                           f"(queue {wait * 1000:.0f} ms + its {rows} rows {service * 1000:.0f} ms), after its "
                           f"deadline ({left * 1000:.0f} ms left); retry on another endpoint",
                           max(floor, wait + service - left))
        return None
