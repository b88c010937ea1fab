"""Validation helpers shared by the balancer's config dataclasses."""

from __future__ import annotations

import math

from ..errors import InvalidBalancerConfig


def number(field: str, value: object, *, low: float, high: float = math.inf,
           low_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidBalancerConfig(field, "a finite number", value)
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidBalancerConfig(field, f"a number in {bracket}{low:g}, {high:g}]", value)
    return float(value)


def integer(field: str, value: object, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidBalancerConfig(field, f"an integer in [{low}, {high}]", value)
    return value


def flag(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidBalancerConfig(field, "true or false", value)
    return value
