"""The pieces under the harness: settings, free ports, four-letter words, one member's process.

See :mod:`registry.testing` for the harness itself.

A member's JVM (:func:`java_command`) writes its crash log (``hs_err``) under
:data:`CRASH_DIR`, which outlives the ensemble's temporary directory, and
:meth:`Member.log_tail` (what a start failure reports) names it. The JVM is
started without a ``preexec_fn``: one forces ``fork()`` and runs every
library's at-fork handlers in the starting process, which in a benchmark
(gRPC, TensorFlow and OpenBLAS threads) can hang it (seen: OpenBLAS's
``blas_thread_shutdown_``) or kill the child before ``exec``; the parent-death
signal is set by ``setpriv --pdeathsig`` instead, after ``exec``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
SLF4J_SIMPLE_JAR = Path("/usr/share/java/slf4j-simple.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
CRASH_DIR = Path(tempfile.gettempdir()) / "weiserving-zk-crashes"
"""Where members' JVM crash logs are kept: ``{member.name}-{pid}.log``."""


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


def parse_wchc(answer: str) -> dict[int, set[str]]:
    """``wchc``'s answer (a session id, then its watched paths indented) as session -> paths."""
    watches: dict[int, set[str]] = {}
    session: set[str] | None = None
    for line in answer.splitlines():
        if line.startswith("0x"):
            session = watches.setdefault(int(line.strip(), 16), set())
        elif line.strip().startswith("/") and session is not None:
            session.add(line.strip())
    return watches


def parse_wchs(answer: str) -> tuple[int, int, int]:
    """``wchs``'s answer as (connections watching, paths watched, total watches)."""
    m = re.search(r"(\d+) connections watching (\d+) paths\s+Total watches:\s*(\d+)", answer)
    if m is None:
        raise EmbeddedZooKeeperError(f"unexpected wchs answer: {answer!r}")
    conns, paths, total = (int(g) for g in m.groups())
    return conns, paths, total


def _mode_of(srvr_answer: str) -> str | None:
    for line in srvr_answer.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


def die_with_parent_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --`` where util-linux has it: the child, once exec'd, is
    SIGKILLed when the thread that started it ends; no Python runs between fork and exec."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def java_command(settings: ZooKeeperSettings, member: Member) -> list[str]:
    """The member's command line. No ``-Xss``: a native frame (the verifier, getaddrinfo)
    that overflows a Java thread's stack leaves no room for the JVM's signal handler, so
    the process dies by SIGSEGV (-11) with no crash log; smaller stacks save nothing here
    (they are committed only as touched)."""
    classpath = [str(ZOOKEEPER_JAR)]
    if SLF4J_SIMPLE_JAR.exists():
        classpath.append(str(SLF4J_SIMPLE_JAR))
    CRASH_DIR.mkdir(parents=True, exist_ok=True)
    return [
        *die_with_parent_prefix(),
        settings.java,
        f"-Xmx{settings.heap_mb}m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        f"-XX:ErrorFile={CRASH_DIR / member.name}-%p.log",
        "-Djava.awt.headless=true",
        f"-Dorg.slf4j.simpleLogger.defaultLogLevel={settings.log_level}",
        "-Dzookeeper.jmx.log4j.disable=true",
        "-cp",
        ":".join(classpath),
        MAIN_CLASS,
        str(member.directory / "zoo.cfg"),
    ]


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

    @property
    def name(self) -> str:
        """Unique among live ensembles: the ensemble's directory and the member's id."""
        return f"{self.directory.parent.name}-zk{self.myid}"

    def crash_log(self) -> Path | None:
        """The JVM's crash log for the current (or last) process, if it wrote one."""
        if self.process is None:
            return None
        path = CRASH_DIR / f"{self.name}-{self.process.pid}.log"
        return path if path.is_file() else None

    def mode(self) -> str | None:
        """``standalone``, ``leader``, ``follower``, or None when not serving."""
        try:
            return _mode_of(four_letter_word(self.client_port, "srvr"))
        except OSError:
            return None

    def mntr(self) -> dict[str, float]:
        """The numeric lines of ``mntr`` (``zk_watch_count`` counts data and child watches)."""
        out: dict[str, float] = {}
        for line in four_letter_word(self.client_port, "mntr", timeout=10.0).splitlines():
            key, _, value = line.partition("\t")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
        return out

    def log_tail(self, lines: int = 30) -> str:
        """The output's last lines, the signal that ended the process, and where its JVM crash
        log is kept (copied out of the directory the ensemble removes)."""
        path = self.directory / "zookeeper.log"
        try:
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            tail = ""
        notes = [tail or f"(no output in {path}: the process ended before the JVM wrote a line)"]
        code = self.process.poll() if self.process is not None else None
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            notes.append(f"(ended by {name}; a crash the JVM handled ends by SIGABRT with a crash log)")
        crash = self.crash_log()
        if crash is not None:
            notes.append(f"JVM crash log kept at {crash}")
        return "\n".join(notes)
