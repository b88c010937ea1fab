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


class RecordError(RegistryError, ValueError):
    """A record, payload or service config is invalid.

    ``field`` names what is wrong and ``expected`` what would have been right.
    """

    def __init__(self, field: str, expected: str, got: object = None) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        shown = repr(got)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: expected {expected}, got {shown}")


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
