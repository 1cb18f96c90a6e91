"""Tensor layout: which named tensors, in which order and shape, lie behind one flat vector.

One idea with several users: the adapter payload (``common.payload``: every tensor in one float32
Flower Array plus this layout as JSON, because each Array costs HTTP calls on every hop), secure
aggregation (``common.secagg.quantize.Manifest``: the layout of the masked vector, bound into every
round by its digest) and the server turning a fused vector back into an adapter. Flattening is
always in layout order, each tensor raveled in C order; unflattening returns views into the vector.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np


class LayoutError(ValueError):
    """Tensors or a flat vector that do not match their layout (missing name, wrong shape or length)."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the layout: name, shape and float dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class TensorLayout:
    """Ordered tensor specs; ``size`` is the length of the flat vector they make."""

    def __init__(self, specs: Iterable[TensorSpec]) -> None:
        self.specs = tuple(specs)
        self.size = sum(s.size for s in self.specs)

    @classmethod
    def from_arrays(cls, tensors: Mapping[str, Any]) -> Self:
        """The layout of ``tensors`` in their iteration order."""
        return cls(
            [TensorSpec(k, tuple(int(d) for d in np.shape(v)), str(np.asarray(v).dtype)) for k, v in tensors.items()]
        )

    @classmethod
    def flat(cls, length: int, dtype: str = "float32", name: str = "vector") -> Self:
        """A single flat tensor of ``length`` values."""
        return cls([TensorSpec(name, (length,), dtype)])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def raveled(self, tensors: Mapping[str, Any]) -> list[np.ndarray]:
        """Each tensor as a 1-D array (a view where it can be), in layout order."""
        out = []
        for s in self.specs:
            if s.name not in tensors:
                raise LayoutError(f"tensor `{s.name}` of the layout is missing")
            value = np.asarray(tensors[s.name])
            if value.shape != s.shape:
                raise LayoutError(f"tensor `{s.name}` has shape {value.shape}, the layout says {s.shape}")
            out.append(value.reshape(-1))
        return out

    def flatten(self, tensors: Mapping[str, Any], dtype: Any = np.float32) -> np.ndarray:
        """Every tensor, raveled and cast to ``dtype``, concatenated in layout order: shape (size,)."""
        parts = [np.asarray(v, dtype=dtype) for v in self.raveled(tensors)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector into named tensors (views into ``vector``, in layout order)."""
        if vector.shape != (self.size,):
            raise LayoutError(f"expected a flat vector of {self.size} values, got {vector.shape}")
        out, pos = {}, 0
        for s in self.specs:
            out[s.name] = vector[pos : pos + s.size].reshape(s.shape)
            pos += s.size
        return out

    def to_json(self) -> bytes:
        """The names and shapes as JSON ``[[name, shape], ...]`` (dtypes are not written)."""
        return json.dumps([[s.name, list(s.shape)] for s in self.specs]).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        """Inverse of ``to_json`` (every dtype float32); ValueError or TypeError when ``data`` is not such
        JSON, names a tensor twice or gives a negative dimension (it comes from another party)."""
        manifest = json.loads(data.decode())
        names = [str(name) for name, _ in manifest]
        shapes = [tuple(int(d) for d in shape) for _, shape in manifest]
        if len(set(names)) != len(names):
            raise LayoutError(f"tensor `{next(n for n in names if names.count(n) > 1)}` is listed twice")
        if any(d < 0 for shape in shapes for d in shape):
            raise LayoutError(f"negative dimension in {next(s for s in shapes if min(s, default=0) < 0)}")
        return cls(TensorSpec(name, shape) for name, shape in zip(names, shapes, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorLayout) and self.specs == other.specs

    def __hash__(self) -> int:
        return hash(self.specs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.specs)} tensors, {self.size} values)"
