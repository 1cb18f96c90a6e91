from __future__ import annotations

from pathlib import Path

import pytest

from common.data import DatasetError, load_dataset
from simulations.movielens import convert_movielens

EXPECTED_ITEMS = {"P1_action_scifi": 443, "P2_comedy_family": 549, "P3_drama_other": 690}


@pytest.fixture(scope="module")
def ml100k(shared_data: Path) -> Path:
    path = shared_data / "ml-100k"
    if not path.is_dir():
        pytest.skip(f"MovieLens 100K not found at {path}")
    return path


def test_convert_movielens(ml100k: Path, tmp_path: Path) -> None:
    # Execute
    converted = convert_movielens(ml100k, tmp_path / "ml")
    loaded = load_dataset(tmp_path / "ml")

    # Assert
    assert {name: len(p.items) for name, p in converted.items()} == EXPECTED_ITEMS
    assert sum(len(p.interactions) for p in converted.values()) == 100_000
    assert loaded == converted
    assert all(p.feedback == "rating" for p in loaded.values())
    assert loaded["P2_comedy_family"].items["1"].title == "Toy Story (1995)"
    assert loaded["P2_comedy_family"].items["1"].text == "Genres: Animation, Children's, Comedy. Released 1995."


def test_missing_source_files(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DatasetError, match=f"{tmp_path / 'u.genre'}: MovieLens file not found"):
        convert_movielens(tmp_path, tmp_path / "out")
