"""Tensor codec of the wire protocol: the msgpack ext type and the decoding limits.

See :mod:`protocol.wire` for the format; this module holds the part that
touches raw bytes and numpy.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

TENSOR_EXT_CODE = 84
_FORMAT_VERSION = 1

ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8"]
)


class WireError(ValueError):
    """A payload that does not follow the protocol; the message says what was expected."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds applied while decoding untrusted bytes.

    ``max_message_bytes`` matches the server's default gRPC receive limit:
    a 2,000-candidate ranking call with 39 features is about 700 KB, so
    64 MiB leaves ample room while bounding memory per call.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    max_dims: int = 8
    max_tensors: int = 256
    max_name_len: int = 256
    max_bytes_itemsize: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_dims", "max_tensors", "max_name_len",
                     "max_bytes_itemsize"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- tensors


def _check_dtype(dtype_str: str, limits: Limits) -> np.dtype:
    if dtype_str in ALLOWED_DTYPES:
        return np.dtype(dtype_str)
    if dtype_str.startswith("|S") and dtype_str[2:].isdigit():
        size = int(dtype_str[2:])
        if 1 <= size <= limits.max_bytes_itemsize:
            return np.dtype(dtype_str)
    raise WireError(
        f"dtype {dtype_str!r} is not allowed; expected one of {sorted(ALLOWED_DTYPES)} "
        f"or fixed-width bytes '|S<n>' (object and unicode dtypes are refused)"
    )


def pack_tensor(array: Any, limits: Limits = DEFAULT_LIMITS) -> msgpack.ExtType:
    """Encode an array-like as a tensor ExtType (one copy of the buffer)."""
    arr = np.asarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    dtype_str = arr.dtype.str
    _check_dtype(dtype_str, limits)
    if arr.ndim > limits.max_dims:
        raise WireError(f"tensor has {arr.ndim} dims; at most {limits.max_dims} allowed")
    dt = dtype_str.encode("ascii")
    header = struct.pack(f"<BB{len(dt)}sB{arr.ndim}Q", _FORMAT_VERSION, len(dt), dt,
                         arr.ndim, *arr.shape)
    return msgpack.ExtType(TENSOR_EXT_CODE, header + np.ascontiguousarray(arr).tobytes())


def unpack_tensor(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a tensor ExtType payload; returns a read-only view over ``data``."""
    try:
        version, dt_len = struct.unpack_from("<BB", data, 0)
        if version != _FORMAT_VERSION:
            raise WireError(f"tensor format version {version}; expected {_FORMAT_VERSION}")
        dtype_str = bytes(data[2:2 + dt_len]).decode("ascii")
        (ndim,) = struct.unpack_from("<B", data, 2 + dt_len)
        if ndim > limits.max_dims:
            raise WireError(f"tensor has {ndim} dims; at most {limits.max_dims} allowed")
        shape = struct.unpack_from(f"<{ndim}Q", data, 3 + dt_len)
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"bad tensor header: {exc}") from None
    dtype = _check_dtype(dtype_str, limits)
    offset = 3 + dt_len + 8 * ndim
    # math.prod on Python ints cannot overflow, so a forged shape cannot wrap around.
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data) - offset:
        raise WireError(
            f"tensor buffer is {len(data) - offset} bytes but shape {list(shape)} x "
            f"{dtype_str} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
