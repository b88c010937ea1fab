"""The SDK's errors: one root, each carrying what the caller can act on.

    WeiClientError
    ├── NoEndpointAvailable      nothing to route a request to (model, version, why)
    ├── InvalidArgument          a constructor argument or config field is wrong (field, expected, got)
    │   └── InvalidBalancerConfig    a policy name or knob is wrong
    ├── RegistryUnavailable      no membership within start_timeout_s (ZooKeeper unreachable, no file)
    ├── ClientClosed             the client was closed
    ├── RequestError             the caller's request is wrong; never retried, never charged to a pod
    │   ├── InvalidInput         INVALID_ARGUMENT (a row limit too), or arguments that cannot be sent
    │   ├── RequestTooLarge      over a gRPC message size limit (limit, size where known)
    │   └── ModelNotFound        NOT_FOUND: unknown model or version
    ├── RequestFailed            every attempt failed (attempts: endpoint, code, message)
    │   ├── DeadlineExceeded     the caller's deadline passed
    │   └── Overloaded           every pod tried refused the call for overload (retry_after_s)
    │       └── Throttled        refused here, before sending, by adaptive throttling (no attempt)
    └── InternalError            a bug in the SDK (the original exception is its __cause__)

gRPC errors are translated once, at the transport boundary
(:mod:`weiclient.transport`); nothing but a :class:`WeiClientError` leaves
``predict`` and its twins. A server's message is kept to
:data:`MAX_MESSAGE_CHARS` (:func:`clip`), so three failed attempts cannot make
an error of megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from registry.errors import FieldError

__all__ = [
    "MAX_MESSAGE_CHARS", "Attempt", "ClientClosed", "DeadlineExceeded", "InternalError", "InvalidArgument",
    "InvalidBalancerConfig", "InvalidInput", "ModelNotFound", "NoEndpointAvailable", "RegistryUnavailable",
    "Overloaded", "RequestError", "RequestFailed", "RequestTooLarge", "Throttled", "Unavailable", "WeiClientError",
    "clip",
]

MAX_MESSAGE_CHARS = 4096


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class WeiClientError(Exception):
    """Root of every error this SDK raises on purpose."""


class Unavailable(StrEnum):
    """Why no endpoint could be picked, most fundamental cause first."""

    NO_INSTANCES = "the service has no registered instances"
    NOT_HOSTED = "no instance hosts this model/version"
    NO_MULTI_MODEL = ("only instances that speak the Open Inference Protocol host them all, and it has no "
                      "multi-model request; call predict once per model")
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


class InvalidArgument(WeiClientError, FieldError):
    """A constructor argument or configuration field is invalid; ``expected`` says what would be right."""


class InvalidBalancerConfig(InvalidArgument):
    """A balancer policy name or knob is invalid; ``expected`` says what would be right."""


class RegistryUnavailable(WeiClientError):
    """No membership within ``start_timeout_s``: ZooKeeper unreachable and no snapshot file.
    The constructor that raises it has released everything it opened."""

    def __init__(self, hosts: str, service: str, waited_s: float, detail: str = "") -> None:
        self.hosts = hosts
        self.service = service
        self.waited_s = waited_s
        extra = f" ({detail})" if detail else ""
        super().__init__(f"no membership for service {service!r} from ZooKeeper at {hosts} within "
                         f"{waited_s:g}s (ClientConfig.start_timeout_s), and no snapshot file to start from"
                         f"{extra}")


class ClientClosed(WeiClientError):
    pass


class InternalError(WeiClientError):
    """An exception the SDK did not expect (a bug: please report it with its ``__cause__``)."""


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


class RequestTooLarge(RequestError):
    """A message over a gRPC size limit: the request before it was sent (``size`` and ``limit`` set),
    or a server's refusal of it, or an answer over this client's limit. Sending it elsewhere would
    meet the same limit, so it is not retried and no pod is blamed."""

    def __init__(self, message: str, *, endpoint: str | None = None, code: str | None = None,
                 size: int | None = None, limit: int | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message, endpoint=endpoint, code=code)


class RequestFailed(WeiClientError):
    """Every attempt failed; ``attempts`` lists them in order and ``code`` is the last one's."""

    def __init__(self, summary: str, attempts: tuple[Attempt, ...]) -> None:
        self.attempts = attempts
        self.code = attempts[-1].code if attempts else None
        tried = "; ".join(str(a) for a in attempts) or "no attempt made"
        super().__init__(f"{summary} after {len(attempts)} attempt(s): {tried}")


class DeadlineExceeded(RequestFailed):
    pass


class Overloaded(RequestFailed):
    """Every pod the call went to refused it for overload (RESOURCE_EXHAUSTED), fast, without
    waiting for the deadline. ``retry_after_s``: the soonest any of them expects room (its
    ``wei-retry-after-ms``, or ``OverloadConfig.default_retry_after_s`` for a pod that did not
    say). Back off, or send less: a retry at once meets the same full queues."""

    def __init__(self, summary: str, attempts: tuple[Attempt, ...], *, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        after = f"; retry after {retry_after_s * 1000:.0f} ms" if retry_after_s is not None else ""
        super().__init__(f"{summary}{after}", attempts)


class Throttled(Overloaded):
    """Rejected here, before anything was sent: lately the servers refused so many calls that
    this one would likely be refused too (adaptive throttling, :mod:`weiclient.throttle`).
    ``priority`` and ``probability`` say which rule rejected it."""

    def __init__(self, summary: str, *, priority: str, probability: float) -> None:
        self.priority = priority
        self.probability = probability
        super().__init__(summary, ())
