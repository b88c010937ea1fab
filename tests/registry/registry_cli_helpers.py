"""Helpers for the registry CLI tests (a unique module name: tests/ has several conftest.py)."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable


class Lines:
    """A subprocess's stdout read on a thread, so a test waits for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, want: Callable[[str], bool] | str, timeout: float = 30.0) -> str:
        """The first line ``want`` accepts (a predicate, or a regular expression the whole line matches)."""
        accept = (lambda s: re.fullmatch(want, s) is not None) if isinstance(want, str) else want
        deadline = time.monotonic() + timeout
        while True:
            line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("output ended; seen:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if accept(line):
                return line

    def rest(self, timeout: float = 30.0) -> list[str]:
        while (line := self._q.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return self.seen
