"""The registry's errors: one root, each carrying what the caller can act on.

    RegistryError
    ├── RecordError            a record or config failed validation (field, expected)
    ├── ZooKeeperUnavailable   no session within the timeout (hosts, timeout)
    ├── ServiceNotFound        no such service under the root (service, known)
    ├── NotRegistered          update/drain before register (or after deregister)
    └── PublisherClosed        the publisher was closed
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error this package raises on purpose."""


class FieldError(ValueError):
    """A value is invalid: ``field`` names it, ``expected`` says what would be right,
    ``got`` is what came. Each package's own error (RecordError here,
    ``weiclient.errors.InvalidBalancerConfig``, ``server_agent.errors.ConfigError``)
    derives from it and from that package's root."""

    def __init__(self, field: str, expected: str, got: object = None) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        shown = repr(got)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: expected {expected}, got {shown}")


class RecordError(RegistryError, FieldError):
    """A record, payload or service config is invalid."""


class ZooKeeperUnavailable(RegistryError):
    def __init__(self, hosts: str, timeout: float, detail: str = "") -> None:
        self.hosts = hosts
        self.timeout = timeout
        extra = f" ({detail})" if detail else ""
        super().__init__(f"cannot reach ZooKeeper at {hosts} within {timeout:g}s{extra}")


class ServiceNotFound(RegistryError):
    def __init__(self, service: str, where: str, known: list[str]) -> None:
        self.service = service
        self.known = known
        hint = f"; known services: {', '.join(sorted(known))}" if known else "; no services registered"
        super().__init__(f"no service {service!r} under {where}{hint}")


class NotRegistered(RegistryError):
    pass


class PublisherClosed(RegistryError):
    pass
