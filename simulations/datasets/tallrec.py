"""The TALLRec movie split (Bao et al., RecSys 2023) read into examples, for ``crossfed tallrec``
(:mod:`simulations.compare.tallrec`, which trains and scores on them).

The published split holds 1,000 valid and 1,000 test *prompts* (``valid.json``/``test.json``)
and the same split by ids (``movielens_{train,valid,test}.csv``). We rebuild the 8,000 train
examples from the ids: ``history_movie_id`` (10 movies, oldest first), ``history_rating``
(one 0/1 flag per history movie: 1 = liked, i.e. a MovieLens rating > 3; checked against the
prompts, see :func:`check_rows_against_prompts`), the target ``movie_id`` and its 0/1 ``rating``,
with titles from ``ml-100k/u.item``. Valid and test examples are parsed from the prompts
themselves (``User Preference: "..."`` = liked titles, ``User Unpreference: "..."`` = disliked,
the target title, label from ``output`` ``"Yes."``/``"No."``), so the test set is exactly the
published one.

Items are keyed by title (the prompts carry titles only); histories are turned most recent first, as on
platforms (:func:`to_example`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.data import DatasetError, Item
from common.files import CsvRecords, input_lines, read_json
from common.splits import Example

PROMPT = re.compile(
    r'User Preference: (?P<liked>.*)\nUser Unpreference: (?P<disliked>.*)\n'
    r'Whether the user will like the target movie "(?P<target>.*)"\?\s*$',
    re.S,
)  # fmt: skip


ROW_COLUMNS = ("user_id", "history_movie_id", "history_rating", "movie_id", "rating")


@dataclass(frozen=True)
class Row:
    """One movielens_*.csv row: history ids (oldest first), their liked flags, target id, label."""

    user_id: str
    history: tuple[str, ...]
    history_liked: tuple[int, ...]
    movie_id: str
    label: int


def read_titles(ml100k: Path) -> dict[str, str]:
    """``u.item`` (latin-1): movie id -> title."""
    path = ml100k / "u.item"
    if not path.is_file():
        raise DatasetError.at(path, "MovieLens file not found", expected="the ml-100k folder", got=str(ml100k))
    titles = {}
    for number, line in input_lines(path, encoding="latin-1", error=DatasetError):
        if line.strip():
            fields = line.split("|")
            if len(fields) < 2:
                raise DatasetError.at(path, "no title", line=number, field="title", expected="id|title|...", got=line)
            titles[fields[0]] = fields[1].strip()
    return titles


def read_rows(path: Path) -> list[Row]:
    """A movielens_*.csv file; ``history_rating`` must be 0/1 flags (1 = liked = rating > 3)."""
    if not path.is_file():
        raise DatasetError.at(path, "TALLRec file not found", expected="the tallrec-movie folder", got=str(path.parent))
    rows = []
    for line, rec in CsvRecords(path, ROW_COLUMNS, error=DatasetError):
        history = tuple(str(x) for x in _list(rec, "history_movie_id", path, line))
        flags = tuple(_list(rec, "history_rating", path, line))
        if len(flags) != len(history) or not all(f in (0, 1) for f in flags) or rec["rating"] not in ("0", "1"):
            raise DatasetError.at(path, "history_rating/rating are not 0/1 flags matching the history",
                                  line=line, field="history_rating", expected="0/1 per history movie",
                                  got=rec["history_rating"])  # fmt: skip
        rows.append(Row(rec["user_id"], history, flags, str(rec["movie_id"]), int(rec["rating"])))
    return rows


def _list(rec: dict[str, str], field: str, path: Path, line: int) -> list:
    """A field holding a Python list literal (``[1, 2]``), read without evaluating anything else."""
    try:
        value = ast.literal_eval(rec[field])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, list):
        raise DatasetError.at(path, "not a list", line=line, field=field, expected="a list such as [1, 2]",
                              got=rec[field])  # fmt: skip
    return value


def _titles(raw: str) -> tuple[str, ...]:
    raw = raw.strip()
    return tuple(raw[1:-1].split('", "')) if raw else ()


def parse_prompt(record: dict[str, str], where: str = "prompt") -> tuple[tuple[str, ...], tuple[str, ...], str, int]:
    """(liked titles, disliked titles, target title, label), history in prompt order (oldest first)."""
    text, output = record.get("input", ""), record.get("output", "")
    match = PROMPT.match(text) if isinstance(text, str) else None
    output = output.strip() if isinstance(output, str) else ""
    if not match or output not in ("Yes.", "No."):
        expected = 'User Preference / User Unpreference / target lines and output "Yes." or "No."'
        raise DatasetError.at(where, "not a TALLRec movie prompt", expected=expected, got=str(text)[:80])
    return _titles(match["liked"]), _titles(match["disliked"]), match["target"], int(output == "Yes.")


def read_prompts(path: Path) -> list[tuple[tuple[str, ...], tuple[str, ...], str, int]]:
    if not path.is_file():
        raise DatasetError.at(path, "TALLRec file not found", expected="the tallrec-movie folder", got=str(path.parent))
    records = read_json(path, error=DatasetError)
    if not isinstance(records, list) or not all(isinstance(rec, dict) for rec in records):
        raise DatasetError.at(path, "not a list of prompts", expected='[{"input": ..., "output": ...}, ...]',
                              got=type(records).__name__)  # fmt: skip
    return [parse_prompt(rec, f"{path}[{i}]") for i, rec in enumerate(records)]


def row_to_prompt(row: Row, titles: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...], str, int]:
    """What the prompt of this row says, built from ids: liked = flag 1, in history order."""
    liked = tuple(titles[m] for m, f in zip(row.history, row.history_liked, strict=True) if f == 1)
    disliked = tuple(titles[m] for m, f in zip(row.history, row.history_liked, strict=True) if f == 0)
    return liked, disliked, titles[row.movie_id], row.label


def check_rows_against_prompts(rows: Sequence[Row], prompts: Sequence[tuple], titles: dict[str, str]) -> float:
    """Share of csv rows whose rebuilt prompt equals the published prompt (1.0 = the semantics hold)."""
    if len(rows) != len(prompts):
        return 0.0
    return sum(row_to_prompt(r, titles) == p for r, p in zip(rows, prompts, strict=True)) / max(1, len(rows))


def to_example(user: str, liked: Sequence[str], disliked: Sequence[str], target: str, label: int) -> Example:
    """Items are keyed by title (the prompts carry titles only); history most recent first, as on platforms."""
    return Example(user, target, label, tuple(reversed(liked)), tuple(reversed(disliked)))


def title_items(*example_sets: Sequence[Example]) -> dict[str, Item]:
    titles = {t for exs in example_sets for ex in exs for t in (ex.item_id, *ex.liked, *ex.disliked)}
    return {t: Item(t, t) for t in titles}
