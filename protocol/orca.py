"""ORCA load reports (``xds.data.orca.v3.OrcaLoadReport``) without protoc.

The message is small and stable, so it is written and read by hand with the
protobuf wire format (varints, fixed64 doubles, length-delimited map
entries). Field numbers, from xds/data/orca/v3/orca_load_report.proto::

    double cpu_utilization = 1;          double mem_utilization = 2;
    uint64 rps = 3 [deprecated];         map<string,double> request_cost = 4;
    map<string,double> utilization = 5; double rps_fractional = 6;
    double eps = 7;                      map<string,double> named_metrics = 8;
    double application_utilization = 9;

A map entry is a nested message {string key = 1; double value = 2}.
Unknown fields are skipped on decode, as protobuf requires.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_DOUBLE_FIELDS = {1: "cpu_utilization", 2: "mem_utilization", 6: "rps_fractional", 7: "eps",
                  9: "application_utilization"}
_MAP_FIELDS = {4: "request_cost", 5: "utilization", 8: "named_metrics"}


@dataclass(frozen=True, kw_only=True)
class LoadReport:
    """The ORCA fields we read and write; our own figures live in ``named_metrics``."""

    cpu_utilization: float = 0.0
    mem_utilization: float = 0.0
    rps_fractional: float = 0.0
    eps: float = 0.0
    application_utilization: float = 0.0
    request_cost: dict[str, float] = field(default_factory=dict)
    utilization: dict[str, float] = field(default_factory=dict)
    named_metrics: dict[str, float] = field(default_factory=dict)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint in load report")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _double(num: int, value: float) -> bytes:
    return _varint(num << 3 | 1) + struct.pack("<d", value)


def _len_delimited(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_load_report(report: LoadReport) -> bytes:
    """Serialise ``report``; zero doubles are omitted as proto3 does."""
    out = bytearray()
    for num, name in sorted(_DOUBLE_FIELDS.items()):
        value = float(getattr(report, name))
        if value != 0.0:
            out += _double(num, value)
    for num, name in sorted(_MAP_FIELDS.items()):
        for key, value in getattr(report, name).items():
            entry = _len_delimited(1, key.encode("utf-8")) + _double(2, float(value))
            out += _len_delimited(num, entry)
    return bytes(out)


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64 in load report")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field in load report")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire} in load report")
        yield num, wire, value


def decode_load_report(data: bytes) -> LoadReport:
    """Parse an OrcaLoadReport; raises ``ValueError`` on malformed bytes."""
    doubles: dict[str, float] = {}
    maps: dict[str, dict[str, float]] = {name: {} for name in _MAP_FIELDS.values()}
    for num, wire, value in _fields(bytes(data)):
        if num in _DOUBLE_FIELDS and wire == 1:
            doubles[_DOUBLE_FIELDS[num]] = struct.unpack("<d", value)[0]
        elif num in _MAP_FIELDS and wire == 2:
            key, val = "", 0.0
            for enum, ewire, evalue in _fields(value):
                if enum == 1 and ewire == 2:
                    key = bytes(evalue).decode("utf-8")
                elif enum == 2 and ewire == 1:
                    val = struct.unpack("<d", evalue)[0]
            maps[_MAP_FIELDS[num]][key] = val
    return LoadReport(**doubles, **maps)
