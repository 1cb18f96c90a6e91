"""Field kinds of protocol messages and client state: each checks one value at parse time.

A kind's ``check(key, value)`` returns the value in its canonical Python type or raises
``ProtocolError`` naming the key, so a parser never lets a ``KeyError``/``ValueError`` or an
out-of-range value through (a Shamir share >= p is refused here, not later in maths).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.secagg.errors import ProtocolError
from common.secagg.shamir import PRIME, SHARE_BYTES

U64_MAX = (1 << 64) - 1
I63_MAX = (1 << 63) - 1
MAX_LIST = 1 << 16  # no list in any message is longer (cohorts are far smaller)
MAX_STR = 256  # platform names and other strings


class Kind:
    def check(self, key: str, value: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class Int(Kind):
    def __init__(self, lo: int = 0, hi: int = I63_MAX) -> None:
        self.lo, self.hi = lo, hi

    def check(self, key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"`{key}` must be int, got {type(value).__name__}")
        if not self.lo <= value <= self.hi:
            raise ProtocolError(f"`{key}` must be in [{self.lo}, {self.hi}], got {value}")
        return int(value)


class Float(Kind):
    def check(self, key: str, value: Any) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ProtocolError(f"`{key}` must be float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ProtocolError(f"`{key}` must be finite")
        return float(value)


class Str(Kind):
    def __init__(self, max_len: int = MAX_STR) -> None:
        self.max_len = max_len

    def check(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError(f"`{key}` must be str, got {type(value).__name__}")
        if len(value) > self.max_len:
            raise ProtocolError(f"`{key}` is longer than {self.max_len} characters")
        return value


class Bytes(Kind):
    def __init__(self, *lengths: int, lo: int | None = None, hi: int | None = None) -> None:
        self.lengths, self.lo, self.hi = lengths, lo, hi

    def check(self, key: str, value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise ProtocolError(f"`{key}` must be bytes, got {type(value).__name__}")
        n = len(value)
        if self.lengths and n not in self.lengths:
            raise ProtocolError(f"`{key}` must be {' or '.join(map(str, self.lengths))} bytes, got {n}")
        if self.lo is not None and self.hi is not None and not self.lo <= n <= self.hi:
            raise ProtocolError(f"`{key}` must be {self.lo}..{self.hi} bytes, got {n}")
        return value


class List(Kind):
    def __init__(self, item: Kind, unique: bool = False) -> None:
        self.item, self.unique = item, unique

    def check(self, key: str, value: Any) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(f"`{key}` must be a list, got {type(value).__name__}")
        if len(value) > MAX_LIST:
            raise ProtocolError(f"`{key}` has more than {MAX_LIST} items")
        out = [self.item.check(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if self.unique and len(set(out)) != len(out):
            raise ProtocolError(f"`{key}` has duplicate entries")
        return out


class Array(Kind):
    def check(self, key: str, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise ProtocolError(f"`{key}` must be a numpy array, got {type(value).__name__}")
        if value.dtype not in (np.uint32, np.uint64) or value.ndim != 1:
            raise ProtocolError(f"`{key}` must be a 1-D uint32/uint64 array, got {value.dtype} {value.shape}")
        return value


class Share(Bytes):
    """A Shamir share: SHARE_BYTES big-endian bytes of a field element, strictly below p."""

    def __init__(self) -> None:
        super().__init__(SHARE_BYTES)

    def check(self, key: str, value: Any) -> bytes:
        raw = super().check(key, value)
        if int.from_bytes(raw, "big") >= PRIME:
            raise ProtocolError(f"`{key}` is not a field element (share >= p)")
        return raw


NODE = Int(0, U64_MAX)
NODES = List(NODE, unique=True)
SHARE = Share()
