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
forces an immediate stop and exits 1. Errors are one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from serving.config import ServerConfig, VersionPolicy, load_config
from serving.errors import ServingError

BATCH_FLAGS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
               "num_batch_threads", "slo_p99_ms")


RESPONSE_FLUSH_S = 2.0
"""After a clean drain, how long gRPC may take to write the last responses (it returns once done)."""

def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") \
            from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wei-serve", description="WeiServing model server")
    p.add_argument("--models", required=True, type=Path, help="model repository DIR/{model}/{version}")
    p.add_argument("--port", type=int, help="gRPC port (default 8500; 0 picks a free one)")
    p.add_argument("--host", help="gRPC bind address (default [::])")
    p.add_argument("--status-port", type=int, help="HTTP status port (default 8502; -1 disables)")
    p.add_argument("--config", type=Path, help="TOML file with server, batching and per-model settings")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--batch-timeout-micros", type=int)
    p.add_argument("--max-enqueued-batches", type=int)
    p.add_argument("--num-batch-threads", type=int)
    p.add_argument("--allowed-batch-sizes", type=_sizes, help="e.g. 8,16,32 (pads up to them)")
    p.add_argument("--split-requests", action="store_true", help="cut requests to fill batches "
                   "and into max-batch-size parts (TF Serving's large batch splitting)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone")
    p.add_argument("--slo-p99-ms", type=float, help="SLO mode: size batches online for this p99")
    p.add_argument("--version-policy", help="latest[:N] | all | specific:V1,V2 (all models)")
    p.add_argument("--poll-interval-s", type=float, help="model directory poll period (default 1)")
    p.add_argument("--grace-s", type=float, help="drain grace period on SIGTERM (default 10)")
    p.add_argument("--max-message-bytes", type=int, help="largest request accepted (default 64 MiB)")
    p.add_argument("--grpc-workers", type=int, help="concurrent calls served (default 64)")
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
