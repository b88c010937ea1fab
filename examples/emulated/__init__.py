"""An emulated accelerator: a model whose batch takes ``rows x unit_s / speed`` seconds.

Used by the heterogeneous-fleet tests, ``bench/hetero.py`` and ``make demo``
to build pods of known, different and changeable speed on one machine. The
model sleeps (the GIL is released, as a GPU kernel's wait would), so a pod's
capacity is exactly ``speed / unit_s`` rows per second per batch thread,
whatever the machine's own load. Its speed is read from the file ``speed``
beside ``model.py`` at every batch, so a test or the demo can slow a pod
down mid-run (a noisy neighbour) by writing that file.

    write_model(models_dir, "ctr", 1, speed=2.0)     # models_dir/ctr/1/{model.py,speed}
    set_speed(models_dir, "ctr", 1, 0.5)             # from now on, half as fast

:func:`write_accelerated` does the same around a real model: the version
directory's ``model.py`` loads another version directory (a TensorFlow
SavedModel, say), answers with its real outputs, and adds the emulated
device time, so a fleet of real CTR pods can differ in speed on one machine.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["FEATURES", "UNIT_S", "set_speed", "write_accelerated", "write_model"]

UNIT_S = 0.0002   # seconds per row at speed 1: 5,000 rows/s, a 1,000-row call in 0.2 s
FEATURES = 13

MODEL = '''
from pathlib import Path

import numpy as np

from examples.emulated.device import Device
from serving.backends.signature import Signature, spec


class Emulated:
    """score = sum(x); a batch of n rows waits {fixed_s!r} + n x {unit_s!r} / speed seconds."""

    signature = Signature(inputs={{"x": spec("<f4", [None, {features}])}}, outputs={{"score": spec("<f4", [None])}})

    def __init__(self):
        self.device = Device(Path(__file__).with_name("speed"), unit_s={unit_s!r}, fixed_s={fixed_s!r})

    def predict(self, inputs):
        x = inputs["x"]
        self.device.run(len(x))
        return {{"score": x.sum(axis=1, dtype=np.float32)}}


def load(path):
    return Emulated()
'''


def write_model(models_dir: Path, name: str, version: int, *, speed: float, unit_s: float = UNIT_S,
                fixed_s: float = 0.0) -> Path:
    """``models_dir/name/version/model.py`` and its ``speed`` file; returns the version directory."""
    path = Path(models_dir) / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.py").write_text(textwrap.dedent(MODEL.format(unit_s=unit_s, fixed_s=fixed_s,
                                                               features=FEATURES)))
    set_speed(models_dir, name, version, speed)
    return path


ACCELERATED = '''
from pathlib import Path

from examples.emulated.device import Device
from serving.backends import load_backend


class Accelerated:
    """The real model's outputs; each batch also waits rows x {unit_s!r} / speed (the emulated device)."""

    def __init__(self):
        self._real = load_backend(Path({target!r}))
        self.signature = self._real.signature
        self.device = Device(Path(__file__).with_name("speed"), unit_s={unit_s!r})

    def predict(self, inputs):
        out = self._real.predict(inputs)
        self.device.run(len(next(iter(inputs.values()))))
        return out

    def close(self):
        self._real.close()


def load(path):
    return Accelerated()
'''


def write_accelerated(models_dir: Path, name: str, version: int, *, target: Path, speed: float,
                      unit_s: float) -> Path:
    """``models_dir/name/version`` serving the model in ``target`` on an emulated device of ``speed``."""
    path = Path(models_dir) / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.py").write_text(textwrap.dedent(ACCELERATED.format(unit_s=unit_s, target=str(target))))
    set_speed(models_dir, name, version, speed)
    return path


def set_speed(models_dir: Path, name: str, version: int, speed: float) -> None:
    """Change a written model's speed; its next batch runs at the new one (atomic replace)."""
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed!r}")
    path = Path(models_dir) / name / str(version) / "speed"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{speed!r}\n")
    tmp.replace(path)
