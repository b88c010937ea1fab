"""A real ZooKeeper, started as a child process on free loopback ports.

Tests, benchmarks and the demo use Debian's ``zookeeper`` package (3.8): the
JVM runs ``QuorumPeerMain`` directly with a generated ``zoo.cfg`` in a
temporary directory, so nothing under ``/etc`` or ``/var`` is touched.

    with ZooKeeperEnsemble(size=3) as zk:
        client = KazooClient(zk.hosts)
        zk.kill(zk.leader())        # SIGKILL the leader
        zk.restart(...)             # same ports, same data

Guarantees: ``start()`` returns only when every member answers ``srvr`` with
a mode (standalone, leader or follower); ``stop()`` is idempotent, ends the
JVMs (SIGTERM, then SIGKILL) and removes the data directory; members also die
with the Python process that started them (``PR_SET_PDEATHSIG``) and an
``atexit`` hook stops whatever is left, so a failing test leaves nothing.

Where a Docker engine answers and ``WEISERVING_ZK_BACKEND=testcontainers`` is
set, :func:`zookeeper_from_env` returns a single node in a container instead.
It is never required.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EmbeddedZooKeeperError",
    "die_with_parent",
    "expire_session",
    "Member",
    "ZooKeeperEnsemble",
    "ZooKeeperSettings",
    "four_letter_word",
    "free_ports",
    "zookeeper_from_env",
]

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
SLF4J_SIMPLE_JAR = Path("/usr/share/java/slf4j-simple.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class EmbeddedZooKeeperError(RuntimeError):
    """The embedded ZooKeeper could not be started or answered wrongly."""


@dataclass(frozen=True, kw_only=True)
class ZooKeeperSettings:
    """How the embedded servers run.

    ``tick_ms`` is short so that tests can use short session timeouts: the
    server accepts session timeouts between 2 and 20 ticks (0.4 s to 4 s at
    the default; raise ``max_session_ticks`` for longer ones).
    """

    tick_ms: int = 200
    init_limit_ticks: int = 50
    sync_limit_ticks: int = 25
    max_session_ticks: int = 150
    heap_mb: int = 192
    start_timeout_s: float = 60.0
    java: str = "java"
    log_level: str = "warn"

    def __post_init__(self) -> None:
        if self.tick_ms < 10:
            raise ValueError(f"tick_ms must be >= 10, got {self.tick_ms}")
        if self.max_session_ticks < 2:
            raise ValueError("max_session_ticks must be >= 2")
        if self.heap_mb < 32:
            raise ValueError("heap_mb must be >= 32")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def four_letter_word(port: int, word: str, *, host: str = "127.0.0.1", timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command (``ruok``, ``srvr``, ``mntr``) and return the answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(word.encode("ascii"))
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _mode_of(srvr_answer: str) -> str | None:
    for line in srvr_answer.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: the kernel SIGKILLs them when their parent dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(kw_only=True)
class Member:
    """One ZooKeeper server: its id, ports, directory and process."""

    myid: int
    client_port: int
    peer_port: int
    election_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def mode(self) -> str | None:
        """``standalone``, ``leader``, ``follower``, or None when not serving."""
        try:
            return _mode_of(four_letter_word(self.client_port, "srvr"))
        except OSError:
            return None

    def log_tail(self, lines: int = 30) -> str:
        path = self.directory / "zookeeper.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


_live: weakref.WeakSet[ZooKeeperEnsemble] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for ensemble in list(_live):
        with contextlib.suppress(Exception):
            ensemble.stop()


class ZooKeeperEnsemble:
    """``size`` ZooKeeper servers on loopback: 1 is a standalone node, 3 or 5 a quorum."""

    def __init__(self, size: int = 1, *, settings: ZooKeeperSettings | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not ZOOKEEPER_JAR.exists():
            raise EmbeddedZooKeeperError(
                f"{ZOOKEEPER_JAR} not found: install Debian's zookeeper package "
                "(apt-get install zookeeper), or run `make deps`"
            )
        self.size = size
        self.settings = settings or ZooKeeperSettings()
        self._lock = threading.Lock()
        self._root: Path | None = None
        self.members: list[Member] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> ZooKeeperEnsemble:
        with self._lock:
            if self._root is not None:
                return self
            self._root = Path(tempfile.mkdtemp(prefix="weiserving-zk-"))
            _live.add(self)
        try:
            ports = free_ports(3 * self.size)
            self.members = [
                Member(
                    myid=i + 1,
                    client_port=ports[3 * i],
                    peer_port=ports[3 * i + 1],
                    election_port=ports[3 * i + 2],
                    directory=self._root / f"zk{i + 1}",
                )
                for i in range(self.size)
            ]
            for m in self.members:
                self._write_config(m)
                self._spawn(m)
            self.wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every member and remove the data; safe to call more than once."""
        with self._lock:
            for m in self.members:
                self._terminate(m, sig=signal.SIGTERM)
            root, self._root = self._root, None
            _live.discard(self)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> ZooKeeperEnsemble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------

    @property
    def hosts(self) -> str:
        """The connect string, e.g. ``127.0.0.1:40001,127.0.0.1:40004``."""
        return ",".join(m.address for m in self.members)

    def leader(self) -> Member:
        """The member that is leader now (for a single node: that node)."""
        for m in self.members:
            if m.running and m.mode() in ("leader", "standalone"):
                return m
        raise EmbeddedZooKeeperError("no member reports itself as leader")

    # -- fault injection -----------------------------------------------------

    def kill(self, member: Member) -> None:
        """SIGKILL one member: no clean shutdown, as a crashed machine."""
        self._terminate(member, sig=signal.SIGKILL)

    def stop_member(self, member: Member) -> None:
        self._terminate(member, sig=signal.SIGTERM)

    def restart(self, member: Member, *, wait: bool = True) -> None:
        """Start a stopped or killed member again with the same ports and data."""
        self._terminate(member, sig=signal.SIGKILL)
        self._spawn(member)
        if wait:
            self.wait_serving([member])

    def stop_all_members(self) -> None:
        """Stop every member but keep ports and data so :meth:`restart_all` can bring them back."""
        for m in self.members:
            self._terminate(m, sig=signal.SIGKILL)

    def restart_all(self) -> None:
        for m in self.members:
            if not m.running:
                self._spawn(m)
        self.wait_serving()

    def wait_serving(self, members: list[Member] | None = None, timeout: float | None = None) -> None:
        """Block until each member answers ``srvr`` with a mode."""
        deadline = time.monotonic() + (timeout or self.settings.start_timeout_s)
        pending = list(members or self.members)
        while pending:
            m = pending[0]
            if not m.running:
                raise EmbeddedZooKeeperError(
                    f"ZooKeeper member {m.myid} exited with {m.process and m.process.returncode}:\n"
                    + m.log_tail()
                )
            if m.mode() is not None:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise EmbeddedZooKeeperError(
                    f"ZooKeeper member {m.myid} on port {m.client_port} not serving after "
                    f"{timeout or self.settings.start_timeout_s:.0f}s:\n" + m.log_tail()
                )
            time.sleep(0.05)

    # -- internals -----------------------------------------------------------

    def _write_config(self, m: Member) -> None:
        s = self.settings
        data = m.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={s.tick_ms}",
            f"initLimit={s.init_limit_ticks}",
            f"syncLimit={s.sync_limit_ticks}",
            f"maxSessionTimeout={s.max_session_ticks * s.tick_ms}",
            f"dataDir={data}",
            f"clientPort={m.client_port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "maxClientCnxns=0",
            "autopurge.purgeInterval=0",
        ]
        if self.size > 1:
            (data / "myid").write_text(f"{m.myid}\n")
            lines.append("standaloneEnabled=false")
            lines.append("reconfigEnabled=false")
            lines += [
                f"server.{o.myid}=127.0.0.1:{o.peer_port}:{o.election_port}" for o in self.members
            ]
        (m.directory / "zoo.cfg").write_text("\n".join(lines) + "\n")

    def _spawn(self, m: Member) -> None:
        s = self.settings
        classpath = [str(ZOOKEEPER_JAR)]
        if SLF4J_SIMPLE_JAR.exists():
            classpath.append(str(SLF4J_SIMPLE_JAR))
        cmd = [
            s.java,
            f"-Xmx{s.heap_mb}m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xss512k",
            "-Djava.awt.headless=true",
            f"-Dorg.slf4j.simpleLogger.defaultLogLevel={s.log_level}",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            ":".join(classpath),
            MAIN_CLASS,
            str(m.directory / "zoo.cfg"),
        ]
        log = open(m.directory / "zookeeper.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            m.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=m.directory,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - single call, no threads touched
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise EmbeddedZooKeeperError(f"cannot run {s.java!r}: install a Java runtime") from e
        finally:
            log.close()

    @staticmethod
    def _terminate(m: Member, *, sig: signal.Signals) -> None:
        p = m.process
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=10)

    def __repr__(self) -> str:
        states = ",".join(f"{m.myid}:{'up' if m.running else 'down'}" for m in self.members)
        return f"<ZooKeeperEnsemble size={self.size} hosts={self.hosts!r} members=[{states}]>"


class _ContainerZooKeeper:
    """A single ZooKeeper in a Docker container via testcontainers (optional)."""

    def __init__(self, image: str = "zookeeper:3.8") -> None:
        self._image = image
        self._container: Any = None
        self.size = 1
        self.hosts = ""

    def start(self) -> _ContainerZooKeeper:
        try:
            from testcontainers.core.container import DockerContainer
            from testcontainers.core.waiting_utils import wait_for_logs
        except ImportError as e:  # pragma: no cover - dev extra missing
            raise EmbeddedZooKeeperError("testcontainers is not installed (pip install testcontainers)") from e
        try:
            self._container = DockerContainer(self._image).with_exposed_ports(2181).with_env(
                "ZOO_4LW_COMMANDS_WHITELIST", "*")
            self._container.start()
            wait_for_logs(self._container, "binding to port", timeout=60)
        except Exception as e:
            self.stop()
            raise EmbeddedZooKeeperError(f"no Docker engine answers for testcontainers: {e}") from e
        host = self._container.get_container_host_ip()
        self.hosts = f"{host}:{self._container.get_exposed_port(2181)}"
        return self

    def stop(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None

    def __enter__(self) -> _ContainerZooKeeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def zookeeper_from_env(size: int = 1, settings: ZooKeeperSettings | None = None):
    """The embedded ensemble, or a testcontainers node when ``WEISERVING_ZK_BACKEND=testcontainers``.

    The container backend gives a single node and no fault injection; tests
    that kill members ask for :class:`ZooKeeperEnsemble` directly.
    """
    backend = os.environ.get("WEISERVING_ZK_BACKEND", "local")
    if backend == "testcontainers" and size == 1:
        return _ContainerZooKeeper()
    if backend not in ("local", "testcontainers"):
        raise EmbeddedZooKeeperError(
            f"WEISERVING_ZK_BACKEND must be 'local' or 'testcontainers', got {backend!r}"
        )
    return ZooKeeperEnsemble(size, settings=settings)


def expire_session(client: Any, hosts: str, timeout: float = 30.0) -> None:
    """Expire a kazoo client's session on the server, for real.

    A second connection attaches to the same session id and password, then
    closes it: the server ends the session and deletes its ephemeral nodes,
    and the original client is told SESSION_EXPIRED and goes to LOST. Returns
    once that client has reported LOST; ``hosts`` is the ensemble (no chroot).
    """
    from kazoo.client import KazooClient, KazooState

    lost = threading.Event()

    def listener(state: str) -> bool:
        if state == KazooState.LOST:
            lost.set()
            return True
        return False

    client.add_listener(listener)
    session_id, password = client.client_id
    other = KazooClient(hosts=hosts, client_id=(session_id, password), timeout=client._session_timeout / 1000)
    other.start(timeout=timeout)
    other.stop()
    other.close()
    if not lost.wait(timeout):
        raise EmbeddedZooKeeperError(f"session {session_id:#x} was not reported lost within {timeout}s")
