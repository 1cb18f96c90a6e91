"""A small, deterministic cross-platform dataset whose signal can be learned from text alone.

Three shops of unequal size sell disjoint catalogues of "<Colour> <Material> <Category>"
items (categories differ per shop). Users are distinct ids per shop, but their tastes are
drawn from one shared pool of colour/material preferences, so what one shop learns ("likes
red, dislikes denim") transfers to the others: the point of federating them. Ratings (1-5)
come from taste . item attributes + noise, so a user who liked red items likes other red
items. The default train split is about 2,900 examples: small enough for CPU tests.

    crossfed prepare synthetic --out DATASET/ [--seed 0]   (writes it in the dataset format)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data import Interaction, Item, PlatformData, write_dataset

COLOURS = ("Red", "Blue", "Green", "Black", "White", "Yellow")
MATERIALS = ("Wool", "Cotton", "Leather", "Silk", "Denim")
RATING_CUTS = (-1.0, -0.35, 0.35, 1.0)  # score -> rating 1..5; about 40% of ratings are 4 or 5
START_TIME = 1_600_000_000  # unix seconds, September 2020
DAY = 86_400


@dataclass(frozen=True)
class ShopSpec:
    name: str
    users: int
    items: int  # at most len(COLOURS) * len(MATERIALS) * len(categories)
    categories: tuple[str, ...]


SHOPS = (
    ShopSpec("app", 100, 90, ("Scarf", "Hat", "Gloves", "Sweater")),
    ShopSpec("web_shop", 50, 75, ("Bag", "Wallet", "Belt", "Jacket")),
    ShopSpec("social_shop", 25, 60, ("Dress", "Shirt", "Skirt", "Coat")),
)


@dataclass(frozen=True)
class SyntheticSpec:
    shops: tuple[ShopSpec, ...] = SHOPS
    tastes: int = 20  # shared pool of colour/material tastes
    min_interactions: int = 15
    max_interactions: int = 22
    taste_noise: float = 0.25  # personal deviation from the pooled taste
    rating_noise: float = 0.5


def _catalogue(shop: ShopSpec, rng: np.random.Generator) -> tuple[dict[str, Item], np.ndarray]:
    """Items and their (colour, material, category) indices, shape (I, 3)."""
    combos = np.array(
        [(c, m, k) for c in range(len(COLOURS)) for m in range(len(MATERIALS)) for k in range(len(shop.categories))]
    )
    attrs = combos[rng.choice(len(combos), size=shop.items, replace=False)]  # (I, 3)
    items = {}
    for i, (c, m, k) in enumerate(attrs):
        item_id = f"{shop.name}-{i:03d}"
        items[item_id] = Item(item_id, f"{COLOURS[c]} {MATERIALS[m]} {shop.categories[k]}")
    return items, attrs


def _shop(
    shop: ShopSpec, pool: tuple[np.ndarray, np.ndarray], spec: SyntheticSpec, rng: np.random.Generator
) -> PlatformData:
    items, attrs = _catalogue(shop, rng)
    ids = list(items)
    colour_pool, material_pool = pool
    rows: list[Interaction] = []
    for u in range(shop.users):
        taste = rng.integers(len(colour_pool))
        colour_w = colour_pool[taste] + rng.normal(0.0, spec.taste_noise, len(COLOURS))
        material_w = material_pool[taste] + rng.normal(0.0, spec.taste_noise, len(MATERIALS))
        category_w = rng.normal(0.0, 0.4, len(shop.categories))  # shop-specific, not shared
        count = int(rng.integers(spec.min_interactions, spec.max_interactions + 1))
        picks = rng.choice(len(ids), size=count, replace=False)
        c, m, k = attrs[picks].T
        scores = colour_w[c] + material_w[m] + category_w[k] + rng.normal(0.0, spec.rating_noise, count)
        ratings = 1 + np.digitize(scores, RATING_CUTS)
        times = START_TIME + rng.integers(0, 30 * DAY) + np.cumsum(rng.integers(60, 3 * DAY, count))
        user = f"u{u:03d}"
        rows += [Interaction(user, ids[i], float(t), float(r)) for i, t, r in zip(picks, times, ratings, strict=True)]
    return PlatformData(shop.name, items, rows, "rating")


def make_synthetic(seed: int = 0, spec: SyntheticSpec | None = None) -> dict[str, PlatformData]:
    """The dataset in memory, identical for identical ``seed`` and ``spec``."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(seed)
    pool = (rng.normal(0.0, 1.0, (spec.tastes, len(COLOURS))), rng.normal(0.0, 0.7, (spec.tastes, len(MATERIALS))))
    return {shop.name: _shop(shop, pool, spec, rng) for shop in spec.shops}


def write_synthetic(out: Path, seed: int = 0, overwrite: bool = False) -> dict[str, PlatformData]:
    """Write :func:`make_synthetic` in the dataset format under ``out`` and return it."""
    data = make_synthetic(seed)
    write_dataset(out, data.values(), overwrite=overwrite)
    return data
