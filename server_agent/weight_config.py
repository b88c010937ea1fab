"""The weight controller's knobs (see :mod:`server_agent.weight`): frozen, keyword-only, validated.

Re-exported by :mod:`server_agent.config`, where the agent's other configuration lives.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import _fraction, _number
from .errors import ConfigError

__all__ = ["WeightConfig"]


@dataclass(frozen=True, kw_only=True)
class WeightConfig:
    """The weight controller's knobs (see :mod:`server_agent.weight`).

    - ``latency_target_ms`` (100): the p99 a ranking call tolerates from one
      pod. ``latency_signal``: ``"p99"`` (default: tail latency is what ranking
      feels) or ``"ewma"``. The latency factor is an integral controller: it
      shrinks while latency is above the target, grows back while latency is
      below ``(1 - latency_band)`` of it, and holds inside that band.
      ``latency_band`` (0.3): must exceed the publish threshold times the
      latency's elasticity to weight (1.5-2.5 near 70% utilisation), else the
      weight hunts between two published values around the target.
      ``latency_gain_per_s`` (0.02): log-weight moved per second per unit of
      log(latency / target); with the ratio capped at 4x that sheds at most
      2.8%/s, so one 5 s status poll never moves the weight by more than the
      band holds, and halving a badly overloaded pod's weight takes ~25 s
      (clients' own in-flight and latency feedback covers the seconds before).
      ``latency_busy_gate`` (0.8): a pod whose batch threads are busier than
      this is slow because it is given more than it can do, which its measured
      capacity corrects within seconds; latency over the target then shrinks
      the weight less, down to not at all at 100 % busy (linear from the gate).
      Without the gate the two fight: from equal priors at 80 % load on a
      1:2:4 fleet, the slower pods' p99 exceeded the target while their
      capacity was being measured, the integrator cut them to the floor, and
      they needed ~100 s to climb back. A slow pod that is *not* busy (a
      stalled disk, a bad host) is a health problem and feels the full factor.
    - ``queue_growth_scale_rows_per_s`` (1000): a queue growing by this many
      rows per second halves health. A ranking call carries 1-2k rows, so this is
      about one request every 1-2 s accumulating: clear overload, not noise.
    - ``error_rate_ok`` (1%) / ``error_rate_bad`` (50%): health falls linearly
      between them; errors below 1% are clients' bad inputs, not the pod.
    - ``smoothing_tau_s`` (20): time constant of the EWMA over the queue and
      error factors: one noisy poll moves the weight by a few percent, a real
      trend within about a minute. (The latency integrator needs no EWMA: an
      integral is already a low-pass filter, and a lag in front of it would
      make it overshoot.)
    - ``floor_fraction`` (5%) / ``max_fraction`` (100%) of the capacity score:
      the floor keeps a slow pod in rotation so it can prove itself recovered;
      health never raises a pod above its capacity.
    - ``ramp_s`` (60): slow start after (re)registration, linear from the floor.
      Long enough to warm caches and JIT paths of a freshly loaded model and for
      every client to see the pod before it gets its full share; short enough
      that a rolling update of 100 pods does not take hours. This is the
      system's one slow start: clients add none to a WARMING record (the
      argument is in :class:`weiclient.balancer.SlowStart`), so a new pod's
      first share is ``floor_fraction`` of its weight.
    - ``publish_threshold`` (10% relative) and ``max_interval_s`` (60): write to
      ZooKeeper only on a real move, or at most once a minute for drift.
    """

    latency_target_ms: float = 100.0
    latency_signal: str = "p99"
    latency_band: float = 0.3
    latency_gain_per_s: float = 0.02
    latency_busy_gate: float = 0.8
    queue_growth_scale_rows_per_s: float = 1000.0
    error_rate_ok: float = 0.01
    error_rate_bad: float = 0.5
    smoothing_tau_s: float = 20.0
    floor_fraction: float = 0.05
    max_fraction: float = 1.0
    ramp_s: float = 60.0
    publish_threshold: float = 0.10
    max_interval_s: float = 60.0

    def __post_init__(self) -> None:
        _number("latency_target_ms", self.latency_target_ms, strict=True)
        if self.latency_signal not in ("p99", "ewma"):
            raise ConfigError("latency_signal", "'p99' or 'ewma'", self.latency_signal)
        _fraction("latency_band", self.latency_band)
        if self.latency_band >= 1:
            raise ConfigError("latency_band", "a fraction in [0, 1)", self.latency_band)
        _number("latency_gain_per_s", self.latency_gain_per_s, strict=True)
        _fraction("latency_busy_gate", self.latency_busy_gate)
        if self.latency_busy_gate >= 1:
            raise ConfigError("latency_busy_gate", "a fraction in [0, 1)", self.latency_busy_gate)
        _number("queue_growth_scale_rows_per_s", self.queue_growth_scale_rows_per_s, strict=True)
        _fraction("error_rate_ok", self.error_rate_ok)
        _fraction("error_rate_bad", self.error_rate_bad, allow_zero=False)
        if self.error_rate_bad <= self.error_rate_ok:
            raise ConfigError("error_rate_bad", f"> error_rate_ok ({self.error_rate_ok:g})", self.error_rate_bad)
        _number("smoothing_tau_s", self.smoothing_tau_s)
        _fraction("floor_fraction", self.floor_fraction, allow_zero=False)
        _number("max_fraction", self.max_fraction, strict=True)
        if self.max_fraction < self.floor_fraction:
            raise ConfigError("max_fraction", f">= floor_fraction ({self.floor_fraction:g})", self.max_fraction)
        _number("ramp_s", self.ramp_s)
        _number("publish_threshold", self.publish_threshold)
        _number("max_interval_s", self.max_interval_s, strict=True)
