"""MovieLens 100K -> the platform dataset format, split into the benchmark's three genre platforms.

Each movie belongs to the platform named in ``platform_split_genre3.tsv`` (its first genre's
group), so catalogues are disjoint; users keep their MovieLens id on every platform they
rated on, but the platforms never share data. Ratings stay explicit (1-5).

    crossfed prepare movielens --src ../shared/data/ml-100k --out DATASET/
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from common.data import DatasetError, Interaction, Item, PlatformData, write_dataset

RATINGS_FILE = "u.data"
MOVIES_FILE = "u.item"
GENRES_FILE = "u.genre"
PLATFORMS_FILE = "platform_split_genre3.tsv"
NUM_GENRES = 19


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of a source file."""
    if not path.is_file():
        raise DatasetError.at(path, "MovieLens file not found", expected="the ml-100k folder", got=str(path.parent))
    with path.open(encoding=encoding, newline="") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.rstrip("\r\n")


def _fields(line: str, sep: str, count: int, path: Path, number: int) -> list[str]:
    fields = line.split(sep)
    if len(fields) != count:
        raise DatasetError.at(path, "wrong number of fields", line=number, expected=f"{count} fields", got=len(fields))
    return fields


def _int(raw: str, path: Path, number: int, field: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise DatasetError.at(
            path, "not an integer", line=number, field=field, expected="an integer", got=raw
        ) from None


def read_genres(path: Path) -> list[str]:
    """Genre names in flag order (``u.genre`` is ``name|index``)."""
    names: dict[int, str] = {}
    for number, line in _lines(path, "latin-1"):
        name, index = _fields(line, "|", 2, path, number)
        names[_int(index, path, number, "index")] = name
    if sorted(names) != list(range(NUM_GENRES)):
        raise DatasetError.at(path, "genre indices", expected=f"0..{NUM_GENRES - 1}", got=sorted(names))
    return [names[i] for i in range(NUM_GENRES)]


def movie_text(genres: list[str], release: str) -> str:
    """``Genres: Action, Sci-Fi. Released 1995.`` (the year is omitted when unknown)."""
    text = f"Genres: {', '.join(genres) or 'unknown'}."
    year = release.strip()[-4:]
    return f"{text} Released {year}." if year.isdigit() else text


def read_movies(path: Path, genre_names: list[str]) -> dict[str, Item]:
    """``u.item``: ``id|title|release|video release|url|19 genre flags``, latin-1."""
    movies: dict[str, Item] = {}
    for number, line in _lines(path, "latin-1"):
        fields = _fields(line, "|", 5 + NUM_GENRES, path, number)
        item_id = str(_int(fields[0], path, number, "item_id"))
        genres = [name for name, flag in zip(genre_names, fields[5:], strict=True) if flag == "1"]
        movies[item_id] = Item(item_id, fields[1].strip(), movie_text(genres, fields[2]))
    return movies


def read_platform_map(path: Path) -> dict[str, str]:
    """``platform_split_genre3.tsv``: item_id -> platform name."""
    if not path.is_file():
        raise DatasetError.at(path, "MovieLens file not found", expected="the ml-100k folder", got=str(path.parent))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        for column in ("item_id", "platform"):
            if column not in (reader.fieldnames or []):
                raise DatasetError.at(
                    path, "missing column", line=1, field=column, expected="item_id, platform", got=reader.fieldnames
                )
        return {str(_int(row["item_id"], path, reader.line_num, "item_id")): row["platform"] for row in reader}


def read_ratings(path: Path, movies: dict[str, Item]) -> list[Interaction]:
    """``u.data``: ``user \\t item \\t rating \\t unix time``, in file order."""
    rows = []
    for number, line in _lines(path, "latin-1"):
        user, item, rating, stamp = _fields(line, "\t", 4, path, number)
        if str(_int(item, path, number, "item")) not in movies:
            raise DatasetError.at(
                path, "unknown movie", line=number, field="item", expected="an id from u.item", got=item
            )
        rows.append(
            Interaction(
                str(_int(user, path, number, "user")),
                str(_int(item, path, number, "item")),
                float(_int(stamp, path, number, "timestamp")),
                float(_int(rating, path, number, "rating")),
            )
        )
    return rows


def convert_movielens(src: Path, out: Path, overwrite: bool = False) -> dict[str, PlatformData]:
    """Read ml-100k from ``src``, write the three genre platforms under ``out``, return them."""
    genres = read_genres(src / GENRES_FILE)
    movies = read_movies(src / MOVIES_FILE, genres)
    platform_of = read_platform_map(src / PLATFORMS_FILE)
    unmapped = sorted(set(movies) - set(platform_of), key=int)
    if unmapped:
        raise DatasetError.at(
            src / PLATFORMS_FILE,
            "movies without a platform",
            field="item_id",
            expected="every movie of u.item",
            got=unmapped[:5],
        )
    platforms: dict[str, PlatformData] = {}
    for name in sorted(set(platform_of.values())):
        items = {i: movie for i, movie in movies.items() if platform_of[i] == name}
        platforms[name] = PlatformData(name, items, [], "rating")
    for row in read_ratings(src / RATINGS_FILE, movies):
        platforms[platform_of[row.item_id]].interactions.append(row)
    write_dataset(out, platforms.values(), overwrite=overwrite)
    return platforms
