"""A test harness for a real ZooKeeper (as ``kazoo.testing`` is kazoo's): child processes on free loopback ports.

Not used by production code: tests, benchmarks and the demos start their
ZooKeeper with it.

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

import contextlib
import os
import threading
from typing import Any

from .ensemble import ZooKeeperEnsemble
from .process import (
    EmbeddedZooKeeperError,
    Member,
    ZooKeeperSettings,
    four_letter_word,
    free_ports,
    parse_wchc,
    parse_wchs,
)

__all__ = [
    "EmbeddedZooKeeperError",
    "Member",
    "ZooKeeperEnsemble",
    "ZooKeeperSettings",
    "expire_session",
    "four_letter_word",
    "free_ports",
    "parse_wchc",
    "parse_wchs",
    "zookeeper_from_env",
]


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
