"""MovieLens 100K -> the platform dataset format, split into three platforms one of two ways.

``--split genre`` (the default, the benchmark's cross-domain federation): each movie belongs
to the platform named in ``platform_split_genre3.tsv`` (its first genre's group), so
catalogues are disjoint; users keep their MovieLens id on every platform they rated on, but
the platforms never share data.

``--split users`` (a same-domain federation: several shops selling overlapping products):
the users are partitioned by a seeded permutation (``--split-seed``, default 0) into three
shops ``shop1``..``shop3`` of sizes as equal as possible (943 users -> 315, 314, 314), and
each user's ratings go to their shop. Every shop carries the WHOLE catalogue, but under its
own item ids and user ids: a keyed hash of (seed, shop, MovieLens id), so nothing in the
data can be joined across shops by id, and items.csv is ordered by the new ids so row order
does not link them either. Titles and descriptions stay the same: they are the text the
model reads, and identical products carry identical text across real shops too.

Either way ratings stay explicit (1-5) and timestamps unchanged.

    crossfed prepare movielens --src ../shared/data/ml-100k --out DATASET/
    crossfed prepare movielens --src ../shared/data/ml-100k --out DATASET/ --split users --split-seed 0
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from common.config import ConfigError
from common.data import DatasetError, Interaction, Item, PlatformData, write_dataset
from common.files import CsvRecords, input_lines

RATINGS_FILE = "u.data"
MOVIES_FILE = "u.item"
GENRES_FILE = "u.genre"
PLATFORMS_FILE = "platform_split_genre3.tsv"
NUM_GENRES = 19

Split = Literal["genre", "users"]
SPLITS: tuple[Split, ...] = ("genre", "users")
SHOPS = ("shop1", "shop2", "shop3")
ID_DIGEST_BYTES = 6  # 12 hex digits: collisions among ~2,600 ids are ~1e-8 likely, and checked anyway


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of a source file."""
    if not path.is_file():
        raise DatasetError.at(path, "MovieLens file not found", expected="the ml-100k folder", got=str(path.parent))
    for number, line in input_lines(path, encoding=encoding, error=DatasetError):  # bounded lines, named errors
        if line.strip():
            yield number, line


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
    rows = CsvRecords(path, ("item_id", "platform"), delimiter="\t", error=DatasetError)
    return {str(_int(row["item_id"], path, line, "item_id")): row["platform"] for line, row in rows}


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


def read_genre_map(path: Path, movies: dict[str, Item]) -> dict[str, str]:
    """:func:`read_platform_map`, checked to place every movie on a platform."""
    platform_of = read_platform_map(path)
    unmapped = sorted(set(movies) - set(platform_of), key=int)
    if unmapped:
        raise DatasetError.at(
            path,
            "movies without a platform",
            field="item_id",
            expected="every movie of u.item",
            got=unmapped[:5],
        )
    return platform_of


def genre_platforms(
    platform_of: dict[str, str], movies: dict[str, Item], ratings: list[Interaction]
) -> list[PlatformData]:
    """The benchmark's genre platforms: disjoint catalogues, MovieLens ids kept."""
    platforms: dict[str, PlatformData] = {}
    for name in sorted(set(platform_of.values())):
        items = {i: movie for i, movie in movies.items() if platform_of[i] == name}
        platforms[name] = PlatformData(name, items, [], "rating")
    for row in ratings:
        platforms[platform_of[row.item_id]].interactions.append(row)
    return list(platforms.values())


def partition_users(users: Sequence[str], num_parts: int, seed: int) -> list[list[str]]:
    """A seeded partition of ``users`` into ``num_parts`` parts whose sizes differ by at most one.

    The permutation is drawn over the users in sorted order, so the result depends only on
    the set of users and the seed, not on the order they were read in. Each part is sorted.
    """
    ordered = sorted(set(users))
    order = np.random.default_rng([seed, zlib.crc32(b"movielens-user-partition")]).permutation(len(ordered))
    return [sorted(ordered[i] for i in order[part::num_parts]) for part in range(num_parts)]


def local_id(seed: int, shop: str, kind: str, source_id: str) -> str:
    """A shop's own id for a MovieLens user or item: a keyed hash, different on every shop.

    Keyed by (seed, shop) so the same movie or user gets unrelated ids on two shops; ``kind``
    (``"u"``/``"m"``) keeps user and item ids apart and prefixes the id for readability.
    """
    key = f"crossfed-movielens|{seed}|{shop}".encode()
    digest = hashlib.blake2b(f"{kind}|{source_id}".encode(), key=key, digest_size=ID_DIGEST_BYTES)
    return f"{kind}{digest.hexdigest()}"


def _local_ids(seed: int, shop: str, kind: str, source_ids: Sequence[str]) -> dict[str, str]:
    """MovieLens id -> shop id for every id in ``source_ids``; refuses a (vanishingly rare) collision."""
    mapping = {source_id: local_id(seed, shop, kind, source_id) for source_id in source_ids}
    if len(set(mapping.values())) != len(mapping):
        raise ConfigError(f"`split_seed` {seed} gives two {kind!r} ids the same hash on {shop}; pick another seed")
    return mapping


def user_shops(movies: dict[str, Item], ratings: list[Interaction], seed: int) -> list[PlatformData]:
    """Three shops of disjoint users, each with the whole catalogue under its own item and user ids."""
    parts = partition_users([row.user_id for row in ratings], len(SHOPS), seed)
    shops = []
    for shop, users in zip(SHOPS, parts, strict=True):
        item_ids = _local_ids(seed, shop, "m", list(movies))
        user_ids = _local_ids(seed, shop, "u", users)
        items = {
            item_ids[i]: Item(item_ids[i], movie.title, movie.text)
            for i, movie in sorted(movies.items(), key=lambda kv: item_ids[kv[0]])
        }
        rows = [
            Interaction(user_ids[row.user_id], item_ids[row.item_id], row.timestamp, row.value)
            for row in ratings
            if row.user_id in user_ids
        ]
        shops.append(PlatformData(shop, items, rows, "rating"))
    return shops


def convert_movielens(
    src: Path, out: Path, overwrite: bool = False, split: Split = "genre", split_seed: int = 0
) -> dict[str, PlatformData]:
    """Read ml-100k from ``src``, write three platforms under ``out`` (see the module doc), return them."""
    if split not in SPLITS:
        raise ConfigError(f"`split` must be one of {list(SPLITS)}, got {split!r}")
    if split_seed < 0:
        raise ConfigError(f"`split_seed` must be non-negative, got {split_seed}")
    genres = read_genres(src / GENRES_FILE)
    movies = read_movies(src / MOVIES_FILE, genres)
    platform_of = read_genre_map(src / PLATFORMS_FILE, movies) if split == "genre" else None
    ratings = read_ratings(src / RATINGS_FILE, movies)
    if platform_of is not None:
        platforms = genre_platforms(platform_of, movies, ratings)
    else:
        platforms = user_shops(movies, ratings, split_seed)
    write_dataset(out, platforms, overwrite=overwrite)
    return {data.name: data for data in platforms}
