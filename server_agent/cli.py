"""``wei-agent``: the sidecar's command line.

    wei-agent run --zk HOSTS --service NAME --target HOST:PORT [--status-url URL]
                  [--plugin-dir DIR] [--http-port PORT] [--instance-id ID] [--address ADDR] [--zone Z] ...
    wei-agent run --protocol oip --target HOST:PORT [--model NAME ...] [--metrics-url URL] ...
                                                                   # any Open Inference Protocol server
    wei-agent probe readiness|liveness|startup [--agent-url URL]   # for exec probes: exit 0 or 1 + reason
    wei-agent drain [--agent-url URL]                              # for the preStop exec hook (loopback)
    wei-agent manifest [--name N] [--image I] ...                  # a Deployment as YAML

Every flag of ``run`` has a ``WEI_*`` environment default (shown in ``--help``).
``run`` prints one line once its endpoints listen, logs each lifecycle step to
stderr, and on SIGTERM/SIGINT drains, waits, deregisters and exits 0; a
second signal cuts the waits short and exits 1. Errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from registry.cli_args import advertised_port, bind_port, integer, number

PROG = "wei-agent"
DEFAULT_AGENT_URL = "http://127.0.0.1:8510"
DEFAULT_CONTROL_URL = "http://127.0.0.1:8511"  # /drain: served on loopback only
DEFAULT_STATUS_URL = "http://127.0.0.1:8502"  # wei-serve's status port
DEFAULT_METRICS_URL = "http://127.0.0.1:8002/metrics"  # Triton's; MLServer's is :8082/metrics
PROTOCOLS = ("weiserving", "oip")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _protocol(text: str) -> str:
    if text not in PROTOCOLS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(PROTOCOLS)}, got {text!r}")
    return text


def _add_run(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="probe the model server and publish it to ZooKeeper")
    a = r.add_argument
    a("--zk", default=_env("WEI_ZK", "127.0.0.1:2181"), metavar="HOSTS", help="ZooKeeper (env WEI_ZK)")
    a("--zk-root", default=_env("WEI_ZK_ROOT", "/weiserving"), metavar="PATH", help="registry root (WEI_ZK_ROOT)")
    a("--zk-auth", default=_env("WEI_ZK_AUTH"), metavar="USER:PASSWORD", help="digest auth (WEI_ZK_AUTH)")
    a("--session-timeout-s", type=number(above=0), default=10.0, help="ZooKeeper session timeout (10)")
    a("--service", default=_env("WEI_SERVICE"), help="service name (WEI_SERVICE)")
    a("--target", default=_env("WEI_TARGET", "127.0.0.1:8500"), metavar="HOST:PORT",
      help="the model server's gRPC endpoint (WEI_TARGET, default 127.0.0.1:8500)")
    a("--protocol", type=_protocol, default=_env("WEI_PROTOCOL", "weiserving"), metavar="{weiserving,oip}",
      help="what the server speaks: weiserving (wei-serve, read through --status-url) or oip (any Open Inference "
           "Protocol server: Triton, KServe, MLServer; probed over OIP gRPC) (WEI_PROTOCOL, default weiserving)")
    a("--status-url", metavar="URL",
      help=f"wei-serve's status endpoint, 'none' to disable; weiserving only (WEI_STATUS_URL, default "
           f"{DEFAULT_STATUS_URL})")
    a("--model", action="append", default=[], metavar="NAME",
      help="oip: a model the server serves (repeatable; WEI_MODELS, comma-separated); default: the server's "
           "repository index (Triton, MLServer)")
    a("--metrics-url", metavar="URL",
      help=f"oip: the server's Prometheus metrics, 'none' if it has none (WEI_METRICS_URL, default "
           f"{DEFAULT_METRICS_URL}, Triton's; MLServer's is :8082/metrics)")
    a("--plugin-dir", type=Path, default=_env("WEI_PLUGIN_DIR"), metavar="DIR",
      help="business health plugins (WEI_PLUGIN_DIR)")
    a("--plugin-param", action="append", default=[], metavar="KEY=VALUE", help="a parameter for every plugin")
    a("--plugin-timeout-s", type=number(above=0), default=5.0, help="per plugin (5)")
    a("--http-host", default=_env("WEI_HTTP_HOST", "0.0.0.0"), help="endpoint bind address (0.0.0.0)")
    a("--http-port", type=bind_port, default=_env("WEI_HTTP_PORT", "8510"),
      help="endpoint port, 0 picks one (WEI_HTTP_PORT, 8510)")
    a("--no-drain-endpoint", action="store_true", help="do not serve /drain")
    a("--control-port", type=bind_port, default=_env("WEI_CONTROL_PORT"),
      help="loopback port that serves /drain (WEI_CONTROL_PORT; default the --http-port + 1, 8511)")
    a("--control-token-file", type=Path, default=_env("WEI_CONTROL_TOKEN_FILE"), metavar="FILE",
      help="/drain then needs 'Authorization: Bearer <token>', and is served on --http-host too "
           "(WEI_CONTROL_TOKEN_FILE, or the token itself in WEI_CONTROL_TOKEN)")
    a("--instance-id", default=_env("WEI_INSTANCE_ID") or _env("WEI_POD_NAME"),
      help="registry id (WEI_INSTANCE_ID, WEI_POD_NAME, else HOSTNAME-PORT)")
    a("--address", default=_env("WEI_POD_IP"), help="advertised address (WEI_POD_IP, else the target's host)")
    a("--port", type=advertised_port, help="advertised port (default: the target's)")
    a("--zone", default=_env("WEI_ZONE", ""), help="zone (WEI_ZONE)")
    a("--node", default=_env("WEI_NODE_NAME", ""), help="node name (WEI_NODE_NAME)")
    a("--label", action="append", default=[], metavar="KEY=VALUE", help="a label on the record")
    for kind, period, failures, timeout in (("startup", 1.0, 600, 1.0), ("readiness", 2.0, 3, 5.0),
                                            ("liveness", 5.0, 3, 1.0)):
        a(f"--{kind}-period-s", type=number(above=0), default=period, help=f"{kind} periodSeconds ({period:g})")
        a(f"--{kind}-failure-threshold", type=integer(1), default=failures,
          help=f"{kind} failureThreshold ({failures})")
        a(f"--{kind}-timeout-s", type=number(above=0), default=timeout, help=f"{kind} timeoutSeconds ({timeout:g})")
    a("--status-poll-s", type=number(above=0), default=5.0, help="weight controller pace (5)")
    a("--drain-wait-s", type=number(at_least=0), default=5.0, help="drained node stays this long before deletion (5)")
    a("--in-flight-timeout-s", type=number(at_least=0), default=20.0,
      help="then wait this long for in-flight calls (20)")
    a("--ramp-s", type=number(at_least=0), help="slow start (60)")
    a("--latency-target-ms", type=number(above=0), help="p99 target (100)")
    a("--publish-threshold", type=number(at_least=0), help="relative move that publishes (0.10)")
    a("--max-interval-s", type=number(above=0), help="publish at least this often when the weight drifted (60)")
    a("--cpu-cores", type=number(above=0), help="declared capacity in cores, instead of detecting it")
    a("--calibrate", action="store_true", help="time synthetic batches before registering: the capacity prior")
    a("--calibrate-model", metavar="NAME", help="the model to calibrate on (default: the first one listed)")
    a("--calibrate-batch-sizes", metavar="N,N,...", help="batch sizes to time (1,8,32,128,512)")
    a("--log-level", default=_env("WEI_LOG_LEVEL", "INFO"))
    r.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="WeiServing sidecar agent: probes its pod and publishes its weight.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_run(sub)
    pr = sub.add_parser("probe", help="ask the running agent (for exec probes): exit 0 or 1 with the reason")
    pr.add_argument("kind", choices=("readiness", "liveness", "startup"))
    pr.add_argument("--agent-url", default=_env("WEI_AGENT_URL", DEFAULT_AGENT_URL))
    pr.add_argument("--timeout-s", type=number(above=0), default=3.0)
    pr.set_defaults(func=cmd_probe)
    dr = sub.add_parser("drain", help="start the agent's shutdown sequence and wait until it deregistered")
    dr.add_argument("--agent-url", default=_env("WEI_CONTROL_URL", DEFAULT_CONTROL_URL),
                    help=f"the agent's control listener (WEI_CONTROL_URL, {DEFAULT_CONTROL_URL})")
    dr.add_argument("--token-file", type=Path, default=_env("WEI_CONTROL_TOKEN_FILE"), metavar="FILE",
                    help="the control token, if the agent has one (WEI_CONTROL_TOKEN_FILE or WEI_CONTROL_TOKEN)")
    dr.add_argument("--timeout-s", type=number(above=0), default=60.0)
    dr.set_defaults(func=cmd_drain)
    from .manifest import add_manifest_parser

    add_manifest_parser(sub)
    return p


def build_config(args: argparse.Namespace):  # -> AgentConfig (imports kept lazy: `probe` must start fast)
    from registry.zk import ZkSettings

    from .config import AgentConfig, CalibrationConfig, PluginConfig, ProbeSpec, WeightConfig

    if not args.service:
        raise UsageError("--service is required (or set WEI_SERVICE)")
    weight = {k: getattr(args, k) for k in ("ramp_s", "latency_target_ms", "publish_threshold", "max_interval_s")
              if getattr(args, k) is not None}
    probes = {kind: ProbeSpec(period_seconds=getattr(args, f"{kind}_period_s"),
                              failure_threshold=getattr(args, f"{kind}_failure_threshold"),
                              timeout_seconds=getattr(args, f"{kind}_timeout_s"))
              for kind in ("startup", "readiness", "liveness")}
    plugins = None
    if args.plugin_dir is not None:
        plugins = PluginConfig(plugin_dir=args.plugin_dir, timeout_s=args.plugin_timeout_s,
                               params=_pairs(args.plugin_param, "--plugin-param"))
    extra: dict[str, object] = {"instance_id": args.instance_id} if args.instance_id else {}
    if args.calibrate or args.calibrate_batch_sizes or args.calibrate_model:
        sizes = {}
        if args.calibrate_batch_sizes:
            try:
                sizes["batch_sizes"] = tuple(int(n) for n in args.calibrate_batch_sizes.split(","))
            except ValueError:
                raise UsageError(f"--calibrate-batch-sizes {args.calibrate_batch_sizes!r}: expected N,N,...") from None
        extra.update(calibration=CalibrationConfig(**sizes), calibrate_model=args.calibrate_model)
    protocol, status_url, metrics_url, models = _server_flags(args)
    return AgentConfig(
        protocol=protocol, models=models, metrics_url=metrics_url,
        service=args.service, target=args.target, address=args.address, port=args.port, zone=args.zone,
        node=args.node, labels=_pairs(args.label, "--label"), status_url=status_url, plugins=plugins,
        http_host=args.http_host, http_port=args.http_port, drain_endpoint=not args.no_drain_endpoint,
        control_port=args.control_port, control_token=_token(args.control_token_file),
        weight=WeightConfig(**weight), status_poll_s=args.status_poll_s, drain_wait_s=args.drain_wait_s,
        in_flight_timeout_s=args.in_flight_timeout_s,
        zk=ZkSettings(hosts=args.zk, root=args.zk_root, auth=args.zk_auth, session_timeout_s=args.session_timeout_s),
        **probes, **extra)


def _none(url: str) -> str | None:
    return None if url.strip().lower() in ("", "none") else url


def _server_flags(args: argparse.Namespace) -> tuple[str, str | None, str | None, tuple[str, ...]]:
    """(protocol, status URL, metrics URL, models); a flag of the other protocol is a usage error.
    Environment defaults of the other protocol are ignored (a pod's env may carry both)."""
    if args.protocol == "oip":
        if args.status_url is not None:
            raise UsageError("--status-url is wei-serve's status endpoint; with --protocol oip use --metrics-url "
                             "for the server's Prometheus metrics")
        models = tuple(args.model) or tuple(m.strip() for m in (_env("WEI_MODELS") or "").split(",") if m.strip())
        metrics = args.metrics_url if args.metrics_url is not None else _env("WEI_METRICS_URL", DEFAULT_METRICS_URL)
        return "oip", None, _none(metrics or ""), models
    for flag, value in (("--model", args.model), ("--metrics-url", args.metrics_url)):
        if value:
            raise UsageError(f"{flag} is for --protocol oip; wei-serve's models and metrics come from --status-url")
    status = args.status_url if args.status_url is not None else _env("WEI_STATUS_URL", DEFAULT_STATUS_URL)
    return "weiserving", _none(status or ""), None, ()


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    from .agent import Agent
    from .capacity import detect_capacity
    from .http import AgentHttp

    config = build_config(args)
    capacity = detect_capacity(prefer_pod_limit=True)
    if args.cpu_cores is not None:
        if not args.cpu_cores > 0:
            raise UsageError("--cpu-cores must be > 0")
        from registry.records import Capacity

        from .capacity import capacity_score
        cap = Capacity(cpu_cores=args.cpu_cores, gpu_model=capacity.capacity.gpu_model,
                       gpu_count=capacity.capacity.gpu_count)
        capacity = replace(capacity, capacity=cap, score=capacity_score(cap),
                           notes=(*capacity.notes, f"cpu_cores={args.cpu_cores:g} declared by --cpu-cores"))
    agent = Agent(config, capacity=capacity)
    http = AgentHttp.for_config(agent)
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) == 1:
            agent.request_shutdown()
        else:
            print(f"{PROG}: second signal: deregistering now, skipping the waits", file=sys.stderr, flush=True)
            agent.force()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    print(f"{PROG}: {config.service}/{config.instance_id} probing {config.target} ({config.protocol}); "
          f"endpoints {http.url} "
          f"(/healthz /readyz /metrics /status), /drain on {http.control_url or 'the token'}", flush=True)
    while not agent.wait(0.5):  # wake so the signal handlers run on the main thread
        pass
    http.close()
    agent.close()
    if agent.fatal is not None:
        return fail(agent.fatal)
    print(f"{PROG}: deregistered, bye" if agent.clean else f"{PROG}: stopped (forced)", file=sys.stderr,
          flush=True)
    return 0 if agent.clean else 1


def _token(path: Path | None) -> str | None:
    """The control token: from the file (a mounted secret), else WEI_CONTROL_TOKEN; None when neither."""
    if path is None:
        return _env("WEI_CONTROL_TOKEN")
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"control token file {path}: {e.strerror or e}") from None
    if not token:
        raise UsageError(f"control token file {path} is empty")
    return token


def _ask(url: str, timeout: float, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read(1024).decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read(1024).decode("utf-8", "replace").strip()


def cmd_probe(args: argparse.Namespace) -> int:
    path = {"readiness": "readyz", "liveness": "healthz", "startup": "startupz"}[args.kind]
    try:
        code, reason = _ask(f"{args.agent_url.rstrip('/')}/{path}", args.timeout_s)
    except (OSError, ValueError) as e:
        print(f"{args.kind}: agent at {args.agent_url} unreachable: {getattr(e, 'reason', e)}")
        return 1
    print(f"{args.kind}: {(reason.splitlines() or ['no reason given'])[0]}")
    return 0 if code == 200 else 1


def cmd_drain(args: argparse.Namespace) -> int:
    try:
        code, reason = _ask(f"{args.agent_url.rstrip('/')}/drain", args.timeout_s, _token(args.token_file))
    except (OSError, ValueError) as e:
        print(f"drain: agent at {args.agent_url} unreachable: {getattr(e, 'reason', e)}")
        return 1
    print(f"drain: {(reason.splitlines() or ['no reason given'])[0]}")
    return 0 if code == 200 else 1


def run(argv: Sequence[str] | None = None) -> int:
    from registry.errors import RegistryError

    from .errors import AgentError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        return fail(str(e))
    except (AgentError, RegistryError) as e:
        return fail(str(e))
    except OSError as e:  # e.g. the HTTP port is taken
        return fail(f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else ""))
    except KeyboardInterrupt:
        return 130


def fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def main() -> NoReturn:
    sys.exit(run())


if __name__ == "__main__":
    main()
