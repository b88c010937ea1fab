"""Validation of configuration values, shared by :mod:`server_agent.config` and
:mod:`server_agent.weight_config`: each returns the value or raises ConfigError naming the field."""

from __future__ import annotations

import math

from .errors import ConfigError


def _number(name: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A finite real >= minimum (> minimum when ``strict``); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, "a finite number", value)
    if value < minimum or (strict and value == minimum):
        raise ConfigError(name, f"a number {'>' if strict else '>='} {minimum:g}", value)
    return float(value)


def _integer(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"an integer >= {minimum}", value)
    return value


def _fraction(name: str, value: object, *, allow_zero: bool = True) -> float:
    v = _number(name, value, strict=not allow_zero)
    if v > 1.0:
        raise ConfigError(name, "a fraction in [0, 1]" if allow_zero else "a fraction in (0, 1]", value)
    return v
