"""One rooted error hierarchy for the model server.

Each error carries the gRPC status code it maps to, so the service layer
translates errors once, at the boundary (``ServingError.code``), and the
message is written for the person who has to act on it. A message travels
as the gRPC status message, in trailing metadata that clients refuse beyond
16 KiB (gRPC's hard limit, counted percent-encoded); :func:`status_message`
keeps it well under that, saying how much was cut.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Root of every error the model server raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ConfigError(ServingError, ValueError):
    """Invalid configuration (CLI flags, config file, model layout)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelNotFound(ServingError, LookupError):
    """Unknown model, or a version that is not loaded."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ServingError, ValueError):
    """Inputs that do not match the signature, or a malformed payload."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class RowLimitExceeded(InvalidInput):
    """A request with more rows than the model's batch queue holds: it could never be admitted,
    on this pod or (with the same model config) on any other, so it is the caller's to split,
    not a reason to retry elsewhere (RESOURCE_EXHAUSTED would say that, and blame the pod)."""


class Overloaded(ServingError):
    """The batch queue is full or the payload too large: retry on another endpoint.

    ``retry_after_s``: set when the refusal is about this server's load (not
    the call's size): when it expects room again, sent as ``wei-retry-after-ms``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(ServingError):
    """The server is shutting down and takes no new calls."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExpired(ServingError):
    """The request's deadline passed while it waited; it never reached the model."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelLoadError(ServingError):
    """A model version failed to load or warm up; the previous version keeps serving."""

    code = grpc.StatusCode.UNAVAILABLE


class BackendError(ServingError):
    """The model itself raised while running a batch."""

    code = grpc.StatusCode.INTERNAL


MAX_STATUS_BYTES = 4096


def status_message(text: str, limit: int = MAX_STATUS_BYTES) -> str:
    """``text`` cut so that it is at most ``limit`` bytes as gRPC sends it (percent-encoded
    UTF-8: printable ASCII but ``%`` one byte, anything else three per byte), with a marker
    saying how many characters were cut. Lone surrogates (unencodable) become ``?``."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= limit and sum(map(_sent_size, text)) <= limit:  # a char is at least one byte
        return text
    budget = limit - len(f"... ({len(text)} more characters)")  # the marker at its longest
    size = kept = 0
    for ch in text:
        size += _sent_size(ch)
        if size > budget:
            break
        kept += 1
    return f"{text[:kept]}... ({len(text) - kept} more characters)"


def _sent_size(ch: str) -> int:
    if " " <= ch <= "~" and ch != "%":
        return 1
    return 3 * len(ch.encode("utf-8"))
