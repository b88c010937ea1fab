"""The agent's errors: one root, each carrying what the caller can act on.

    AgentError
    ├── ConfigError        a config value is invalid (field, expected, got)
    ├── CalibrationError   no batch size could be measured (what each one said)
    └── DiscoveryError     the model server cannot say which models it serves (what to pass instead)

Probe handlers and health plugins never raise these (or anything else) to
their caller: a failed check is a :class:`~server_agent.probes.ProbeResult`
with ``ok=False`` and a reason. Errors here are for the caller's own mistakes
(bad configuration) and for a start-up step that cannot produce a value.
"""

from __future__ import annotations

from collections.abc import Mapping

from registry.errors import FieldError

__all__ = ["AgentError", "CalibrationError", "ConfigError", "DiscoveryError"]


class AgentError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(AgentError, FieldError):
    """A configuration value is invalid: ``field`` is wrong, ``expected`` is what would be right."""


class CalibrationError(AgentError):
    """Calibration produced no usable batch size; ``failures`` maps batch size to why."""

    def __init__(self, failures: Mapping[int, str]) -> None:
        self.failures = dict(failures)
        detail = "; ".join(f"batch {b}: {why}" for b, why in sorted(self.failures.items()))
        super().__init__(f"calibration measured no usable batch size ({detail or 'no batch sizes given'})")


class DiscoveryError(AgentError):
    """The model server lists no models the agent can read (an OIP server without a repository
    index, and no ``--model`` given): the agent cannot write a record any client could use."""
