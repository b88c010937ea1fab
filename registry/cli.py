"""``wei-registry``: look at and steer the registry from a shell.

    wei-registry ls ctr                   members as a table (--json: Curator dicts)
    wei-registry watch ctr --count 5      print each new membership snapshot
    wei-registry config ctr               traffic splits and balancer policy
    wei-registry split ctr ctr 12=90 13=10 [--force]
    wei-registry top ctr [--once]         live: members, capacity, split, changes (see cli_top)

Tables are plain columns when not on a wide enough terminal (see
:mod:`registry.cli_view`): ids and addresses are never cut. ``split`` refuses
a version with a share > 0 that no routable pod of the service hosts (every
call routed to it would fail with NoEndpointAvailable) unless ``--force``;
``config`` warns, and exits 1, when the policy is not one clients know.

Every failure is one line on stderr, ``wei-registry: error: ...``, exit 2 for
bad arguments and 1 for everything else (ZooKeeper unreachable, unknown
service, invalid data); never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NoReturn

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError, ZookeeperError
from rich.text import Text

from .cli_args import integer, number
from .cli_top import add_arguments as add_top_arguments
from .cli_top import cmd_top
from .cli_view import config_view, footer, out, print_json, show_members, snapshot_header
from .cli_view import human_age as human_age  # re-exported: the CLI's pure helpers live there now
from .errors import RecordError, RegistryError, ServiceNotFound
from .records import InstanceRecord, check_name, decode_member, instance_to_json
from .service_config import POLICY_NAMES, ConfigStore, ServiceConfig, config_to_json
from .watcher import MembershipWatcher
from .zk import RegistryPaths, ZkSettings, connect

PROG = "wei-registry"
Command = Callable[[KazooClient, RegistryPaths, argparse.Namespace], int]


class UsageError(Exception):
    """Bad arguments: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        self.exit(2, f"{PROG}: error: {message} (see {PROG} --help)\n")


# -- pure helpers ----------------------------------------------------------------

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


# -- commands ----------------------------------------------------------------------

def cmd_ls(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    require_service(client, paths, args.service)
    members, rejected = read_members(client, paths, args.service)
    if args.json:
        print_json([instance_to_json(r) for r in members])
        for node, why in sorted(rejected.items()):
            sys.stderr.write(f"{PROG}: warning: skipped node {node}: {why}\n")
        return 0
    show_members(members, time.time())
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
            show_members(members, now, snap.held)
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


def unknown_policy_warning(cfg: ServiceConfig | None) -> str | None:
    """The warning for a policy no client knows (clients keep the policy they run), else None."""
    if cfg is None or cfg.balancer.policy in POLICY_NAMES:
        return None
    return (f"balancer policy {cfg.balancer.policy!r} is not one clients know "
            f"({', '.join(POLICY_NAMES)}): they log an error and keep the policy they run")


def cmd_config(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    require_service(client, paths, args.service)
    cfg = ConfigStore(client, paths=paths).get(args.service)
    if args.json:
        print_json({"service": args.service, "present": cfg is not None,
                    **config_to_json(cfg or ServiceConfig())})
    else:
        config_view(args.service, cfg)
    if (warning := unknown_policy_warning(cfg)) is not None:
        sys.stderr.write(f"{PROG}: warning: {warning}\n")
        return 1
    return 0


def unhosted_versions(members: Sequence[InstanceRecord], model: str,
                      split: Mapping[int, float]) -> tuple[list[int], list[int]]:
    """(versions given a share > 0 that no routable member hosts, versions routable members host)."""
    hosted = sorted({v for r in members if r.routable for v in r.models.get(model, ())})
    return [v for v, share in split.items() if share > 0 and v not in hosted], hosted


def cmd_split(client: KazooClient, paths: RegistryPaths, args: argparse.Namespace) -> int:
    if not args.force:
        members, _ = read_members(client, paths, args.service)
        missing, hosted = unhosted_versions(members, args.model, args.split)
        if missing:
            where = f"versions {', '.join(map(str, hosted))}" if hosted else "no version"
            raise UsageError(
                f"no routable pod of service {args.service!r} hosts {args.model} version(s) "
                f"{', '.join(map(str, missing))} (they host {where}): every call routed there "
                f"would fail with NoEndpointAvailable; pass --force to set the split anyway")
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
    p.add_argument("--timeout", metavar="SECONDS", type=number(above=0), default=5.0, help="connect timeout (5)")
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
    w.add_argument("--count", type=integer(0), default=0, metavar="N", help="stop after N snapshots")
    w.add_argument("--duration", type=number(at_least=0), default=0.0, metavar="SECONDS",
                   help="stop after this long")
    command("config", cmd_config, "show a service's traffic splits and balancer policy", as_json=True)
    s = command("split", cmd_split, "set a model's traffic split, e.g. split ctr ctr 12=90 13=10")
    s.add_argument("model")
    s.add_argument("shares", nargs="+", metavar="VERSION=SHARE")
    s.add_argument("--force", action="store_true",
                   help="set the split even if no routable pod hosts a version given a share")
    add_top_arguments(command("top", cmd_top, "a live view: members, capacity, split and changes (Ctrl-C ends)"))
    return p


def check_args(args: argparse.Namespace) -> None:
    """Validate before any I/O (UsageError)."""
    _name("service", args.service)
    if args.command == "split":
        _name("model", args.model)
        args.split = parse_split(args.shares)


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
