"""One rooted error hierarchy for the model server.

Each error carries the gRPC status code it maps to, so the service layer
translates errors once, at the boundary (``ServingError.code``), and the
message is written for the person who has to act on it.
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


class Overloaded(ServingError):
    """The batch queue is full or the payload too large: retry on another endpoint."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


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
