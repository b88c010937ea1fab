"""The SDK's errors: one root, each carrying what the caller can act on.

    WeiClientError
    ├── NoEndpointAvailable      nothing to route a request to (model, version, why)
    ├── InvalidBalancerConfig    a policy name or knob is wrong (field, expected, got)
    ├── ClientClosed             the client was closed
    ├── RequestError             the caller's request is wrong; never retried
    │   ├── InvalidInput         INVALID_ARGUMENT, or inputs that cannot be encoded
    │   └── ModelNotFound        NOT_FOUND: unknown model or version
    └── RequestFailed            every attempt failed (attempts: endpoint, code, message)
        └── DeadlineExceeded     the caller's deadline passed

gRPC errors are translated once, at the transport boundary
(:mod:`weiclient.transport`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from registry.errors import FieldError

__all__ = [
    "Attempt", "ClientClosed", "DeadlineExceeded", "InvalidBalancerConfig", "InvalidInput", "ModelNotFound",
    "NoEndpointAvailable", "RequestError", "RequestFailed", "Unavailable", "WeiClientError",
]


class WeiClientError(Exception):
    """Root of every error this SDK raises on purpose."""


class Unavailable(StrEnum):
    """Why no endpoint could be picked, most fundamental cause first."""

    NO_INSTANCES = "the service has no registered instances"
    NOT_HOSTED = "no instance hosts this model/version"
    ALL_DRAINING = "every instance hosting it is draining, disabled or at weight 0"
    ALL_EJECTED = "every routable instance is ejected after consecutive failures"
    ALL_EXCLUDED = "every available instance was excluded (already tried)"


class NoEndpointAvailable(WeiClientError):
    """No endpoint can take a request for ``model``/``version``; ``why`` says which filter emptied it."""

    def __init__(self, model: str, version: int | None, why: Unavailable, detail: str = "") -> None:
        self.model = model
        self.version = version
        self.why = why
        self.detail = detail
        target = model if version is None else f"{model} version {version}"
        extra = f" ({detail})" if detail else ""
        super().__init__(f"no endpoint for {target}: {why.value}{extra}")


class InvalidBalancerConfig(WeiClientError, FieldError):
    """A balancer policy name or knob is invalid; ``expected`` says what would be right."""


class ClientClosed(WeiClientError):
    pass


@dataclass(frozen=True)
class Attempt:
    """One try: where it went, the gRPC status code name, the server's message, how long it took."""

    endpoint: str
    code: str
    message: str
    latency_s: float

    def __str__(self) -> str:
        return f"{self.endpoint}: {self.code} ({self.message}) after {self.latency_s * 1000:.1f} ms"


class RequestError(WeiClientError):
    """The request itself is wrong (the server said so, or it cannot be encoded). Not retried."""

    def __init__(self, message: str, *, endpoint: str | None = None, code: str | None = None) -> None:
        self.endpoint = endpoint
        self.code = code
        where = f" [{code} from {endpoint}]" if endpoint else ""
        super().__init__(f"{message}{where}")


class InvalidInput(RequestError):
    pass


class ModelNotFound(RequestError):
    pass


class RequestFailed(WeiClientError):
    """Every attempt failed; ``attempts`` lists them in order and ``code`` is the last one's."""

    def __init__(self, summary: str, attempts: tuple[Attempt, ...]) -> None:
        self.attempts = attempts
        self.code = attempts[-1].code if attempts else None
        tried = "; ".join(str(a) for a in attempts) or "no attempt made"
        super().__init__(f"{summary} after {len(attempts)} attempt(s): {tried}")


class DeadlineExceeded(RequestFailed):
    pass
