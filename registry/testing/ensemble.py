"""``ZooKeeperEnsemble``: 1, 3 or 5 real ZooKeeper servers on loopback (see :mod:`registry.testing`)."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

from .process import (
    ZOOKEEPER_JAR,
    EmbeddedZooKeeperError,
    Member,
    ZooKeeperSettings,
    four_letter_word,
    free_ports,
    java_command,
    parse_wchc,
    parse_wchs,
)

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

    # -- watches (the four-letter words wchc and wchs; zoo.cfg allows them) ----------

    def watches(self) -> dict[int, set[str]]:
        """Every data watch the running members hold: session id -> watched paths (``wchc``, merged).

        ZooKeeper 3.8's ``wchc``, ``wchs`` and ``wchp`` list data watches
        (``getData``, ``exists``) only; child watches (``getChildren``) are
        counted by :meth:`watch_count` alone. A watch lives on the member its
        session is connected to. ``wchc`` walks
        the server's watch tables: fine for tests and benchmarks, not for a
        production ensemble under load."""
        merged: dict[int, set[str]] = {}
        for m in self.members:
            if m.running:
                for session, paths in parse_wchc(four_letter_word(m.client_port, "wchc", timeout=10.0)).items():
                    merged.setdefault(session, set()).update(paths)
        return merged

    def watch_count(self) -> int:
        """Data and child watches held by the running members (``mntr``'s ``zk_watch_count``)."""
        return sum(int(m.mntr().get("zk_watch_count", 0)) for m in self.members if m.running)

    def watch_totals(self) -> tuple[int, int, int]:
        """(connections, paths, data watches), summed over the running members (``wchs``: data watches only)."""
        sums = [0, 0, 0]
        for m in self.members:
            if m.running:
                for i, n in enumerate(parse_wchs(four_letter_word(m.client_port, "wchs", timeout=10.0))):
                    sums[i] += n
        return sums[0], sums[1], sums[2]

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

    def wipe(self, member: Member | None = None, *, wait: bool = True) -> None:
        """Lose the data: SIGKILL a member (default: every one), empty its data directory, start it again.

        What a redeploy without persistent volumes does: the same addresses answer
        with an empty tree and a zxid that starts over, so a client that has seen
        a newer zxid is refused by the server (ZooKeeper's guard against going
        back in time) and every session and node is gone.
        """
        members = [member] if member is not None else list(self.members)
        for m in members:
            self._terminate(m, sig=signal.SIGKILL)
        for m in members:
            data = m.directory / "data"
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            if self.size > 1:
                (data / "myid").write_text(f"{m.myid}\n")
        for m in members:
            self._spawn(m)
        if wait:
            self.wait_serving(members)

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
        cmd = java_command(s, m)
        log = open(m.directory / "zookeeper.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            m.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=m.directory,
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

