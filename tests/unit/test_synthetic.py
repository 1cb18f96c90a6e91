from __future__ import annotations

from pathlib import Path

from common.data import Item, load_dataset
from common.metrics import auc
from common.splits import Example, SplitConfig, split_dataset
from common.synthetic import make_synthetic, write_synthetic


def test_deterministic() -> None:
    # Execute / Assert
    assert make_synthetic(seed=0) == make_synthetic(seed=0)
    assert make_synthetic(seed=0) != make_synthetic(seed=1)


def test_shape() -> None:
    # Execute
    data = make_synthetic()
    splits = split_dataset(data, SplitConfig(train_unseen_negatives=0))

    # Assert: unequal platforms, disjoint catalogues, small train split
    sizes = sorted(p.num_users for p in data.values())
    assert len(sizes) == 3 and len(set(sizes)) == 3
    catalogues = [set(p.items) for p in data.values()]
    assert sum(map(len, catalogues)) == len(set().union(*catalogues))
    assert sum(len(s.train) for s in splits.values()) <= 3000


def test_loads_through_validator(tmp_path: Path) -> None:
    # Execute
    written = write_synthetic(tmp_path / "syn")

    # Assert
    assert load_dataset(tmp_path / "syn") == written


def _attribute_match(ex: Example, items: dict[str, Item]) -> int:
    """Shared colour/material words with liked history minus those with disliked history."""
    words = set(items[ex.item_id].title.split()[:2])
    liked = sum(len(words & set(items[i].title.split()[:2])) for i in ex.liked)
    return liked - sum(len(words & set(items[i].title.split()[:2])) for i in ex.disliked)


def test_learnable_from_titles() -> None:
    # Prepare
    splits = split_dataset(make_synthetic(), SplitConfig(train_unseen_negatives=0))
    pairs = [(ex.label, _attribute_match(ex, s.items)) for s in splits.values() for ex in s.valid + s.test]

    # Execute
    score = auc([label for label, _ in pairs], [match for _, match in pairs])

    # Assert
    assert score > 0.6
