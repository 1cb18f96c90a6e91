"""Input files are data, not trust: every reader of a file the CLI takes (datasets, ``--users`` /
``--pairs``, run summaries, rosters, the public datasets' sources) either parses it or raises the
reader's one-line input error naming file, line and field; never another exception."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data import INTERACTIONS_FILE, ITEMS_FILE, DatasetError, load_platform
from common.files import MAX_FIELD_ENV, CsvRecords, InputFileError, input_lines, max_line_bytes, read_json
from common.run_files import SUMMARY_FILE, RunFileError, read_summary
from common.secagg.errors import ConfigError as SecAggConfigError
from common.secagg.identity import Roster, load_public
from simulations.commands.use import read_ids, read_pairs
from simulations.datasets import movielens, tallrec

ITEMS = "item_id,title\na,Red Scarf\nb,Blue Hat\n"
RATED = "user_id,item_id,timestamp,rating\nu1,a,100,4\nu2,b,200,2\n"
GENRES = "".join(f"g{i}|{i}\n" for i in range(movielens.NUM_GENRES))


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and len(message) < 400, message
    return message


# ------------------------------------------------------------------ the one CSV reader, case by case

# (file bytes, line, field, problem) of a `user_id,item_id` file
CSV_CASES = {
    "short row": (b"user_id,item_id\nu1,i1\nu2\n", 3, "item_id", "missing field"),
    "long row": (b"user_id,item_id\nu1,i1,extra\n", 2, "#3", "extra field"),
    "empty file": (b"", 1, None, "empty file"),
    "missing column": (b"user_id,item\nu1,i1\n", 1, "item_id", "missing column"),
    "repeated column": (b"user_id,item_id,user_id\nu1,i1,u2\n", 1, "user_id", "repeated column"),
    "latin-1, not UTF-8": (b"user_id,item_id\nu1,caf\xe9\n", 2, "item_id", "invalid UTF-8"),
    "NUL in a field": (b"user_id,item_id\nu1,a\x00b\n", None, None, None),  # Python's csv takes NUL since 3.11
    "stray carriage return": (b"user_id,item_id\nu1,a\rb\n", 2, None, "not CSV"),
}


@pytest.mark.parametrize(("raw", "line", "field", "problem"), CSV_CASES.values(), ids=CSV_CASES)
def test_csv_records_name_file_line_and_field(tmp_path: Path, raw: bytes, line: int | None, field: str | None,
                                              problem: str | None) -> None:  # fmt: skip
    # Prepare
    path = tmp_path / "pairs.csv"
    path.write_bytes(raw)
    # Execute
    try:
        rows = list(CsvRecords(path, ("user_id", "item_id")))
    except InputFileError as exc:
        message = _one_line(exc)
    else:
        assert problem is None, f"accepted {raw!r}: {rows}"
        return
    # Assert
    assert problem is not None, message
    assert message.startswith(f"{path}:{line}: " + (f"field `{field}`: " if field else "")), message
    assert problem in message


@pytest.mark.parametrize("multiline", [False, True], ids=["one huge line", "unclosed quote"])
def test_a_huge_field_is_refused_where_it_starts_without_reading_it_whole(tmp_path: Path, multiline: bool) -> None:
    # Prepare: 4 MB in one field with a 1,000-character limit: the same path as a 1 GB field with the default
    path = tmp_path / "pairs.csv"
    body = '"' + "x\n" * 2_000_000 if multiline else "x" * 4_000_000
    path.write_text(f"user_id,item_id\nu1,i1\nu2,{body}\nu3,i3\n", encoding="utf-8")
    # Execute
    with mock.patch.dict(os.environ, {MAX_FIELD_ENV: "1000"}), pytest.raises(InputFileError) as info:
        list(CsvRecords(path, ("user_id", "item_id")))
    # Assert
    message = _one_line(info.value)
    assert message.startswith(f"{path}:3: field `item_id`: field too long"), message
    assert "at most 1000 characters" in message
    assert max_line_bytes(1000) < 4_000_000  # the single line was cut off, not read


def test_max_field_env_must_be_a_positive_integer(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text("a\n1\n")
    with mock.patch.dict(os.environ, {MAX_FIELD_ENV: "lots"}), pytest.raises(InputFileError, match=MAX_FIELD_ENV):
        CsvRecords(tmp_path / "f.csv")


def test_a_bom_and_crlf_are_read_as_plain_utf8(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_bytes(b"\xef\xbb\xbfuser_id,item_id\r\nu1,caf\xc3\xa9\r\n")
    assert read_pairs(tmp_path / "p.csv") == [("u1", "café")]


# ------------------------------------------------------------------ --users and --pairs

ID_CASES = {
    "one per line": (b"u1\n\nu2\n", ["u1", "u2"], None),
    "header line": (b"user_id\nu1\n", ["u1"], None),
    "CSV column": (b"name,user_id\nx,u1\ny,u2\n", ["u1", "u2"], None),
    "CSV short row": (b"name,user_id\nx\n", None, ":2: field `user_id`: missing field"),
    "CSV empty id": (b"name,user_id\nx, \n", None, ":2: field `user_id`: empty value"),
    "CSV without the column": (b"name,id\nx,u1\n", None, ":1: field `user_id`: missing column"),
    "empty file": (b"", None, ":1: empty file"),
    "blank lines only": (b"\n \n", None, ":1: empty file"),
    "header only": (b"user_id\n", None, ":1: field `user_id`: no ids"),
    "not UTF-8": (b"u1\n\xff\xfe\n", None, ":2: field `user_id`: invalid UTF-8"),
}


@pytest.mark.parametrize(("raw", "ids", "error"), ID_CASES.values(), ids=ID_CASES)
def test_read_ids(tmp_path: Path, raw: bytes, ids: list[str] | None, error: str | None) -> None:
    path = tmp_path / "users.txt"
    path.write_bytes(raw)
    if ids is not None:
        assert read_ids(path, "user_id") == ids
        return
    with pytest.raises(InputFileError) as info:
        read_ids(path, "user_id")
    assert _one_line(info.value).startswith(f"{path}{error}"), str(info.value)


@pytest.mark.parametrize("length", [50, 1_000], ids=["over the field limit", "over the line limit too"])
def test_read_ids_refuses_a_long_id_naming_line_and_column(tmp_path: Path, length: int) -> None:
    # Prepare: a 10-character field limit, so lines over 160 bytes are cut off unread
    path = tmp_path / "users.txt"
    path.write_text("u1\n" + "x" * length + "\n", encoding="utf-8")
    # Execute
    with mock.patch.dict(os.environ, {MAX_FIELD_ENV: "10"}), pytest.raises(InputFileError) as info:
        read_ids(path, "user_id")
    # Assert
    assert _one_line(info.value).startswith(f"{path}:2: field `user_id`: field too long"), str(info.value)


PAIR_CASES = {
    "missing item": (b"user_id,item_id\nu1\n", ":2: field `item_id`: missing field"),
    "extra field": (b"user_id,item_id\nu1,i1,i2\n", ":2: field `#3`: extra field"),
    "empty item": (b"user_id,item_id\nu1,\n", ":2: field `item_id`: empty value"),
    "no rows": (b"user_id,item_id\n", ":2: no rows"),
    "missing file": (None, ": file not found"),
}


@pytest.mark.parametrize(("raw", "error"), PAIR_CASES.values(), ids=PAIR_CASES)
def test_read_pairs_refuses_rows_that_do_not_fit(tmp_path: Path, raw: bytes | None, error: str) -> None:
    path = tmp_path / "pairs.csv"
    if raw is not None:
        path.write_bytes(raw)
    with pytest.raises(InputFileError) as info:
        read_pairs(path)
    assert _one_line(info.value).startswith(f"{path}{error}"), str(info.value)


def test_read_pairs_keeps_named_extra_columns_out() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.csv"
        path.write_text("user_id,item_id,note\nu1,i1,first\nu2,i2,\n", encoding="utf-8")
        assert read_pairs(path) == [("u1", "i1"), ("u2", "i2")]


def test_json_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{\n "a": 1,\n oops\n}\n')
    with pytest.raises(InputFileError, match=rf"^{path}:3: not JSON"):
        read_json(path)
    path.write_text("[" * 100_000)
    with pytest.raises(InputFileError, match="not JSON"):
        read_json(path)


def test_input_lines_numbers_lines_and_names_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "u.item"
    path.write_bytes(b"1|A\n2|B\xff\n")
    assert next(input_lines(path, encoding="latin-1")) == (1, "1|A")
    with pytest.raises(InputFileError, match=rf"^{path}:2: invalid UTF-8"):
        list(input_lines(path))


# ------------------------------------------------------------------ every reader, fuzzed

Reader = Callable[[Path, bytes], object]


def _in(folder: Path, name: str, raw: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def _dataset(folder: Path, raw: bytes, fuzzed: str) -> object:
    shop = folder / "shop"
    _in(shop, ITEMS_FILE, raw if fuzzed == ITEMS_FILE else ITEMS.encode())
    _in(shop, INTERACTIONS_FILE, raw if fuzzed == INTERACTIONS_FILE else RATED.encode())
    return load_platform(folder, "shop")


def _roster(folder: Path, raw: bytes) -> object:
    return Roster.load(_in(folder, "roster.json", raw))


def _tallrec_titles(folder: Path, raw: bytes) -> object:
    _in(folder, "u.item", raw)
    return tallrec.read_titles(folder)


# reader name -> (reader, the errors it may raise: its input error type)
READERS: dict[str, tuple[Reader, tuple[type[BaseException], ...]]] = {
    "dataset items.csv": (lambda d, raw: _dataset(d, raw, ITEMS_FILE), (DatasetError,)),
    "dataset interactions.csv": (lambda d, raw: _dataset(d, raw, INTERACTIONS_FILE), (DatasetError,)),
    "--users": (lambda d, raw: read_ids(_in(d, "users.csv", raw), "user_id"), (InputFileError,)),
    "--pairs": (lambda d, raw: read_pairs(_in(d, "pairs.csv", raw)), (InputFileError,)),
    "summary.json": (lambda d, raw: read_summary(_in(d, SUMMARY_FILE, raw).parent), (RunFileError,)),
    "roster": (_roster, (SecAggConfigError,)),
    "secagg .pub": (lambda d, raw: load_public(_in(d, "a.secagg.pub", raw)), (SecAggConfigError,)),
    "movielens u.genre": (lambda d, raw: movielens.read_genres(_in(d, "u.genre", raw)), (DatasetError,)),
    "movielens u.item": (
        lambda d, raw: movielens.read_movies(_in(d, "u.item", raw), [f"g{i}" for i in range(movielens.NUM_GENRES)]),
        (DatasetError,),
    ),
    "movielens u.data": (
        lambda d, raw: movielens.read_ratings(_in(d, "u.data", raw), {"1": None, "2": None}),  # type: ignore[dict-item]
        (DatasetError,),
    ),
    "movielens platform map": (
        lambda d, raw: movielens.read_platform_map(_in(d, movielens.PLATFORMS_FILE, raw)),
        (DatasetError,),
    ),
    "tallrec u.item": (_tallrec_titles, (DatasetError,)),
    "tallrec rows": (lambda d, raw: tallrec.read_rows(_in(d, "movielens_train.csv", raw)), (DatasetError,)),
    "tallrec prompts": (lambda d, raw: tallrec.read_prompts(_in(d, "valid.json", raw)), (DatasetError,)),
}

COLUMNS = ["user_id", "item_id", "timestamp", "rating", "label", "title", "text", "platform", "history_movie_id",
           "history_rating", "movie_id", "format", "x", ""]  # fmt: skip
FIELDS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["1", "0", "-1", "1e400", "nan", "2020-01-01", "[1, 0]", "['a']", "[[1]]", '"', '""', "u1"]),
)


@st.composite
def _rows_file(draw: st.DrawFn) -> bytes:
    """A CSV-like file: a header of known and unknown columns, rows of any length, a random separator."""
    sep = draw(st.sampled_from([",", "\t", "|"]))
    header = draw(st.lists(st.sampled_from(COLUMNS), max_size=6))
    rows = draw(st.lists(st.lists(FIELDS, max_size=7), max_size=6))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerows([header, *rows])
    return buf.getvalue().encode("utf-8")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(COLUMNS + ["platforms", "ed25519",
                                                                                         "input", "output"]), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
CONTENTS = st.one_of(
    st.binary(max_size=400),
    _rows_file(),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
)
FUZZ = settings(max_examples=int(os.environ.get("INPUT_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.mark.parametrize("reader", READERS, ids=READERS)
@FUZZ
@given(raw=CONTENTS, small_limit=st.booleans())
def test_every_reader_parses_or_raises_its_input_error(reader: str, raw: bytes, small_limit: bool) -> None:
    # Prepare: a fresh folder per example (hypothesis reruns the body); a small field limit half the time
    read, errors = READERS[reader]
    env = {MAX_FIELD_ENV: "8"} if small_limit else {}
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, env):
        # Execute / Assert: a result, or the reader's own one-line error; anything else fails the test
        try:
            read(Path(tmp), raw)
        except errors as exc:
            _one_line(exc)
