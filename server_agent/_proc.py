"""Run a command with a hard time bound and never raise: the one place the agent forks.

Used by exec probes, executable plugins and GPU detection. The child gets its
own session so that on timeout the whole group dies -- a ``sh -c 'sleep 100'``
would otherwise leave ``sleep`` holding our pipes open and ``communicate``
waiting on it long after the timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Completed", "first_line", "run_bounded"]

MAX_OUTPUT = 10 * 1024
"""Bytes of output kept (Kubernetes keeps 10 KiB of an exec probe's output too)."""


@dataclass(frozen=True, slots=True)
class Completed:
    """``returncode`` is None when the command did not run to completion (see ``error``)."""

    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    error: str = ""


def first_line(*texts: str) -> str:
    """The first non-blank line of the first text that has one, trimmed to 200 characters."""
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                return line.strip()[:200]
    return ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def run_bounded(
    argv: Sequence[str],
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run ``argv`` (no shell); kill its process group after ``timeout`` seconds."""
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )
    except FileNotFoundError:
        if os.sep in argv[0] and os.path.exists(argv[0]):  # the #! line names a missing interpreter
            return Completed(None, error=f"cannot execute {argv[0]!r}: its interpreter was not found")
        return Completed(None, error=f"command not found: {argv[0]!r}")
    except PermissionError:
        return Completed(None, error=f"not executable: {argv[0]!r}")
    except OSError as e:
        return Completed(None, error=f"cannot start {argv[0]!r}: {e.strerror or e}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:  # a grandchild escaped the group and holds the pipes
            out, err = b"", b""
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
        return Completed(None, _text(out), _text(err), timed_out=True, error=f"timed out after {timeout:g}s")
    return Completed(proc.returncode, _text(out), _text(err))


def _text(data: bytes | None) -> str:
    return (data or b"")[:MAX_OUTPUT].decode("utf-8", errors="replace")
