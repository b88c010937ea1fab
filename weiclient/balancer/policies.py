"""Policies by name: a service config's ``balancer.policy`` and ``knobs`` become a :class:`Policy`.

A policy is a frozen value: which selector, its knobs, and the knobs of the
parts every policy shares (slow start, outlier ejection, load metric). The
name-to-selector mapping is a table (:data:`POLICIES`), so adding a policy is
one entry, and an unknown name or knob is an error that lists the valid ones.

Knob names: the selector's own knobs bare (``choices``, ``load_factor``),
the shared parts' knobs under their section (``slow_start.window_s``,
``outlier.consecutive_failures``, ``load.decay_s``)::

    {"policy": "consistent_hash",
     "knobs": {"load_factor": 1.5, "slow_start.window_s": 10}}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import InvalidBalancerConfig
from .delay import ExpectedDelay, JsedConfig, LeastOutstanding, LeastOutstandingConfig
from .hashing import BoundedLoadHash, HashConfig
from .metric import PeakEwma
from .orca_wrr import OrcaWeightedRoundRobin, OrcaWrrConfig
from .outlier import OutlierDetection
from .prequal import Prequal, PrequalConfig
from .selectors import P2CConfig, PowerOfChoices, Selector, SmoothWeightedRoundRobin, WeightedRandom, WrrConfig
from .state import LoadTotals
from .weights import SlowStart

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Policy",
    "PolicyKind",
    "RandomConfig",
    "build_policy",
    "policy_from_spec",
    "valid_knobs",
]

DEFAULT_POLICY = "p2c_jsed"


@dataclass(frozen=True, kw_only=True)
class RandomConfig:
    """Weighted random has no knobs of its own."""


SelectorConfig = (P2CConfig | WrrConfig | RandomConfig | HashConfig | JsedConfig | PrequalConfig
                  | LeastOutstandingConfig | OrcaWrrConfig)


@dataclass(frozen=True)
class PolicyKind:
    config: type                                                    # the selector's knob dataclass
    make: Callable[[Any, PeakEwma, LoadTotals], Selector]           # (knobs, metric, totals) -> selector
    summary: str


POLICIES: Mapping[str, PolicyKind] = MappingProxyType({
    "weighted_p2c": PolicyKind(P2CConfig, lambda c, m, t: PowerOfChoices(c, m),
                               "weighted power of two choices on peak-EWMA cost"),
    "round_robin": PolicyKind(WrrConfig, lambda c, m, t: SmoothWeightedRoundRobin(c),
                              "nginx's smooth weighted round robin"),
    "random": PolicyKind(RandomConfig, lambda c, m, t: WeightedRandom(), "weighted random"),
    "consistent_hash": PolicyKind(HashConfig, lambda c, m, t: BoundedLoadHash(c, t),
                                  "consistent hashing with bounded loads on the request key"),
    "p2c_jsed": PolicyKind(JsedConfig, lambda c, m, t: ExpectedDelay(c, m),
                           "power of two choices on expected delay: rows ahead / capacity (default)"),
    "prequal": PolicyKind(PrequalConfig, lambda c, m, t: Prequal(c, m),
                          "Prequal's hot-cold rule on requests in flight and latency"),
    "least_outstanding": PolicyKind(LeastOutstandingConfig, lambda c, m, t: LeastOutstanding(c),
                                    "weighted least outstanding rows"),
    "orca_wrr": PolicyKind(OrcaWrrConfig, lambda c, m, t: OrcaWeightedRoundRobin(c),
                           "smooth weighted round robin on ORCA-reported weights (gRFC A58)"),
})

_SECTIONS: Mapping[str, type] = MappingProxyType(
    {"slow_start": SlowStart, "outlier": OutlierDetection, "load": PeakEwma})


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Everything a :class:`~.balancer.Balancer` is composed from, as values."""

    name: str = DEFAULT_POLICY
    selector: SelectorConfig = field(default_factory=JsedConfig)
    slow_start: SlowStart = field(default_factory=SlowStart)
    outlier: OutlierDetection = field(default_factory=OutlierDetection)
    load: PeakEwma = field(default_factory=PeakEwma)

    def __post_init__(self) -> None:
        kind = _kind(self.name)
        if not isinstance(self.selector, kind.config):
            raise InvalidBalancerConfig("selector", f"a {kind.config.__name__} for policy {self.name!r}",
                                        self.selector)

    def make_selector(self, totals: LoadTotals) -> Selector:
        return POLICIES[self.name].make(self.selector, self.load, totals)


def _kind(name: str) -> PolicyKind:
    kind = POLICIES.get(name)
    if kind is None:
        raise InvalidBalancerConfig("balancer.policy", "one of " + ", ".join(sorted(POLICIES)), name)
    return kind


def valid_knobs(name: str) -> list[str]:
    """Every knob the policy ``name`` accepts, sorted."""
    names = [f.name for f in dataclasses.fields(_kind(name).config)]
    for section, cls in _SECTIONS.items():
        names += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return sorted(names)


def _check_type(knob: str, default: object, value: object) -> None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        expected = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    if not ok:
        raise InvalidBalancerConfig(f"balancer.knobs[{knob!r}]", expected, value)


def build_policy(name: str = DEFAULT_POLICY, knobs: Mapping[str, object] | None = None) -> Policy:
    """The policy ``name`` with ``knobs`` applied; raises :class:`InvalidBalancerConfig`."""
    kind = _kind(name)
    groups: dict[str, dict[str, object]] = {"": {}, **{s: {} for s in _SECTIONS}}
    classes: dict[str, type] = {"": kind.config, **_SECTIONS}
    for knob, value in (knobs or {}).items():
        section, _, attr = knob.rpartition(".")
        cls = classes.get(section)
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
        if attr not in fields:
            raise InvalidBalancerConfig(f"balancer.knobs[{knob!r}]",
                                        f"a knob of {name!r}: " + ", ".join(valid_knobs(name)), value)
        _check_type(knob, fields[attr].default, value)
        groups[section][attr] = value
    return Policy(name=name, selector=kind.config(**groups[""]),
                  **{s: cls(**groups[s]) for s, cls in _SECTIONS.items()})


def policy_from_spec(spec: Any) -> Policy:
    """From a :class:`registry.service_config.BalancerSpec` (anything with ``policy`` and ``knobs``)."""
    return build_policy(spec.policy, spec.knobs)
