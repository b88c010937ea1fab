"""``wei-registry top SERVICE``: a live view of one service for an operator during a rollout.

Per member: weight, measured capacity (the record's ``capacity.samples_per_s``),
state, zone, models and age; the service's version splits and balancer
policy; and the changes as they happen, one line each::

    2026-12-01T09:50:41Z  pod-b  weight 2 -> 7
    2026-12-01T09:50:41Z  pod-c  joined: 10.0.0.9:8500 weight 0.5 WARMING zone z2 models ctr:13
    2026-12-01T09:50:44Z  split ctr  12=90 13=10 -> 12=50 13=50

On a terminal it is a table redrawn in place (rich ``Live``: works over SSH)
with the latest changes under it. Anywhere else (a pipe, a file, ``watch``
output for a script) it prints the snapshot once, then only the change
lines, flushed as they come. ``--once`` prints the snapshot and exits.
Ctrl-C (or SIGTERM) ends it, exit 0.

The diffing is pure (:func:`member_changes`, :func:`config_changes`); the
shell feeds it the snapshots that :class:`~registry.watcher.MembershipWatcher`
and :class:`~registry.service_config.ConfigWatcher` publish, in order.
"""

from __future__ import annotations

import argparse
import queue
import signal
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kazoo.client import KazooClient
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .cli_args import integer
from .cli_view import format_models, human_age, out, plain_columns, snapshot_header
from .membership import MembershipSnapshot
from .records import InstanceRecord
from .service_config import ConfigSnapshot, ConfigWatcher, ServiceConfig
from .watcher import MembershipWatcher
from .zk import RegistryPaths

__all__ = ["add_arguments", "cmd_top", "config_changes", "member_changes", "member_rows", "snapshot_lines"]

COLUMNS = ("id", "address", "weight", "capacity/s", "state", "zone", "models", "age")
FIELDS = ("weight", "capacity/s", "state", "enabled", "zone", "models", "address")
REFRESH_S = 1.0  # the terminal view redraws at least this often, so ages move


# -- pure: rows and changes -----------------------------------------------------------

def _capacity(rec: InstanceRecord) -> str:
    s = rec.capacity.samples_per_s
    return "-" if s is None else f"{s:.0f}" if s >= 10 else f"{s:.2g}"


def _fields(rec: InstanceRecord) -> dict[str, str]:
    return {"weight": f"{rec.weight:g}", "capacity/s": _capacity(rec), "state": rec.state.value,
            "enabled": "yes" if rec.enabled else "no", "zone": rec.zone or "-", "models": format_models(rec),
            "address": rec.endpoint}


def member_rows(snap: MembershipSnapshot, now: float) -> list[tuple[str, ...]]:
    rows = []
    for r in sorted(snap.instances.values(), key=lambda r: r.id):
        state = r.state.value + ("" if r.enabled else " (disabled)") + (" (held)" if r.id in snap.held else "")
        rows.append((r.id, r.endpoint, f"{r.weight:g}", _capacity(r), state, r.zone or "-", format_models(r),
                     human_age(now - r.registration_time_ms / 1000)))
    return rows


def member_changes(old: MembershipSnapshot | None, new: MembershipSnapshot) -> list[str]:
    """What changed between two snapshots, one ``who  what`` string each (joins, leaves, fields, staleness)."""
    if old is None:
        return []
    changes: list[str] = []
    if old.stale != new.stale:
        changes.append(f"registry  {'STALE: ' + new.reason if new.stale else 'live again'}")
    for rid in sorted(old.instances.keys() - new.instances.keys()):
        changes.append(f"{rid}  left")
    for rid in sorted(new.instances.keys() - old.instances.keys()):
        f = _fields(new.instances[rid])
        changes.append(f"{rid}  joined: {f['address']} weight {f['weight']} {f['state']} zone {f['zone']} "
                       f"models {f['models']}")
    for rid in sorted(old.instances.keys() & new.instances.keys()):
        before, after = _fields(old.instances[rid]), _fields(new.instances[rid])
        changes += [f"{rid}  {k} {before[k]} -> {after[k]}" for k in FIELDS if before[k] != after[k]]
    for rid in sorted(new.held - old.held):
        changes.append(f"{rid}  held (mass-loss protection)")
    return changes


def _split_text(split: Any) -> str:
    return " ".join(f"{v}={s:g}" for v, s in split.items()) if split else "none"


def config_changes(old: ServiceConfig | None, new: ServiceConfig) -> list[str]:
    """Split and policy changes between two configs (None: nothing shown yet)."""
    if old is None:
        return []
    changes = [f"split {m}  {_split_text(old.splits.get(m))} -> {_split_text(new.splits.get(m))}"
               for m in sorted(old.splits.keys() | new.splits.keys())
               if dict(old.splits.get(m, {})) != dict(new.splits.get(m, {}))]
    if old.balancer != new.balancer:
        changes.append(f"policy  {_policy(old)} -> {_policy(new)}")
    return changes


def _policy(cfg: ServiceConfig) -> str:
    knobs = ",".join(f"{k}={v}" for k, v in cfg.balancer.knobs.items())
    return cfg.balancer.policy + (f"({knobs})" if knobs else "")


def config_lines(cfg: ConfigSnapshot) -> list[str]:
    c = cfg.config
    lines = [f"balancer {_policy(c)}" + ("" if cfg.present else " (no config node: defaults)")]
    lines += [f"split {m}: {_split_text(s)}" for m, s in sorted(c.splits.items())] or ["no splits"]
    if cfg.error:
        lines.append(f"config refused (keeping the last good one): {cfg.error}")
    return lines


def header(service: str, snap: MembershipSnapshot, now: float) -> str:
    routable = len(snap.routable())
    return (f"{service} · {len(snap)} members, {routable} routable, {len(snap.rejected)} rejected · "
            f"{snapshot_header(snap, now)}")


def snapshot_lines(service: str, snap: MembershipSnapshot, cfg: ConfigSnapshot, now: float) -> list[str]:
    """The whole view as plain lines (``--once``, and the start of a piped ``top``)."""
    return [header(service, snap, now), *plain_columns(COLUMNS, member_rows(snap, now)), *config_lines(cfg)]


def stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the shell ----------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--changes", type=integer(0), default=10, metavar="N",
                   help="changes kept under the table on a terminal (10)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _render(service: str, snap: MembershipSnapshot, cfg: ConfigSnapshot, recent: Sequence[str],
            now: float) -> Group:
    table = Table(*COLUMNS, expand=False)
    for row in member_rows(snap, now):
        table.add_row(*(Text(c) for c in row))
    parts: list[Any] = [Text(header(service, snap, now), style="bold"), table,
                        Text("\n".join(config_lines(cfg)))]
    if recent:
        parts.append(Text("changes:\n" + "\n".join(recent), style="dim"))
    return Group(*parts)


def _emit(line: str) -> None:
    out.file.write(line + "\n")
    out.file.flush()


def cmd_top(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    from .cli import require_service  # cli imports this module to register the command

    require_service(client, paths, args.service)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    members = MembershipWatcher(client, args.service, paths=paths)
    config = ConfigWatcher(client, args.service, paths=paths)
    members.subscribe(lambda s: events.put(("members", s)))
    config.subscribe(lambda s: events.put(("config", s)))
    try:
        members.start()
        config.start()
        snap, cfg = members.snapshot, config.snapshot  # what is shown; later events diff against these
        if args.once or not out.is_terminal:
            for line in snapshot_lines(args.service, snap, cfg, time.time()):
                _emit(line)
            if args.once:
                return 0
            _emit(f"{stamp(time.time())}  watching {args.service}: one line per change (Ctrl-C ends)")
        recent: deque[str] = deque(maxlen=args.changes)
        live = Live(_render(args.service, snap, cfg, recent, time.time()), console=out, auto_refresh=False,
                    transient=False) if out.is_terminal else None
        if live is not None:
            live.start()
        try:
            while True:
                try:
                    kind, new = events.get(timeout=REFRESH_S)
                except queue.Empty:
                    kind, new = "tick", None
                if kind == "members" and new.version > snap.version:
                    changes, snap = member_changes(snap, new), new
                elif kind == "config" and new.version > cfg.version:
                    changes, cfg = config_changes(cfg.config, new.config), new
                else:
                    changes = []
                now = time.time()
                for change in changes:
                    line = f"{stamp(now)}  {change}"
                    recent.append(line)
                    if live is None:
                        _emit(line)
                if live is not None:
                    live.update(_render(args.service, snap, cfg, recent, now), refresh=True)
        finally:
            if live is not None:
                live.stop()
    except KeyboardInterrupt:
        return 0
    finally:
        config.close()
        members.close()
