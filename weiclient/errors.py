"""The SDK's errors: one root, each carrying what the caller can act on.

    WeiClientError
    ├── NoEndpointAvailable      nothing to route a request to (model, version, why)
    └── InvalidBalancerConfig    a policy name or knob is wrong (field, expected, got)

Transport errors (deadline, unavailable, ...) join this tree with the
transport; they are translated once, at the gRPC boundary.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["InvalidBalancerConfig", "NoEndpointAvailable", "Unavailable", "WeiClientError"]


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


class InvalidBalancerConfig(WeiClientError, ValueError):
    """A balancer policy name or knob is invalid; ``expected`` says what would be right."""

    def __init__(self, field: str, expected: str, got: object = None) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        shown = repr(got)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: expected {expected}, got {shown}")
