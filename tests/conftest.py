"""Shared fixtures: one real 3-node ZooKeeper ensemble per test session, a fresh
chroot per test, clients that are always stopped, and a real server-side
session expiry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient

from registry.testing import ZooKeeperEnsemble, expire_session, zookeeper_from_env
from registry.zk import ZkSettings, connect


@pytest.fixture(scope="session")
def zk_ensemble() -> Iterator[ZooKeeperEnsemble]:
    with zookeeper_from_env(3) as zk:
        yield zk


@pytest.fixture
def zk_chroot(zk_ensemble: ZooKeeperEnsemble, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    chroot = f"/t-{name}-{uuid.uuid4().hex[:8]}"
    admin = KazooClient(zk_ensemble.hosts)
    admin.start(timeout=30)
    admin.create(chroot)
    yield chroot
    try:
        zk_ensemble.wait_serving(timeout=30)
        admin.delete(chroot, recursive=True)
    except Exception:
        pass
    finally:
        admin.stop()
        admin.close()


@pytest.fixture
def zk_settings(zk_ensemble: ZooKeeperEnsemble, zk_chroot: str) -> ZkSettings:
    # 4 s sessions: short enough that expiry tests are quick, long enough for
    # a leader election on a loaded 2-core machine.
    return ZkSettings(hosts=zk_ensemble.hosts + zk_chroot, session_timeout_s=4.0)


@pytest.fixture
def make_client(zk_settings: ZkSettings) -> Iterator[Callable[..., KazooClient]]:
    clients: list[KazooClient] = []

    def factory(**overrides: object) -> KazooClient:
        settings = ZkSettings(**{**zk_settings.__dict__, **overrides})  # type: ignore[arg-type]
        c = connect(settings)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        try:
            c.stop()
            c.close()
        except Exception:
            pass


@pytest.fixture
def zk(make_client: Callable[..., KazooClient]) -> KazooClient:
    return make_client()


@pytest.fixture
def expire(zk_ensemble: ZooKeeperEnsemble) -> Callable[[KazooClient], None]:
    """Expire a client's session on the server (see registry.testing.expire_session)."""
    return lambda client, timeout=30.0: expire_session(client, zk_ensemble.hosts, timeout)
