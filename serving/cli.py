"""``wei-serve``: run the model server.

    wei-serve --models DIR [--port 8500] [--status-port 8502] [--config FILE]
              [--max-batch-size N] [--batch-timeout-micros N] [--max-enqueued-batches N]
              [--num-batch-threads N] [--allowed-batch-sizes 8,16,32] [--split-requests]
              [--no-batching]
              [--slo-p99-ms MS] [--version-policy latest:1|all|specific:1,2]

Flags given on the command line override the config file (see
:mod:`serving.config` for its format). Prints one line once serving:
``wei-serve: serving N model(s) on HOST:PORT, status http://HOST:PORT/status``.
SIGTERM or SIGINT drains (health NOT_SERVING, new calls UNAVAILABLE,
in-flight calls finish within ``--grace-s``) and exits 0; a second signal
forces an immediate stop and exits 1. Errors are one line and exit 2; a flag
out of its range (``--port 70000``) is refused before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from serving.config import ServerConfig, VersionPolicy, load_config
from serving.errors import ServingError

BATCH_FLAGS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
               "num_batch_threads", "slo_p99_ms", "max_queue_delay_ms")


RESPONSE_FLUSH_S = 2.0
"""After a clean drain, how long gRPC may take to write the last responses (it returns once done)."""

PORT_MAX = 65535


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The same rules as registry/cli_args.py (serving may import only protocol): a bad value is
# refused while parsing, in one line naming the flag, the valid range and what was given.
def _check(text: str, kind: type, ok: Callable[[Any], bool], expected: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _integer(lo: int, hi: int | None = None, what: str = "an integer",
             note: str = "") -> Callable[[str], int]:
    expected = (f"{what} in {lo}..{hi}" if hi is not None else f"{what} >= {lo}") + note
    return lambda text: _check(text, int, lambda v: lo <= v and (hi is None or v <= hi), expected)


def _number(*, above: float | None = None, at_least: float | None = None) -> Callable[[str], float]:
    if above is not None:
        return lambda text: _check(text, float, lambda v: v > above, f"a number > {above:g}")
    low = 0.0 if at_least is None else at_least
    return lambda text: _check(text, float, lambda v: v >= low, f"a number >= {low:g}")


_port = _integer(0, PORT_MAX, "a port", " (0 picks a free one)")
def _status_port(text: str) -> int:
    return _check(text, int, lambda v: v == -1 or 0 <= v <= PORT_MAX,
                  f"a port in 0..{PORT_MAX} (0 picks a free one) or -1 (no status endpoint)")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s)
    except ValueError:
        sizes = ()
    if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
        raise argparse.ArgumentTypeError(
            f"expected increasing comma-separated integers >= 1, e.g. 8,16,32, got {text!r}")
    return sizes


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wei-serve", description="WeiServing model server")
    p.add_argument("--models", required=True, type=Path, help="model repository DIR/{model}/{version}")
    p.add_argument("--port", type=_port, help="gRPC port (default 8500; 0 picks a free one)")
    p.add_argument("--host", help="gRPC bind address (default [::])")
    p.add_argument("--status-port", type=_status_port,
                   help="HTTP status port (default 8502; 0 picks a free one; -1 disables)")
    p.add_argument("--config", type=Path, help="TOML file with server, batching and per-model settings")
    p.add_argument("--max-batch-size", type=_integer(1))
    p.add_argument("--batch-timeout-micros", type=_integer(0))
    p.add_argument("--max-enqueued-batches", type=_integer(1))
    p.add_argument("--num-batch-threads", type=_integer(1))
    p.add_argument("--allowed-batch-sizes", type=_sizes, help="e.g. 8,16,32 (pads up to them)")
    p.add_argument("--split-requests", action="store_true", help="cut requests to fill batches "
                   "and into max-batch-size parts (TF Serving's large batch splitting)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone")
    p.add_argument("--slo-p99-ms", type=_number(above=0),
                   help="SLO mode: size batches online for this p99")
    p.add_argument("--max-queue-delay-ms", type=_number(at_least=0),
                   help="refuse (RESOURCE_EXHAUSTED, retry-after) a call that would wait longer than this "
                        "in the batch queue (default: 3 mean batch times; 0: no bound, deadlines still count)")
    p.add_argument("--no-admission", action="store_true",
                   help="queue every call that fits the queue, even one that cannot meet its deadline")
    p.add_argument("--version-policy", help="latest[:N] | all | specific:V1,V2 (all models)")
    p.add_argument("--poll-interval-s", type=_number(above=0),
                   help="model directory poll period (default 1)")
    p.add_argument("--grace-s", type=_number(at_least=0), help="drain grace period on SIGTERM (default 10)")
    p.add_argument("--max-message-bytes", type=_integer(1),
                   help="largest request accepted (default 64 MiB)")
    p.add_argument("--grpc-workers", type=_integer(1), help="concurrent calls served (default 64)")
    p.add_argument("--log-level", default="INFO")
    return p


def build_config(args: argparse.Namespace) -> ServerConfig:
    if not args.models.is_dir():
        raise ServingError(f"--models {args.models}: not a directory")
    overrides: dict[str, Any] = {}
    for flag in ("port", "host", "poll_interval_s", "grace_s", "max_message_bytes", "grpc_workers"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    if args.status_port is not None:
        overrides["status_port"] = None if args.status_port < 0 else args.status_port
    batching = {f: getattr(args, f) for f in BATCH_FLAGS if getattr(args, f) is not None}
    if args.allowed_batch_sizes is not None:
        batching["allowed_batch_sizes"] = args.allowed_batch_sizes
    if args.split_requests:
        batching["split_requests"] = True
    if args.no_batching:
        batching["enabled"] = False
    if args.no_admission:
        batching["admission"] = False
    overrides["batching"] = batching
    config = load_config(args.config, models_dir=args.models, overrides=overrides)
    if args.version_policy:
        from dataclasses import replace
        policy = VersionPolicy.parse(args.version_policy)
        config = replace(config, defaults=replace(config.defaults, version_policy=policy),
                         models={n: replace(m, version_policy=policy)
                                 for n, m in config.models.items()})
    return config


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.server import ModelServer

    try:
        config = build_config(args)
        server = ModelServer(config).start()
    except (ServingError, OSError, RuntimeError) as exc:
        print(f"wei-serve: error: {exc}", file=sys.stderr)
        return 2
    signals = []
    drained: list[bool] = []   # the drain's verdict: every in-flight call finished within the grace
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) == 1:
            threading.Thread(target=lambda: (drained.append(server.drain()), done.set()), daemon=True).start()
        else:   # forced: do not wait for anything, in-flight calls are cut off
            print("wei-serve: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = f", status http://{config.status_host}:{server.status_port}/status" \
        if server.status_port is not None else ""
    print(f"wei-serve: serving {len(server.manager.snapshot)} model(s) on "
          f"{config.host}:{server.port}{status}", flush=True)
    while not done.wait(0.5):   # wake periodically so the signal handler runs on the main thread
        pass
    # A call counts as finished when its handler returns, a moment before gRPC has written
    # the response: stopping with grace 0 then could still cut it off ("Cancelling all calls").
    # grpc's stop(grace) returns as soon as nothing is left, so after a clean drain it costs
    # nothing; after a drain that ran out of grace the calls still running are cut at once.
    server.stop(RESPONSE_FLUSH_S if drained and drained[0] else 0.0)
    print("wei-serve: drained, bye", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
