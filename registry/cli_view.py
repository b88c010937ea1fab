"""What ``wei-registry`` prints: pure formatting helpers and the tables.

A table is drawn with rich's box only on a terminal wide enough for every
cell whole; anywhere else (a pipe, a file, a narrow terminal) it is plain
columns, aligned, two spaces apart, one record a line. No cell is ever cut:
``wei-registry ls ctr | grep POD`` must find the pod's whole id and address.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .membership import MembershipSnapshot
from .records import InstanceRecord
from .service_config import DEFAULT_POLICY, ServiceConfig

out = Console(highlight=False, soft_wrap=True)
MEMBER_COLUMNS = ("id", "address", "weight", "state", "enabled", "models", "zone", "age")


def human_age(seconds: float) -> str:
    """``45s``, ``2m13s``, ``3h05m``, ``4d02h``; ``-`` when unknown or negative."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // sub_size:02d}{sub}"
    return f"{s}s"


def format_models(rec: InstanceRecord) -> str:
    return " ".join(f"{m}:{','.join(map(str, vs))}" for m, vs in rec.models.items()) or "-"


def plain_columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns two spaces apart, headers in capitals (as kubectl prints); no cell cut."""
    table = [[h.upper() for h in headers], *([c or "-" for c in r] for r in rows)]
    widths = [max(cell_len(r[i]) for r in table) for i in range(len(headers))]
    return ["  ".join(c + " " * (w - cell_len(c)) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in table]


def boxed_width(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Columns a rich box needs to show every cell whole (1 space of padding each side)."""
    widths = [max([cell_len(h), *(cell_len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return sum(widths) + 3 * len(widths) + 1


def show_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if out.is_terminal and boxed_width(headers, rows) <= out.width:
        table = Table(*headers)
        for r in rows:
            table.add_row(*(Text(c) for c in r))
        out.print(table)
        return
    out.file.write("\n".join(plain_columns(headers, rows)) + "\n")
    out.file.flush()


def member_rows(records: Sequence[InstanceRecord], now: float,
                held: frozenset[str] = frozenset()) -> list[tuple[str, ...]]:
    return [(r.id, r.endpoint, f"{r.weight:g}", f"{r.state.value} (held)" if r.id in held else r.state.value,
             "yes" if r.enabled else "no", format_models(r), r.zone or "-",
             human_age(now - r.registration_time_ms / 1000)) for r in records]


def show_members(records: Sequence[InstanceRecord], now: float, held: frozenset[str] = frozenset()) -> None:
    show_table(MEMBER_COLUMNS, member_rows(records, now, held))


def footer(records: Sequence[InstanceRecord], rejected: dict[str, str]) -> str:
    routable = sum(1 for r in records if r.routable)
    line = f"{len(records)} members, {routable} routable, {len(rejected)} rejected"
    return line + "".join(f"\n  rejected {node}: {why}" for node, why in sorted(rejected.items()))


def snapshot_header(snap: MembershipSnapshot, now: float) -> str:
    fresh = f"STALE for {human_age(snap.staleness(now))}" if snap.stale else "live"
    return f"version {snap.version} · {fresh} · {snap.reason}"


def config_view(service: str, cfg: ServiceConfig | None) -> None:
    if cfg is None:
        out.print(f"{service}: no config node: defaults ({DEFAULT_POLICY}, no splits)")
        return
    knobs = ", ".join(f"{k}={v}" for k, v in cfg.balancer.knobs.items()) or "no knobs"
    out.print(Text(f"{service}: balancer {cfg.balancer.policy} ({knobs})"))
    if cfg.updated_ms:
        when = datetime.fromtimestamp(cfg.updated_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        out.print(f"updated {when} ({human_age(time.time() - cfg.updated_ms / 1000)} ago)")
    if not cfg.splits:
        out.print("no splits")
        return
    show_table(("model", "version", "share %"),
               [(model, str(version), f"{share:g}") for model, split in cfg.splits.items()
                for version, share in split.items()])


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()
