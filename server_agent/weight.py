"""The weight controller: capacity x health x slow-start, smoothed, clamped and rate-limited.

Pure: server samples and the current time go in (:meth:`WeightController.observe`),
a :class:`Decision` comes out (:meth:`WeightController.decide`). The shell
polls the model server's ``/status`` (a :class:`protocol.status.StatusDoc`,
read by :mod:`server_agent.server_io`), feeds the :class:`ServerSample` it
yields, and calls ``Publisher.update(weight=...)`` only when the decision
says so.

::

    weight = clamp(score * health * ramp, floor * score, max * score)

- ``health`` is the product of three factors in (0, 1]. Latency: an
  integral controller on log(latency / target) -- it shrinks while latency is
  above the target, grows back while below ``(1 - latency_band)`` x target,
  holds in between, and never leaves [floor, 1]. Over the target, the
  shrink is scaled down when the server's batch threads are busier than
  ``latency_busy_gate`` (an overloaded pod's capacity, not its health, is
  what the weight must correct). Queue growth
  ``1 / (1 + growth / scale)`` for a growing queue, and errors, linear from 1
  at ``error_rate_ok`` to 0 at ``error_rate_bad``; these two are smoothed by a
  time-based EWMA (samples may come at any interval). The queue's *signed*
  growth is smoothed before it is clipped at 0: a queue that only fluctuates
  (0, 800, 0, 800 rows at 1 s polls) averages no growth, where clipping each
  poll first counted every rise and no fall and cut a busy pod's weight by
  15-20 % (the fastest pod of ``bench/hetero.py``, which sees the most calls). A sample from a server
  that is not ready has health 0 (the weight falls to the floor while the
  shell drains).
- ``ramp`` rises linearly from the floor fraction to 1 over ``ramp_s`` after
  each (re)registration; without one there is no ramp.
- The floor keeps a slow pod in rotation, so the traffic it gets can show it
  recovered; without traffic its latency would never be measured again.

Why it settles, and why latency is integral rather than proportional: a
proportional factor ``target / latency`` balances only where latency is well
above target, on the steep part of the latency curve, where a 10% weight step
moves latency by 40% or more; under the publish threshold it then hunts
between two published values forever (we measured it in the two-pod loop). The
integrator balances where latency is at the target, holds still inside the
band, and one poll moves it by a few percent at most, so a publish lands inside
the band instead of across it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import WeightConfig
from .errors import ConfigError

__all__ = ["Decision", "Health", "ServerSample", "WeightController", "round_weight"]

LOG_MAX_RATIO = math.log(4.0)
"""The latency error counted per poll is capped at a 4x ratio (see ``_latency_error``)."""

MAX_STEP_S = 10.0
"""The longest interval one sample integrates over: after a stalled poll loop,
one stale reading must not move the weight by minutes' worth."""


def round_weight(w: float) -> float:
    """Three significant digits: what is published, so noise below that never counts as a move."""
    if w <= 0 or not math.isfinite(w):
        return w
    return round(w, 2 - math.floor(math.log10(w)))


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSample:
    """What the controller reads of its server at one poll; None is unknown (no evidence).

    ``p99_ms`` / ``ewma_ms``: the worst model's latency; ``queue_rows``: rows
    queued over all models; ``requests`` / ``errors``: cumulative counters (the
    rate comes from the difference between samples; ``serving`` exposes them on
    /metrics, not /status)."""

    ready: bool = True
    p99_ms: float | None = None
    ewma_ms: float | None = None
    queue_rows: float | None = None
    requests: int | None = None
    errors: int | None = None
    busy_fraction: float | None = None


@dataclass(frozen=True, slots=True)
class Health:
    latency: float = 1.0
    queue: float = 1.0
    errors: float = 1.0
    ready: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """``publish``: write ``weight`` now. ``weight`` is the controller's current
    weight either way (when not publishing, ZooKeeper keeps the last one)."""

    publish: bool
    weight: float
    reason: str


class WeightController:
    """One pod's weight. The shell's loop, every status poll (5 s is a good pace)::

        ctl = WeightController(cfg, capacity_score=report.score, now=clock())
        publisher.register(); ctl.registered(clock())     # and again after each re-registration
        d = ctl.step(read_server(url).sample(), clock())
        if d.publish:
            publisher.update(weight=d.weight)

    Invariants: the weight is always in [floor, max] x score and > 0 (so the
    registry accepts it for a routable record); nothing here reads a clock.
    """

    def __init__(self, config: WeightConfig | None = None, *, capacity_score: float, now: float) -> None:
        self.config = config or WeightConfig()
        self.set_capacity_score(capacity_score)
        # A new pod is trusted until samples say otherwise: both factors start at 1.
        self._log_latency_health = 0.0  # the integrator's state, in [log floor, 0]
        self._other = 1.0  # EWMA of the error factor (0 while not ready)
        self._growth = 0.0  # EWMA of the queue's signed growth, rows/s
        self._raw = Health()
        self._last_sample: ServerSample | None = None
        self._last_time = now
        self._registered_at: float | None = None
        self._force: str | None = None
        self._published: float | None = None
        self._published_at = now
        self._published_ramping = False
        self.publishes = 0

    # -- inputs ----------------------------------------------------------------

    def set_capacity_score(self, score: float) -> None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not (math.isfinite(score) and score > 0):
            raise ConfigError("capacity_score", "a finite number > 0", score)
        self._score = float(score)

    def registered(self, now: float) -> None:
        """(Re)registered at ``now``: restart the slow-start ramp and publish at the next decision."""
        self._registered_at = now
        self._force = "registered"

    def observe(self, sample: ServerSample, now: float) -> Health:
        """Fold one server sample into the smoothed health; returns this sample's raw factors."""
        cfg = self.config
        prev, dt = self._last_sample, max(0.0, now - self._last_time)
        latency_ms = sample.p99_ms if cfg.latency_signal == "p99" else sample.ewma_ms
        if latency_ms is not None and dt > 0:  # no traffic, no evidence: hold
            self._log_latency_health = min(0.0, max(
                math.log(cfg.floor_fraction),
                self._log_latency_health
                - cfg.latency_gain_per_s * min(dt, MAX_STEP_S) * self._latency_error(latency_ms)
                * self._busy_gate(sample.busy_fraction, latency_ms)))
        h_lat = math.exp(self._log_latency_health)
        h_queue = 1.0
        # Time-based EWMA: the same tau whatever the polling interval.
        alpha = 1.0 if cfg.smoothing_tau_s == 0 else 1.0 - math.exp(-dt / cfg.smoothing_tau_s)
        if prev is not None and dt > 0 and sample.queue_rows is not None and prev.queue_rows is not None:
            growth = (sample.queue_rows - prev.queue_rows) / dt
            h_queue = self._queue_factor(growth)
            self._growth += alpha * (growth - self._growth)
        h_err = 1.0
        rate = _error_rate(prev, sample)
        if rate is not None and rate > cfg.error_rate_ok:
            h_err = max(0.0, 1.0 - (rate - cfg.error_rate_ok) / (cfg.error_rate_bad - cfg.error_rate_ok))
        raw = Health(h_lat, h_queue, h_err, sample.ready)
        self._other += alpha * ((h_err if sample.ready else 0.0) - self._other)
        self._raw, self._last_sample, self._last_time = raw, sample, max(now, self._last_time)
        return raw

    def _queue_factor(self, growth_rows_per_s: float) -> float:
        return 1.0 / (1.0 + max(0.0, growth_rows_per_s) / self.config.queue_growth_scale_rows_per_s)

    def _busy_gate(self, busy: float | None, latency_ms: float) -> float:
        """1 below the gate (or recovering, or busy unknown), falling to 0 at 100 % busy."""
        gate = self.config.latency_busy_gate
        if busy is None or latency_ms <= self.config.latency_target_ms or busy <= gate:
            return 1.0
        return max(0.0, (1.0 - busy) / (1.0 - gate))

    def _latency_error(self, latency_ms: float) -> float:
        """log(latency / target) above the target, log(latency / band edge) below the band, else 0.

        Capped at log(MAX_RATIO) either way: one absurd p99 (a GC pause, a
        cold model) cannot move the weight by more than a few percent per poll.
        """
        cfg = self.config
        ratio = latency_ms / cfg.latency_target_ms
        low = 1.0 - cfg.latency_band
        if ratio > 1.0:
            return min(math.log(ratio), LOG_MAX_RATIO)
        if ratio < low:
            return -LOG_MAX_RATIO if ratio <= 0 else max(math.log(ratio / low), -LOG_MAX_RATIO)
        return 0.0

    # -- outputs ---------------------------------------------------------------

    def ramp(self, now: float) -> float:
        cfg = self.config
        if self._registered_at is None or cfg.ramp_s == 0:
            return 1.0
        progress = min(1.0, max(0.0, (now - self._registered_at) / cfg.ramp_s))
        return cfg.floor_fraction + (1.0 - cfg.floor_fraction) * progress

    def weight(self, now: float) -> float:
        cfg = self.config
        w = self._score * self.health * self.ramp(now)
        return round_weight(min(max(w, cfg.floor_fraction * self._score), cfg.max_fraction * self._score))

    def decide(self, now: float) -> Decision:
        """Whether to publish now. A ``publish=True`` decision is taken as published."""
        cfg = self.config
        w = self.weight(now)
        ramping = self.ramp(now) < 1.0
        p = self._published
        if p is None:
            return self._publish(w, now, ramping, "first weight")
        change = (w - p) / p
        what = f"{p:g} -> {w:g} ({change:+.1%})"
        if self._force is not None:
            return self._publish(w, now, ramping, f"{self._force}: {what}")
        if abs(change) > cfg.publish_threshold:
            return self._publish(w, now, ramping, f"moved {what}")
        if w != p and self._published_ramping and not ramping:
            return self._publish(w, now, ramping, f"slow start done: {what}")
        if w != p and now - self._published_at >= cfg.max_interval_s:
            return self._publish(w, now, ramping, f"max interval {cfg.max_interval_s:g}s: {what}")
        return Decision(False, w, f"within {cfg.publish_threshold:.0%} of published: {what}")

    def step(self, sample: ServerSample, now: float) -> Decision:
        self.observe(sample, now)
        return self.decide(now)

    def _publish(self, w: float, now: float, ramping: bool, reason: str) -> Decision:
        self._published, self._published_at, self._published_ramping = w, now, ramping
        self._force = None
        self.publishes += 1
        return Decision(True, w, reason)

    # -- views -----------------------------------------------------------------

    @property
    def health(self) -> float:
        """Health in [0, 1]: the latency integrator times the smoothed queue and error factors."""
        return math.exp(self._log_latency_health) * self._queue_factor(self._growth) * self._other

    @property
    def last_health(self) -> Health:
        """The raw factors of the latest sample (for /metrics and logs)."""
        return self._raw

    @property
    def published(self) -> float | None:
        return self._published

    def __repr__(self) -> str:
        return (f"<WeightController score={self._score:g} health={self.health:.3f} "
                f"published={self._published} publishes={self.publishes}>")


def _error_rate(prev: ServerSample | None, cur: ServerSample) -> float | None:
    """Errors per request between two samples; None without counts, traffic or after a counter reset."""
    if prev is None or None in (prev.requests, prev.errors, cur.requests, cur.errors):
        return None
    d_req = cur.requests - prev.requests  # type: ignore[operator]
    d_err = cur.errors - prev.errors  # type: ignore[operator]
    if d_req <= 0 or d_err < 0:
        return None
    return min(1.0, d_err / d_req)
