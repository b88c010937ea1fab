"""Argparse types for ports and ranges, shared by ``wei-registry`` and ``wei-agent``.

A bad value is refused while the arguments are parsed, so the error is
argparse's one line naming the flag, the valid range and what was given::

    wei-agent: error: argument --port: expected a port in 1..65535, got '70000'

(``int()`` alone takes ``70000``, and the socket layer later binds it modulo
65536, to 4464; ``float()`` takes ``nan`` and ``inf``.) ``wei-serve`` keeps a
copy of these rules in :mod:`serving.cli`: it may import only ``protocol``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

PORT_MAX = 65535


def _parse(text: str, kind: type, expected: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def integer(lo: int, hi: int | None = None, *, what: str = "an integer",
            note: str = "") -> Callable[[str], int]:
    """An int in ``lo..hi`` (``hi=None``: no upper bound); ``note`` ends the message."""
    expected = (f"{what} in {lo}..{hi}" if hi is not None else f"{what} >= {lo}") + note

    def parse(text: str) -> int:
        value = int(_parse(text, int, expected))
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def number(*, above: float | None = None, at_least: float | None = None,
           at_most: float | None = None) -> Callable[[str], float]:
    """A finite float ``> above`` or ``>= at_least`` (and ``<= at_most``)."""
    bounds = [f"> {above:g}" if above is not None else "",
              f">= {at_least:g}" if at_least is not None else "",
              f"<= {at_most:g}" if at_most is not None else ""]
    expected = "a number " + " and ".join(b for b in bounds if b) if any(bounds) else "a number"

    def parse(text: str) -> float:
        value = _parse(text, float, expected)
        if (above is not None and not value > above) or \
                (at_least is not None and value < at_least) or \
                (at_most is not None and value > at_most):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


bind_port = integer(0, PORT_MAX, what="a port", note=" (0 picks a free one)")
"""A port to listen on: 0..65535, 0 letting the system pick."""

advertised_port = integer(1, PORT_MAX, what="a port")
"""A port others connect to: 1..65535."""
