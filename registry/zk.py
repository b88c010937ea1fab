"""Connecting to ZooKeeper: settings, paths under the root, and ACLs.

Every component takes a started :class:`kazoo.client.KazooClient` (as
kazoo's own recipes do) plus a :class:`RegistryPaths`; :func:`connect` builds
one from :class:`ZkSettings` with retries that never give up on the
connection, so a client outlives a ZooKeeper outage and comes back by itself.

ACLs: with ``auth="user:password"`` the client authenticates with ZooKeeper's
``digest`` scheme and every node it creates is writable by that user only and
readable by anyone (world:anyone:r). Readers need no credentials.

Per-service credentials: ZooKeeper checks a delete (and a create) against the
*parent's* ACL, so a node's own ACL does not stop another writer from deleting
it. :func:`provision_service` gives each service's node an ACL that names only
that service's writer (and the admin): then the agents of ``ctr``, holding the
``ctr`` credential, can create, change and delete instances of ``ctr`` and of
no other service, and the shared parents belong to the admin.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.hosts import collect_hosts
from kazoo.retry import KazooRetry
from kazoo.security import ACL, Id, Permissions, make_acl, make_digest_acl, make_digest_acl_credential

from .errors import RecordError, ZooKeeperUnavailable
from .records import check_name

__all__ = ["RegistryPaths", "ZkSettings", "connect", "digest_id", "provision_service", "service_acl", "writer_acl"]

ROOT_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
DEFAULT_HOSTS = "127.0.0.1:2181"
DEFAULT_ROOT = "/weiserving"


@dataclass(frozen=True)
class RegistryPaths:
    """Where things live under the configurable root (default ``/weiserving``)."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not ROOT_RE.match(self.root):
            raise RecordError("root", "an absolute ZooKeeper path like /weiserving", self.root)

    @property
    def services(self) -> str:
        return f"{self.root}/services"

    @property
    def configs(self) -> str:
        return f"{self.root}/config"

    def service(self, service: str) -> str:
        return f"{self.services}/{check_name('service', service)}"

    def instance(self, service: str, instance_id: str) -> str:
        return f"{self.service(service)}/{check_name('id', instance_id)}"

    def config(self, service: str) -> str:
        return f"{self.configs}/{check_name('service', service)}"


@dataclass(frozen=True, kw_only=True)
class ZkSettings:
    """How to reach ZooKeeper.

    ``session_timeout_s``: 10 s is the trade-off between noticing a dead pod
    (its ephemeral node lives this long) and surviving a GC pause or a leader
    election without losing the session.
    """

    hosts: str = DEFAULT_HOSTS
    root: str = DEFAULT_ROOT
    session_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    auth: str | None = None  # "user:password" for digest ACLs
    read_only: bool = False

    def __post_init__(self) -> None:
        if not self.hosts or " " in self.hosts:
            raise RecordError("hosts", "host:port[,host:port...][/chroot]", self.hosts)
        try:
            collect_hosts(self.hosts)
        except ValueError as e:
            raise RecordError("hosts", f"host:port[,host:port...][/chroot] ({e})", self.hosts) from None
        RegistryPaths(self.root)
        if self.session_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise RecordError("timeouts", "positive seconds", (self.session_timeout_s, self.connect_timeout_s))
        if self.auth is not None and ":" not in self.auth:
            raise RecordError("auth", "user:password", "<hidden>")

    @classmethod
    def from_env(cls, **overrides: object) -> ZkSettings:
        """``WEI_ZK``, ``WEI_ZK_ROOT`` and ``WEI_ZK_AUTH``, then ``overrides`` (None = unset)."""
        values: dict[str, object] = {
            "hosts": os.environ.get("WEI_ZK", DEFAULT_HOSTS),
            "root": os.environ.get("WEI_ZK_ROOT", DEFAULT_ROOT),
            "auth": os.environ.get("WEI_ZK_AUTH") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def paths(self) -> RegistryPaths:
        return RegistryPaths(self.root)

    def __repr__(self) -> str:  # never print the password
        auth = "<set>" if self.auth else None
        return (
            f"ZkSettings(hosts={self.hosts!r}, root={self.root!r}, "
            f"session_timeout_s={self.session_timeout_s}, auth={auth})"
        )


def writer_acl(auth: str | None) -> list[ACL] | None:
    """Digest ACL for the writer plus world-read; None (open ACL) without auth."""
    if not auth:
        return None
    user, password = auth.split(":", 1)
    return [
        make_digest_acl(user, password, all=True),
        make_acl("world", "anyone", read=True),
    ]


def digest_id(credential: str) -> str:
    """``"user:password"`` -> ZooKeeper's digest ACL id ``"user:base64(sha1)"`` (no password in it)."""
    if ":" not in credential:
        raise RecordError("credential", "user:password", "<hidden>")
    user, password = credential.split(":", 1)
    return make_digest_acl_credential(user, password)


def service_acl(writer_id: str, *, admin_id: str | None = None) -> list[ACL]:
    """A service node's ACL: its writer (a :func:`digest_id`) and the admin may do all; anyone reads."""
    acl = [ACL(Permissions.ALL, Id("digest", writer_id))]
    if admin_id is not None and admin_id != writer_id:
        acl.append(ACL(Permissions.ALL, Id("digest", admin_id)))
    return [*acl, make_acl("world", "anyone", read=True)]


def provision_service(client: KazooClient, service: str, *, writer_id: str, admin_id: str | None = None,
                      paths: RegistryPaths | None = None) -> None:
    """Give ``service`` its own writer: run once per service by an admin, before its agents start.

    ``client`` authenticates as the admin (``admin_id`` is its :func:`digest_id`);
    the root and the services node are created readable by all and writable by
    the admin only (an existing one keeps its ACL: set it once by hand with
    ``setAcl`` when migrating); the service node gets :func:`service_acl`, also
    when it exists already. Idempotent.
    """
    paths = paths or RegistryPaths()
    parents = service_acl(admin_id) if admin_id is not None else None
    client.ensure_path(paths.services, acl=parents)
    node = paths.service(service)
    acl = service_acl(writer_id, admin_id=admin_id)
    client.ensure_path(node, acl=acl)
    client.set_acls(node, acl)


def connection_retry() -> KazooRetry:
    """How a client gets back to the ensemble: forever, 0.1 s doubling to 2 s, each sleep x U(0.5, 1.5).

    After a leader election every client of the ensemble reconnects at once.
    kazoo tries each server of its (shuffled) list, then sleeps; the jitter
    (50 %, kazoo's default is 40 %) feeds the next delay, so after a few
    rounds the clients' attempts are spread over seconds instead of landing
    together. 2 s at most (3 s with jitter): a client tries every server at
    least three times within a 10 s session timeout, so a session (and a
    pod's ephemeral node) survives an election. The re-reads that follow a
    reconnect are spread further by the watcher (``WatcherConfig.resync_jitter_s``).
    """
    return KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_jitter=0.5, max_delay=2.0)


def command_retry() -> KazooRetry:
    """A request lost with its connection is tried 3 times, 0.1 s doubling to 1 s, jittered as above."""
    return KazooRetry(max_tries=3, delay=0.1, backoff=2, max_jitter=0.5, max_delay=1.0)


def make_client(settings: ZkSettings) -> KazooClient:
    """A configured, not yet started client whose connection retries forever (:func:`connection_retry`)."""
    kw: dict[str, object] = {}
    if settings.auth:
        kw["auth_data"] = [("digest", settings.auth)]
        kw["default_acl"] = writer_acl(settings.auth)
    return KazooClient(
        hosts=settings.hosts,
        timeout=settings.session_timeout_s,
        connection_retry=connection_retry(),
        command_retry=command_retry(),
        read_only=settings.read_only,
        **kw,  # type: ignore[arg-type]
    )


def connect(settings: ZkSettings, *, wait: bool = True) -> KazooClient:
    """A started client. ``wait=False`` returns at once and connects in the background.

    With ``wait=True`` an unreachable ensemble raises :class:`ZooKeeperUnavailable`
    after ``connect_timeout_s`` and the client is stopped again.
    """
    client = make_client(settings)
    if not wait:
        client.start_async()
        return client
    try:
        client.start(timeout=settings.connect_timeout_s)
    except KazooTimeoutError:
        client.stop()
        client.close()
        raise ZooKeeperUnavailable(settings.hosts, settings.connect_timeout_s) from None
    return client
