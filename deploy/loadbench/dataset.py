"""The load benchmark's data: N platforms made of copies of the embedded synthetic shops.

Platform i is shop ``i % 3`` generated with seed ``seed + i // 3``, so every platform has its own
users and ratings while the whole set costs no download.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from common.data import PlatformData, write_dataset


def platform_names(n: int) -> list[str]:
    """``platform_00`` .. ``platform_{n-1}`` (zero-padded to keep the sorted order numeric)."""
    width = max(2, len(str(n - 1)))
    return [f"platform_{i:0{width}d}" for i in range(n)]


def bench_platforms(n: int, seed: int = 0) -> list[PlatformData]:
    """N platforms: platform i is synthetic shop ``i % 3`` generated with seed ``seed + i // 3``."""
    from common.synthetic import SHOPS, make_synthetic

    if n < 1:
        raise ValueError(f"need at least one platform, got {n}")
    generated: dict[int, dict[str, PlatformData]] = {}
    out = []
    for i, name in enumerate(platform_names(n)):
        copy = i // len(SHOPS)
        if copy not in generated:
            generated[copy] = make_synthetic(seed + copy)
        out.append(dataclasses.replace(generated[copy][SHOPS[i % len(SHOPS)].name], name=name))
    return out


def write_bench_dataset(root: Path, n: int, seed: int = 0) -> list[str]:
    """Write :func:`bench_platforms` as a dataset folder (replacing ``root``); returns the names."""
    platforms = bench_platforms(n, seed)
    write_dataset(root, platforms, overwrite=True)
    return [p.name for p in platforms]
