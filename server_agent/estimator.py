"""Capacity in samples per second, measured: what the server did, divided by the time it took.

Pure: the server's work counters (from its status document) and the current
time go in (:meth:`CapacityEstimator.observe`); the estimate comes out. The
weight controller scales it by health and the slow-start ramp.

One poll interval is one sample. The server reports counters that only grow
(:class:`protocol.status.Work`): rows completed and time spent inside the
model, summed over the batch threads. Over the interval::

    sample   = rows / busy              rows per second of full use
    busy     = sum over models of (busy_s / batch_threads)   wall seconds at full use
    evidence = busy                     how much the sample says

so ``sample`` is throughput divided by busy fraction, at the batch sizes the
server actually ran: a pod at 40 % busy doing 4,000 rows/s can do 10,000.

The estimate is an average of the samples weighted by their evidence, in
which old evidence fades as new evidence arrives (an exponential filter in
busy seconds, not in wall time, normalised so that a young estimate is the
plain mean of what it has)::

    f = exp(-evidence / memory_busy_s);  S = S x f + evidence x sample;  E = E x f + evidence
    estimate = S / E

- **The prior**: before ``min_evidence_s`` (0.5 s) of model time, the
  estimate is the prior: declared cores x ``samples_per_core_s``, a guess
  that may be off by any factor and only orders pods for their first
  seconds of traffic, so it is replaced, not averaged in. A start-up
  calibration is a measurement: it enters the average as
  ``calibrated_evidence_s`` (5 s) of evidence and fades like any other.
- **Confidence grows with evidence**: ``evidence / (evidence + prior's
  weight)``, reported beside the estimate.
- **It follows a change**: once old, each second of model time moves the
  estimate by ``1 - exp(-1 / memory_busy_s)`` of the way; at 80 % busy that
  is 63 % of a step in ~6 s and 95 % in ~19 s. What counts is the pod's own
  busy time: a pod that became slow is sent less (``p2c_jsed`` reads its
  queue), ran 40 % busy in ``bench/hetero.py --swap``, and with a memory of
  10 s its weight was still 44 % off the new ratio a minute after the swap.
- **No traffic, no change**: an interval with less than ``min_busy_s`` of
  model time is no evidence, and the estimate holds (an idle or ejected pod
  keeps its weight instead of decaying towards the prior).
- A counter that went backwards (a version reload restarts them) starts a
  new baseline; that interval is no evidence.

Several models on one pod are summed: the estimate is rows per second of the
pod's traffic mix, which is what the clients' mix will meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["CapacityEstimator", "EstimatorConfig", "WorkTotals"]


@dataclass(frozen=True, kw_only=True)
class EstimatorConfig:
    """``memory_busy_s`` (5): evidence, in seconds of full-use model time, over which an old
    estimate fades: a pod 40 % busy follows a speed change within the minute the weights must
    settle in, while one slow second (a GC pause, a cold cache) moves it by under a fifth of
    the way.
    ``min_evidence_s`` (0.5): model time before measurements replace a guessed prior.
    ``prior_evidence_s`` (1): a guessed prior's weight in the confidence only.
    ``calibrated_evidence_s`` (5): what a start-up calibration weighs in the average (it measured
    the model, but on synthetic rows with nothing beside it). ``min_busy_s`` (0.05): an interval
    with less model time says nothing. ``max_ratio`` (100): once settled (more evidence than
    ``memory_busy_s``), a sample more than this far from the estimate is ignored (a counter
    glitch, not a pod 100x faster)."""

    memory_busy_s: float = 5.0
    min_evidence_s: float = 0.5
    prior_evidence_s: float = 1.0
    calibrated_evidence_s: float = 5.0
    min_busy_s: float = 0.05
    max_ratio: float = 100.0

    def __post_init__(self) -> None:
        for name in ("memory_busy_s", "min_evidence_s", "prior_evidence_s", "calibrated_evidence_s", "min_busy_s",
                     "max_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigError(name, "a finite number > 0", v)
        if self.max_ratio <= 1:
            raise ConfigError("max_ratio", "a number > 1", self.max_ratio)


@dataclass(frozen=True, slots=True)
class WorkTotals:
    """The server's counters at one poll: rows completed and full-use seconds (busy / threads)."""

    rows: int
    busy_s: float


class CapacityEstimator:
    """One pod's capacity estimate in samples (rows) per second; see the module docstring."""

    def __init__(self, config: EstimatorConfig | None = None, *, prior: float, calibrated: bool = False) -> None:
        self.config = cfg = config or EstimatorConfig()
        if isinstance(prior, bool) or not isinstance(prior, int | float) or not math.isfinite(prior) or prior <= 0:
            raise ConfigError("prior", "a finite number > 0 (samples per second)", prior)
        self.prior = float(prior)
        self.calibrated = calibrated
        self.evidence_s = 0.0  # full-use seconds measured so far (never faded: the confidence)
        self._prior_weight = cfg.calibrated_evidence_s if calibrated else cfg.prior_evidence_s
        # the faded, evidence-weighted sums; a calibration counts as evidence, a guess does not
        self._sum = self.prior * cfg.calibrated_evidence_s if calibrated else 0.0
        self._weight = cfg.calibrated_evidence_s if calibrated else 0.0
        self._last: WorkTotals | None = None
        self.last_sample: float | None = None

    @property
    def measured(self) -> bool:
        """Whether :attr:`value` comes from measurements (a calibration counts), not a guess."""
        return self.calibrated or self.evidence_s >= self.config.min_evidence_s

    @property
    def value(self) -> float:
        """Samples per second: the measured average once there is enough of it, else the prior."""
        return self._sum / self._weight if self.measured else self.prior

    @property
    def confidence(self) -> float:
        """0 with only the prior, towards 1 as evidence outweighs it."""
        return self.evidence_s / (self.evidence_s + self._prior_weight)

    def observe(self, totals: WorkTotals | None) -> float:
        """Fold one poll's counters in (None: the server reported none); returns the estimate."""
        if totals is None:
            return self.value
        last, self._last = self._last, totals
        if last is None:
            return self.value
        rows, busy = totals.rows - last.rows, totals.busy_s - last.busy_s
        if rows < 0 or busy < 0:  # counters restarted (a reload): a new baseline
            return self.value
        if busy < self.config.min_busy_s or rows == 0:
            return self.value  # no traffic, no evidence: hold
        sample = rows / busy
        value, limit = self.value, self.config.max_ratio
        if self.evidence_s > self.config.memory_busy_s and not value / limit <= sample <= value * limit:
            return value
        fade = math.exp(-busy / self.config.memory_busy_s)
        self._sum = self._sum * fade + busy * sample
        self._weight = self._weight * fade + busy
        self.evidence_s += busy
        self.last_sample = sample
        return self.value

    def __repr__(self) -> str:
        return (f"<CapacityEstimator {self.value:.1f}/s prior={self.prior:g} "
                f"evidence={self.evidence_s:.1f}s confidence={self.confidence:.2f}>")
