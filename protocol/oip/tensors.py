"""OIP tensors <-> numpy: datatypes, raw little-endian buffers, typed contents.

Datatypes (:data:`DATATYPES`): ``BOOL``; ``UINT8`` .. ``UINT64``;
``INT8`` .. ``INT64``; ``FP16``, ``FP32``, ``FP64``; ``BYTES``. Each but
``BYTES`` is one fixed-width little-endian numpy dtype. ``BYTES`` is a
tensor of byte strings: in a raw buffer each element is a 4-byte
little-endian length followed by its bytes; here it becomes numpy's
fixed-width ``|S{n}`` (what :mod:`protocol.wire` carries), n the longest
element (numpy drops trailing NUL bytes of an element, as ``|S`` always
does). Triton's ``BF16`` has no numpy dtype and is refused.

A raw buffer must be exactly ``prod(shape) * itemsize`` bytes and decodes
zero-copy (a read-only :func:`numpy.frombuffer` view). Typed contents use
the field of the datatype's family (``int_contents`` for INT8/16/32,
``uint_contents`` for UINT8/16/32, ...); a value that does not fit the
datatype is refused, not wrapped. FP16 has no typed field: raw only.

Errors raise :class:`~protocol.tensor.WireError` with what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from protocol.tensor import DEFAULT_LIMITS, Limits, WireError

__all__ = ["CONTENTS_FIELD", "DATATYPES", "bytes_array", "check_shape", "datatype_of", "dtype_of", "from_contents",
           "from_raw", "narrow", "to_raw"]

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("|b1"),
    "UINT8": np.dtype("|u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("|i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {dt.str: name for name, dt in DATATYPES.items()}

# The InferTensorContents field each datatype's values travel in, and the numpy dtype
# that field holds (the wider type a smaller one is carried in).
CONTENTS_FIELD: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(bool)),
    "INT8": ("int_contents", np.dtype(np.int32)), "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)), "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)), "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)), "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)), "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}
_NAMES = ", ".join([*DATATYPES, "BYTES"])


def datatype_of(dtype: np.dtype) -> str:
    """The OIP datatype of a numpy dtype (``|S{n}`` is BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "S":
        return "BYTES"
    name = _BY_DTYPE.get(dtype.newbyteorder("<").str if dtype.byteorder == ">" else dtype.str)
    if name is None:
        raise WireError(f"numpy dtype {dtype.str} has no OIP datatype; expected one of {_NAMES}")
    return name


def dtype_of(datatype: str) -> np.dtype:
    """The numpy dtype of a fixed-width OIP datatype (not BYTES: its width depends on the data)."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise WireError(f"datatype {datatype[:32]!r} is not supported; expected one of {_NAMES}") from None


def check_shape(shape: Sequence[int], name: str, limits: Limits = DEFAULT_LIMITS) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) > limits.max_dims:
        raise WireError(f"input {name!r} has {len(shape)} dims; at most {limits.max_dims} allowed")
    if any(d < 0 for d in shape):
        raise WireError(f"input {name!r} has shape {list(shape)}; dimensions must be >= 0")
    return shape


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes,
             limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode one raw buffer (zero-copy for every datatype but BYTES)."""
    shape = check_shape(shape, name, limits)
    if datatype == "BYTES":
        return bytes_array(name, _split_bytes(name, raw, math.prod(shape)), shape, limits)
    dtype = dtype_of(datatype)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise WireError(f"input {name!r}: raw data is {len(raw)} bytes but shape {list(shape)} x {datatype} "
                        f"needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_contents(name: str, datatype: str, shape: Sequence[int], contents: Any,
                  limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode typed contents (an ``InferTensorContents``): the datatype's field, row-major."""
    shape = check_shape(shape, name, limits)
    if datatype not in CONTENTS_FIELD:
        dtype_of(datatype)    # an unknown datatype says so
        raise WireError(f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents")
    field, carrier = CONTENTS_FIELD[datatype]
    values = getattr(contents, field)
    n = math.prod(shape)
    if len(values) != n:
        used = [f for f, _ in set(CONTENTS_FIELD.values()) if f != field and len(getattr(contents, f))]
        hint = f" (data found in {', '.join(sorted(used))} instead)" if used else ""
        raise WireError(f"input {name!r}: {field} has {len(values)} values but shape {list(shape)} needs {n}{hint}")
    if datatype == "BYTES":
        return bytes_array(name, list(values), shape, limits)
    return narrow(name, datatype, np.asarray(values, dtype=carrier)).reshape(shape)


def narrow(name: str, datatype: str, values: np.ndarray) -> np.ndarray:
    """``values`` cast to ``datatype``'s dtype, refusing any value the cast would change."""
    dtype = dtype_of(datatype)
    if values.dtype == dtype:
        return values
    out = values.astype(dtype)
    if values.size and not np.array_equal(out, values):
        raise WireError(f"input {name!r}: values out of the range of {datatype}")
    return out


def to_raw(arr: np.ndarray) -> bytes:
    """One tensor as a raw buffer (BYTES elements length-prefixed)."""
    if arr.dtype.kind == "S":
        return b"".join(struct.pack("<I", len(e)) + e for e in arr.reshape(-1).tolist())
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()


def _split_bytes(name: str, raw: bytes, n: int) -> list[bytes]:
    items, pos, view = [], 0, memoryview(raw)
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise WireError(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + size > len(raw):
            raise WireError(f"input {name!r}: BYTES element {len(items)} claims {size} bytes, "
                            f"{len(raw) - pos - 4} are left")
        items.append(bytes(view[pos + 4:pos + 4 + size]))
        pos += 4 + size
        if len(items) > n:
            break
    if len(items) != n:
        raise WireError(f"input {name!r}: BYTES data holds {len(items)}{'+' if pos < len(raw) else ''} "
                        f"elements but the shape needs {n}")
    return items


def bytes_array(name: str, items: list[Any], shape: tuple[int, ...], limits: Limits) -> np.ndarray:
    width = max((len(e) for e in items), default=1) or 1
    if width > limits.max_bytes_itemsize:
        raise WireError(f"input {name!r}: a BYTES element is {width} bytes; at most {limits.max_bytes_itemsize}")
    if not all(isinstance(e, bytes) for e in items):
        raise WireError(f"input {name!r}: BYTES elements must be byte strings")
    return np.array(items, dtype=f"|S{width}").reshape(shape)
