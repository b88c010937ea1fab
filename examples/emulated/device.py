"""The emulated device both model templates run on: its speed is read from a file, batch by batch."""

from __future__ import annotations

import time
from pathlib import Path


class Device:
    """Waits ``fixed_s + rows x unit_s / speed`` per batch; ``speed`` is re-read when its file changes."""

    def __init__(self, speed_file: Path, *, unit_s: float, fixed_s: float = 0.0) -> None:
        self._file = speed_file
        self._unit_s = unit_s
        self._fixed_s = fixed_s
        self._speed = 1.0
        self._mtime: int | None = None

    def speed(self) -> float:
        try:
            mtime = self._file.stat().st_mtime_ns
            if mtime != self._mtime:
                self._speed, self._mtime = max(1e-3, float(self._file.read_text())), mtime
        except (OSError, ValueError):
            pass  # a missing or half-written file: keep the last speed
        return self._speed

    def run(self, rows: int) -> None:
        time.sleep(self._fixed_s + rows * self._unit_s / self.speed())
