from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from common.config import ConfigError
from common.data import DatasetError, PlatformData, load_dataset
from simulations.cli import build_parser
from simulations.datasets.movielens import SHOPS, convert_movielens, partition_users

EXPECTED_ITEMS = {"P1_action_scifi": 443, "P2_comedy_family": 549, "P3_drama_other": 690}
GENRES = ["unknown", "Action", *(f"G{n}" for n in range(2, 19))]
FAKE_MOVIES = 6  # 1-3 on P1, 4-6 on P2
FAKE_USERS = 12  # 4 per shop: every shop keeps the 2 users the loader requires


@pytest.fixture(scope="module")
def ml100k(shared_data: Path) -> Path:
    path = shared_data / "ml-100k"
    if not path.is_dir():
        pytest.skip(f"MovieLens 100K not found at {path}")
    return path


@pytest.fixture(scope="module")
def ml_genre(ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, PlatformData]]:
    """The default conversion of the real data, done once: two tests read it."""
    out = tmp_path_factory.mktemp("ml-genre")
    return out, convert_movielens(ml100k, out)


@pytest.fixture
def fake_ml(tmp_path: Path) -> Path:
    """A miniature ml-100k folder in the original formats: 6 movies, 12 users, 3 ratings each."""
    src = tmp_path / "fake-ml"
    src.mkdir()
    (src / "u.genre").write_text("".join(f"{name}|{i}\n" for i, name in enumerate(GENRES)), encoding="latin-1")
    flags = "|".join(["0", "1", *["0"] * 17])
    (src / "u.item").write_text(
        "".join(f"{m}|Movie {m} (199{m})|01-Jan-199{m}||http://x|{flags}\n" for m in range(1, FAKE_MOVIES + 1)),
        encoding="latin-1",
    )
    (src / "platform_split_genre3.tsv").write_text(
        "item_id\tplatform\n" + "".join(f"{m}\t{'P1' if m <= 3 else 'P2'}\n" for m in range(1, FAKE_MOVIES + 1))
    )
    rows = [
        f"{u}\t{(u + k) % FAKE_MOVIES + 1}\t{(u + k) % 5 + 1}\t{1000 * u + k}\n"
        for u in range(1, FAKE_USERS + 1)
        for k in range(3)
    ]
    (src / "u.data").write_text("".join(rows), encoding="latin-1")
    return src


def _ratings_by_title(platforms: dict[str, PlatformData]) -> Counter[tuple[str, float, float | None]]:
    """(title, timestamp, rating) of every interaction: what must survive any renaming of ids."""
    return Counter(
        (p.items[row.item_id].title, row.timestamp, row.value) for p in platforms.values() for row in p.interactions
    )


def _disjoint(sets: list[set[str]]) -> bool:
    return sum(len(x) for x in sets) == len(set().union(*sets))


def test_convert_movielens(ml_genre: tuple[Path, dict[str, PlatformData]]) -> None:
    # Execute
    out, converted = ml_genre
    loaded = load_dataset(out)

    # Assert
    assert {name: len(p.items) for name, p in converted.items()} == EXPECTED_ITEMS
    assert sum(len(p.interactions) for p in converted.values()) == 100_000
    assert loaded == converted
    assert all(p.feedback == "rating" for p in loaded.values())
    assert loaded["P2_comedy_family"].items["1"].title == "Toy Story (1995)"
    assert loaded["P2_comedy_family"].items["1"].text == "Genres: Animation, Children's, Comedy. Released 1995."


def test_convert_movielens_users_split(
    ml100k: Path, ml_genre: tuple[Path, dict[str, PlatformData]], tmp_path: Path
) -> None:
    # Execute
    converted = convert_movielens(ml100k, tmp_path / "ml", split="users")
    loaded = load_dataset(tmp_path / "ml")

    # Assert
    assert loaded == converted
    assert list(converted) == list(SHOPS)
    assert sorted(p.num_users for p in converted.values()) == [314, 314, 315]
    assert all(len(p.items) == 1682 for p in converted.values())
    titles = [sorted(item.title for item in p.items.values()) for p in converted.values()]
    assert titles[0] == titles[1] == titles[2]
    assert _ratings_by_title(converted) == _ratings_by_title(ml_genre[1])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_partition_users_deterministic_disjoint_and_covering(seed: int) -> None:
    # Prepare
    users = [str(n) for n in range(1, 11)]

    # Execute
    parts = partition_users(users, 3, seed)

    # Assert
    assert parts == partition_users(list(reversed(users)), 3, seed)  # read order does not matter
    assert sorted(len(part) for part in parts) == [3, 3, 4]
    assert sorted(u for part in parts for u in part) == sorted(users)


def test_partition_users_depends_on_seed() -> None:
    # Prepare
    users = [str(n) for n in range(100)]

    # Execute / Assert
    assert partition_users(users, 3, 0) != partition_users(users, 3, 1)


def test_users_split_shops(fake_ml: Path, tmp_path: Path) -> None:
    # Execute
    shops = convert_movielens(fake_ml, tmp_path / "out", split="users", split_seed=3)

    # Assert: whole catalogue everywhere, same titles, no id shared between shops
    assert list(shops) == list(SHOPS)
    assert load_dataset(tmp_path / "out") == shops
    for shop in shops.values():
        assert sorted(item.title for item in shop.items.values()) == [f"Movie {m} (199{m})" for m in range(1, 7)]
        assert shop.feedback == "rating"
    assert _disjoint([set(s.items) for s in shops.values()])
    assert _disjoint([{row.user_id for row in s.interactions} for s in shops.values()])
    assert sorted(s.num_users for s in shops.values()) == [4, 4, 4]
    assert _ratings_by_title(shops) == _ratings_by_title(convert_movielens(fake_ml, tmp_path / "genre"))


def test_users_split_seed_changes_partition(fake_ml: Path, tmp_path: Path) -> None:
    # Execute
    def timestamps(seed: int, out: str) -> list[set[float]]:
        shops = convert_movielens(fake_ml, tmp_path / out, split="users", split_seed=seed)
        return [{row.timestamp for row in s.interactions} for s in shops.values()]

    # Assert: timestamps identify the MovieLens user (1000 * user + k), so they reveal the partition
    first = timestamps(0, "a")
    assert first == timestamps(0, "b")
    assert first != timestamps(1, "c")


def test_users_split_needs_no_genre_map(fake_ml: Path, tmp_path: Path) -> None:
    # Prepare
    (fake_ml / "platform_split_genre3.tsv").unlink()

    # Execute / Assert
    assert list(convert_movielens(fake_ml, tmp_path / "out", split="users")) == list(SHOPS)
    with pytest.raises(DatasetError, match="platform_split_genre3.tsv: MovieLens file not found"):
        convert_movielens(fake_ml, tmp_path / "out2")


def test_default_split_is_genre(fake_ml: Path, tmp_path: Path) -> None:
    # Execute
    platforms = convert_movielens(fake_ml, tmp_path / "out")

    # Assert: disjoint catalogues under the MovieLens ids
    assert {name: sorted(p.items) for name, p in platforms.items()} == {"P1": ["1", "2", "3"], "P2": ["4", "5", "6"]}
    assert {row.user_id for p in platforms.values() for row in p.interactions} == {str(u) for u in range(1, 13)}


@pytest.mark.parametrize(("kwargs", "field"), [({"split": "items"}, "split"), ({"split_seed": -1}, "split_seed")])
def test_bad_split_arguments(fake_ml: Path, tmp_path: Path, kwargs: dict[str, object], field: str) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match=f"`{field}`"):
        convert_movielens(fake_ml, tmp_path / "out", **kwargs)  # type: ignore[arg-type]


def test_cli_prepare_users_split(fake_ml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = tmp_path / "out"
    args = build_parser().parse_args(
        ["prepare", "movielens", "--src", str(fake_ml), "--out", str(out), "--split", "users", "--split-seed", "2"]
    )

    # Execute
    code = args.func(args)

    # Assert
    assert code == 0
    assert sorted(load_dataset(out)) == sorted(SHOPS)
    assert "wrote 3 platforms" in capsys.readouterr().out


def test_cli_prepare_defaults_to_genre() -> None:
    # Execute
    args = build_parser().parse_args(["prepare", "movielens", "--src", "x", "--out", "y"])

    # Assert
    assert (args.split, args.split_seed) == ("genre", 0)


def test_missing_source_files(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DatasetError, match=f"{tmp_path / 'u.genre'}: MovieLens file not found"):
        convert_movielens(tmp_path, tmp_path / "out")
