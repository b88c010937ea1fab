"""Model signatures and input validation against them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import InvalidInput


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """dtype and shape; ``None`` is a free dimension. Dimension 0 is the batch."""

    dtype: np.dtype
    shape: tuple[int | None, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(self.shape))
        if not self.shape or self.shape[0] is not None:
            raise ValueError(f"dimension 0 must be the free batch dimension: {self.shape}")

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.str}[{dims}]"

    def to_wire(self) -> dict[str, Any]:
        return {"dtype": self.dtype.str, "shape": [-1 if d is None else d for d in self.shape]}

    def example(self, rows: int) -> np.ndarray:
        """A zero tensor of ``rows`` rows (free inner dimensions taken as 1)."""
        shape = (rows, *(1 if d is None else d for d in self.shape[1:]))
        return np.zeros(shape, dtype=self.dtype)

    def matches(self, arr: np.ndarray) -> bool:
        # a bytes input ('|S') accepts any fixed width; every other dtype must match exactly
        dtype_ok = arr.dtype.kind == "S" if self.dtype.kind == "S" else arr.dtype == self.dtype
        return dtype_ok and arr.ndim == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, arr.shape, strict=True))


def spec(dtype: Any, shape: Sequence[int | None]) -> TensorSpec:
    return TensorSpec(dtype=np.dtype(dtype), shape=tuple(shape))


@dataclass(frozen=True, kw_only=True)
class Signature:
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    def describe(self) -> str:
        return ", ".join(f"{n}: {s.describe()}" for n, s in sorted(self.inputs.items()))

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Signature:
        """The inverse of :meth:`to_wire` (-1 = free dimension)."""
        def specs(entries: Mapping[str, Any]) -> dict[str, TensorSpec]:
            return {n: spec(e["dtype"], [None if d == -1 else d for d in e["shape"]])
                    for n, e in entries.items()}
        return cls(inputs=specs(data["inputs"]), outputs=specs(data["outputs"]))

    def to_wire(self) -> dict[str, Any]:
        return {"inputs": {n: s.to_wire() for n, s in self.inputs.items()},
                "outputs": {n: s.to_wire() for n, s in self.outputs.items()}}

    def validate(self, inputs: Mapping[str, np.ndarray], model: str) -> int:
        """Check names, dtypes, shapes and a common batch size; return the row count."""
        if set(inputs) != set(self.inputs):
            missing = sorted(set(self.inputs) - set(inputs))
            extra = sorted(set(inputs) - set(self.inputs))
            raise InvalidInput(f"model {model!r}: missing inputs {missing}, unexpected inputs "
                               f"{extra}; the signature expects {self.describe()}")
        rows = None
        for name, arr in inputs.items():
            want = self.inputs[name]
            if not want.matches(arr):
                raise InvalidInput(f"model {model!r}: input {name!r} is {arr.dtype.str}"
                                   f"{list(arr.shape)} but the signature expects "
                                   f"{want.describe()} (dimension 0 is the batch)")
            if rows is not None and arr.shape[0] != rows:
                raise InvalidInput(f"model {model!r}: inputs disagree on the batch size "
                                   f"(dimension 0): {rows} vs {arr.shape[0]} for {name!r}")
            rows = arr.shape[0]
        if not rows:
            raise InvalidInput(f"model {model!r}: the batch is empty (dimension 0 is 0)")
        return rows

    def check_outputs(self, wanted: Sequence[str] | None, model: str) -> tuple[str, ...]:
        if wanted is None:
            return tuple(self.outputs)
        unknown = sorted(set(wanted) - set(self.outputs))
        if unknown:
            raise InvalidInput(f"model {model!r}: unknown outputs {unknown}; it has "
                               f"{sorted(self.outputs)}")
        return tuple(wanted)
