"""Canonical byte encoding of a flat record: the client state at rest and the wire size of a message.

A record maps ``str`` keys, in order, to ``int | float | str | bytes | list[int] | list[bytes] |
list[str] | np.ndarray`` (the value types of protocol messages). ``unpack_record`` reads back
exactly what ``pack_record`` wrote and raises only ``ProtocolError`` on any other input.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.secagg.errors import ProtocolError

ARRAY_DTYPES = ("<u4", "<u8", "<i8", "<f4", "<f8")

_MAGIC = b"CFSA\x01"


def pack_record(record: Mapping[str, Any]) -> bytes:
    """Encode a flat record (same value types as messages) to bytes, in key order."""
    out = [_MAGIC, struct.pack(">I", len(record))]
    for key, value in record.items():
        kb = key.encode()
        out.append(struct.pack(">H", len(kb)) + kb)
        out.append(_pack_value(key, value))
    return b"".join(out)


def record_nbytes(record: Mapping[str, Any]) -> int:
    """``len(pack_record(record))`` without copying arrays (wire-size estimate)."""
    total = len(_MAGIC) + 4
    for key, value in record.items():
        total += 2 + len(key.encode())
        if isinstance(value, np.ndarray):
            total += 1 + 1 + len(value.dtype.str) + 1 + 8 * value.ndim + value.nbytes
        else:
            total += len(_pack_value(key, value))
    return total


def _pack_int(v: int) -> bytes:
    raw = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
    return struct.pack(">B", len(raw)) + raw


def _pack_value(key: str, value: Any) -> bytes:
    if isinstance(value, bool):
        raise ProtocolError(f"`{key}`: bool values are not supported")
    if isinstance(value, int):
        return b"i" + _pack_int(value)
    if isinstance(value, float):
        return b"f" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return b"s" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, bytes):
        return b"b" + struct.pack(">I", len(value)) + value
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        dt = arr.dtype.str
        if dt not in ARRAY_DTYPES:
            raise ProtocolError(f"`{key}`: array dtype {dt} is not supported")
        head = b"a" + struct.pack(">B", len(dt)) + dt.encode() + struct.pack(">B", arr.ndim)
        return head + b"".join(struct.pack(">Q", d) for d in arr.shape) + arr.tobytes()
    if isinstance(value, (list, tuple)):
        items = list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return b"I" + struct.pack(">I", len(items)) + b"".join(_pack_int(v) for v in items)
        if all(isinstance(v, bytes) for v in items):
            return b"B" + struct.pack(">I", len(items)) + b"".join(struct.pack(">I", len(v)) + v for v in items)
        if all(isinstance(v, str) for v in items):
            raws = [v.encode() for v in items]
            return b"S" + struct.pack(">I", len(raws)) + b"".join(struct.pack(">I", len(v)) + v for v in raws)
    raise ProtocolError(f"`{key}`: unsupported value type {type(value).__name__}")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("record is truncated")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def int_(self) -> int:
        return int.from_bytes(self.take(self.u8()), "big", signed=True)

    def count(self) -> int:
        n = self.u32()
        if n > len(self.data) - self.pos:  # every item takes at least one byte
            raise ProtocolError("record list length exceeds the data")
        return n


def unpack_record(data: bytes) -> dict[str, Any]:
    """Inverse of ``pack_record``; ProtocolError on any malformed input."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"record must be bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    if r.take(len(_MAGIC)) != _MAGIC:
        raise ProtocolError("not a secagg record (bad magic)")
    out: dict[str, Any] = {}
    for _ in range(r.count()):
        try:
            key = r.take(int(struct.unpack(">H", r.take(2))[0])).decode()
        except UnicodeDecodeError:
            raise ProtocolError("record key is not UTF-8") from None
        if key in out:
            raise ProtocolError(f"record has duplicate key {key!r}")
        out[key] = _unpack_value(r)
    if r.pos != len(r.data):
        raise ProtocolError("record has trailing bytes")
    return out


def _unpack_value(r: _Reader) -> Any:
    tag = r.take(1)
    if tag == b"i":
        return r.int_()
    if tag == b"f":
        return float(struct.unpack(">d", r.take(8))[0])
    if tag == b"s":
        try:
            return r.take(r.u32()).decode()
        except UnicodeDecodeError:
            raise ProtocolError("record string is not UTF-8") from None
    if tag == b"b":
        return r.take(r.u32())
    if tag == b"I":
        return [r.int_() for _ in range(r.count())]
    if tag == b"B":
        return [r.take(r.u32()) for _ in range(r.count())]
    if tag == b"S":
        try:
            return [r.take(r.u32()).decode() for _ in range(r.count())]
        except UnicodeDecodeError:
            raise ProtocolError("record string is not UTF-8") from None
    if tag == b"a":
        try:
            dt = r.take(r.u8()).decode()
        except UnicodeDecodeError:
            raise ProtocolError("record array dtype is not ASCII") from None
        if dt not in ARRAY_DTYPES:
            raise ProtocolError(f"record array dtype {dt!r} is not supported")
        shape = tuple(int(struct.unpack(">Q", r.take(8))[0]) for _ in range(r.u8()))
        nbytes = math.prod(shape) * np.dtype(dt).itemsize
        return np.frombuffer(r.take(nbytes), dtype=dt).reshape(shape).copy()
    raise ProtocolError(f"record has unknown value tag {tag!r}")
