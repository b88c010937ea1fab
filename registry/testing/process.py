"""The pieces under the harness: settings, free ports, four-letter words, one member's process.

See :mod:`registry.testing` for the harness itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

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
