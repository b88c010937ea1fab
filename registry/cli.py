"""``wei-registry``: look at and steer the registry from a shell.

    wei-registry ls ctr                   members as a table (--json: Curator dicts)
    wei-registry watch ctr --count 5      print each new membership snapshot
    wei-registry config ctr               traffic splits and balancer policy
    wei-registry split ctr ctr 12=90 13=10

Every failure is one line on stderr, ``wei-registry: error: ...``, exit 2 for
bad arguments and 1 for everything else (ZooKeeper unreachable, unknown
service, invalid data); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError, ZookeeperError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import RecordError, RegistryError, ServiceNotFound
from .membership import MembershipSnapshot
from .records import InstanceRecord, check_name, decode_member, instance_to_json
from .service_config import DEFAULT_POLICY, ConfigStore, ServiceConfig, config_to_json
from .watcher import MembershipWatcher
from .zk import RegistryPaths, ZkSettings, connect

PROG = "wei-registry"
out = Console(highlight=False, soft_wrap=True)
Command = Callable[[KazooClient, RegistryPaths, argparse.Namespace], int]


class UsageError(Exception):
    """Bad arguments: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        self.exit(2, f"{PROG}: error: {message} (see {PROG} --help)\n")


# -- pure helpers ----------------------------------------------------------------

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


def parse_split(items: Sequence[str]) -> dict[int, float]:
    """``["12=90", "13=10"]`` -> ``{12: 90.0, 13: 10.0}``; UsageError says what is wrong."""
    split: dict[int, float] = {}
    for item in items:
        version, sep, share = item.partition("=")
        if not sep or not version.strip().isdigit():
            raise UsageError(f"bad split {item!r}: expected VERSION=SHARE, e.g. 12=90")
        try:
            value = float(share)
        except ValueError:
            raise UsageError(f"bad share in {item!r}: expected a number") from None
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"bad share in {item!r}: expected a number >= 0")
        if int(version) in split:
            raise UsageError(f"version {int(version)} given twice")
        split[int(version)] = value
    total = sum(split.values())
    if abs(total - 100.0) > 1e-6:
        raise UsageError(f"split shares must sum to 100, got {total:g} ({' '.join(items)})")
    return split


def _name(kind: str, value: str) -> str:
    try:
        return check_name(kind, value)
    except RecordError as e:
        raise UsageError(str(e)) from None


# -- ZooKeeper reads ---------------------------------------------------------------

def require_service(client: KazooClient, paths: RegistryPaths, service: str) -> None:
    """ServiceNotFound unless the service has a services/ or a config/ node."""
    if client.exists(paths.service(service)) or client.exists(paths.config(service)):
        return
    known: set[str] = set()
    for parent in (paths.services, paths.configs):
        try:
            known.update(client.get_children(parent))
        except NoNodeError:
            pass
    raise ServiceNotFound(service, paths.root, sorted(known))


def read_members(client: KazooClient, paths: RegistryPaths,
                 service: str) -> tuple[list[InstanceRecord], dict[str, str]]:
    """One read of the service's nodes: (good records, {bad node: why})."""
    base = paths.service(service)
    try:
        children = sorted(client.get_children(base))
    except NoNodeError:
        return [], {}
    members: list[InstanceRecord] = []
    rejected: dict[str, str] = {}
    for child in children:
        try:
            data, _ = client.get(f"{base}/{child}")
        except NoNodeError:
            continue  # left between the listing and the read
        try:
            rec = decode_member(data, service=service, node=child)
        except RecordError as e:
            rejected[child] = str(e)
            continue
        members.append(rec)
    return members, rejected


# -- rendering -----------------------------------------------------------------------

def members_table(records: Sequence[InstanceRecord], now: float, held: frozenset[str] = frozenset()) -> Table:
    table = Table("id", "address", "weight", "state", "enabled", "models", "zone", "age")
    for r in records:
        state = f"{r.state.value} (held)" if r.id in held else r.state.value
        cells = (r.id, r.endpoint, f"{r.weight:g}", state, "yes" if r.enabled else "no",
                 format_models(r), r.zone or "-", human_age(now - r.registration_time_ms / 1000))
        table.add_row(*(Text(c) for c in cells))
    return table


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
    table = Table("model", "version", "share %")
    for model, split in cfg.splits.items():
        for version, share in split.items():
            table.add_row(Text(model), str(version), f"{share:g}")
    out.print(table)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


# -- commands ----------------------------------------------------------------------

def cmd_ls(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    require_service(client, paths, args.service)
    members, rejected = read_members(client, paths, args.service)
    if args.json:
        print_json([instance_to_json(r) for r in members])
        for node, why in sorted(rejected.items()):
            sys.stderr.write(f"{PROG}: warning: skipped node {node}: {why}\n")
        return 0
    out.print(members_table(members, time.time()))
    out.print(Text(footer(members, rejected)))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_watch(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    require_service(client, paths, args.service)
    # Ctrl-C and SIGTERM end the watch cleanly, even where a shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    watcher = MembershipWatcher(client, args.service, paths=paths)
    # A timer closing the watcher ends updates() however busy or idle it is.
    timer = threading.Timer(args.duration, watcher.close) if args.duration else None
    try:
        watcher.start()
        if timer:
            timer.daemon = True
            timer.start()
        for shown, snap in enumerate(watcher.updates(), start=1):
            now = time.time()
            out.print(Text(snapshot_header(snap, now)))
            members = list(snap.instances.values())
            out.print(members_table(members, now, snap.held))
            out.print(Text(footer(members, dict(snap.rejected))))
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if timer:
            timer.cancel()
        watcher.close()
    return 0


def cmd_config(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    require_service(client, paths, args.service)
    cfg = ConfigStore(client, paths=paths).get(args.service)
    if args.json:
        print_json({"service": args.service, "present": cfg is not None,
                    **config_to_json(cfg or ServiceConfig())})
    else:
        config_view(args.service, cfg)
    return 0


def cmd_split(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    cfg = ConfigStore(client, paths=paths).set_split(args.service, args.model, args.split)
    shares = " ".join(f"{v}={s:g}" for v, s in cfg.splits[args.model].items())
    out.print(Text(f"{args.service}: split for {args.model} is now {shares}"))
    config_view(args.service, cfg)
    return 0


# -- wiring --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Inspect and steer the WeiServing ZooKeeper registry.")
    p.add_argument("--zk", metavar="HOSTS", help="connect string (env WEI_ZK, default 127.0.0.1:2181)")
    p.add_argument("--root", metavar="PATH", help="registry root (env WEI_ZK_ROOT, default /weiserving)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="digest credentials for writes (env WEI_ZK_AUTH)")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0, help="connect timeout (5)")
    p.add_argument("-v", "--verbose", action="store_true", help="log kazoo and registry messages to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help: str, *, as_json: bool = False) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("service")
        if as_json:
            c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        c.set_defaults(run=run)
        return c

    command("ls", cmd_ls, "list a service's members (--json: Curator-shaped instances)", as_json=True)
    w = command("watch", cmd_watch, "print the membership each time it changes (Ctrl-C ends)")
    w.add_argument("--count", type=int, default=0, metavar="N", help="stop after N snapshots")
    w.add_argument("--duration", type=float, default=0.0, metavar="SECONDS", help="stop after this long")
    command("config", cmd_config, "show a service's traffic splits and balancer policy", as_json=True)
    s = command("split", cmd_split, "set a model's traffic split, e.g. split ctr ctr 12=90 13=10")
    s.add_argument("model")
    s.add_argument("shares", nargs="+", metavar="VERSION=SHARE")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Validate before any I/O (UsageError)."""
    _name("service", args.service)
    if args.command == "split":
        _name("model", args.model)
        args.split = parse_split(args.shares)
    if args.command == "watch" and (args.count < 0 or args.duration < 0):
        raise UsageError("--count and --duration must be >= 0")
    if not args.timeout > 0:
        raise UsageError("--timeout must be > 0")


@contextmanager
def session(args: argparse.Namespace) -> Iterator[tuple[KazooClient, RegistryPaths]]:
    try:
        settings = ZkSettings.from_env(hosts=args.zk, root=args.root, auth=args.auth,
                                       connect_timeout_s=args.timeout)
    except RecordError as e:
        raise UsageError(str(e)) from None
    client = connect(settings)
    try:
        yield client, settings.paths
    finally:
        client.stop()
        client.close()


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler() if args.verbose else logging.NullHandler()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    command: Command = args.run
    try:
        check_args(args)
        with session(args) as (client, paths):
            return command(client, paths, args)
    except UsageError as e:
        return fail(str(e), 2)
    except NoAuthError:
        return fail("ZooKeeper refused the write: not authorised (pass --auth USER:PASSWORD)")
    except RecordError as e:
        return fail(f"invalid data: {e}")
    except RegistryError as e:  # ZooKeeperUnavailable, ServiceNotFound
        return fail(str(e))
    except BrokenPipeError:  # the reader left (`| head`): exit 1 quietly, as rich does for tables
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (KazooException, ZookeeperError, OSError) as e:
        return fail(f"ZooKeeper request failed: {type(e).__name__}: {e}".rstrip(": "))
    except KeyboardInterrupt:
        return 130


def fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def main() -> NoReturn:
    sys.exit(run())


if __name__ == "__main__":
    main()
