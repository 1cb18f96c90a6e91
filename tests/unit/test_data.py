from __future__ import annotations

import logging
from pathlib import Path

import pytest

from common.data import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    DatasetError,
    Duplicate,
    Interaction,
    Item,
    PlatformData,
    discover_platforms,
    drop_duplicate_interactions,
    load_dataset,
    load_platform,
    parse_rating_scale,
    parse_timestamp,
    write_dataset,
    write_platform,
)
from common.files import MAX_FIELD_CHARS

ITEMS = "item_id,title\na,Red Scarf\nb,Blue Hat\nc,Green Gloves\n"
RATED = "user_id,item_id,timestamp,rating\nu1,a,100,4\nu1,b,200,2\nu2,c,150,5\n"


def _platform(feedback: str = "rating", name: str = "shop") -> PlatformData:
    items = {
        "a": Item("a", 'Red "Wool", Scarf', "Warm.\nSoft"),
        "b": Item("b", "Blåbär Hat"),
        "c": Item("c", "Green Gloves", "text, with comma"),
    }
    values = {"rating": (4.0, 2.5, 5.0), "label": (1.0, 0.0, 1.0), "implicit": (None, None, None)}[feedback]
    rows = [
        Interaction("u1", "a", 1_600_000_000.0, values[0]),
        Interaction("u1", "b", 1_600_000_000.25, values[1]),
        Interaction("u 2", "c", 12.0, values[2]),
    ]
    return PlatformData(name, items, rows, feedback)  # type: ignore[arg-type]


def _write_raw(root: Path, items: str | bytes | None, interactions: str | bytes | None) -> Path:
    folder = root / "shop"
    folder.mkdir(parents=True)
    for name, content in ((ITEMS_FILE, items), (INTERACTIONS_FILE, interactions)):
        if isinstance(content, str):
            (folder / name).write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("feedback", ["rating", "label", "implicit"])
def test_round_trip(tmp_path: Path, feedback: str) -> None:
    # Prepare
    data = {"shop": _platform(feedback), "web": _platform(feedback, name="web")}

    # Execute
    write_dataset(tmp_path / "ds", data.values())
    loaded = load_dataset(tmp_path / "ds")

    # Assert
    assert loaded == data
    assert loaded["shop"].num_users == 2
    assert sorted(p.name for p in (tmp_path / "ds" / "shop").iterdir()) == [INTERACTIONS_FILE, ITEMS_FILE]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1600000000", 1_600_000_000.0),
        ("1600000000.5", 1_600_000_000.5),
        ("1.6e9", 1_600_000_000.0),
        ("2020-09-13", 1_599_955_200.0),
        ("2020-09-13T12:26:40", 1_600_000_000.0),
        ("2020-09-13T14:26:40+02:00", 1_600_000_000.0),
        ("2020-09-13T12:26:40Z", 1_600_000_000.0),
    ],
)
def test_timestamp_formats(tmp_path: Path, raw: str, expected: float) -> None:
    # Prepare
    _write_raw(tmp_path, ITEMS, f"user_id,item_id,timestamp\nu1,a,{raw}\nu2,b,0\n")

    # Execute
    data = load_platform(tmp_path, "shop")

    # Assert
    assert data.feedback == "implicit"
    assert data.interactions[0].timestamp == expected


# (items.csv, interactions.csv, file named, line, field, problem): None = not written / not in message
ERROR_CASES = {
    "missing items file": (None, RATED, ITEMS_FILE, None, None, "file not found"),
    "missing interactions file": (ITEMS, None, INTERACTIONS_FILE, None, None, "file not found"),
    "missing items column": ("item_id,name\na,x\n", RATED, ITEMS_FILE, 1, "title", "missing column"),
    "missing interactions column": (
        ITEMS,
        "user_id,item_id\nu1,a\n",
        INTERACTIONS_FILE,
        1,
        "timestamp",
        "missing column",
    ),
    "unknown item id": (ITEMS, RATED + "u2,zz,300,3\n", INTERACTIONS_FILE, 5, "item_id", "unknown item id"),
    "unparsable rating": (ITEMS, RATED.replace(",2\n", ",good\n"), INTERACTIONS_FILE, 3, "rating", "not a number"),
    "infinite rating": (ITEMS, RATED.replace(",2\n", ",inf\n"), INTERACTIONS_FILE, 3, "rating", "not a finite number"),
    "unparsable timestamp": (
        ITEMS,
        RATED.replace(",200,", ",yesterday,"),
        INTERACTIONS_FILE,
        3,
        "timestamp",
        "unparsable",
    ),
    "unparsable label": (
        ITEMS,
        "user_id,item_id,timestamp,label\nu1,a,1,yes\n",
        INTERACTIONS_FILE,
        2,
        "label",
        "not a number",
    ),
    "label not 0/1": (
        ITEMS,
        "user_id,item_id,timestamp,label\nu1,a,1,1\nu2,b,1,2\n",
        INTERACTIONS_FILE,
        3,
        "label",
        "0/1",
    ),
    "duplicate item id": (ITEMS + "b,Other Hat\n", RATED, ITEMS_FILE, 5, "item_id", "duplicate item id"),
    "empty user id": (ITEMS, RATED.replace("u2,", ","), INTERACTIONS_FILE, 4, "user_id", "empty value"),
    "empty platform": (ITEMS, "user_id,item_id,timestamp,rating\n", INTERACTIONS_FILE, None, None, "empty platform"),
    "one user": (ITEMS, RATED.replace("u2", "u1"), INTERACTIONS_FILE, None, "user_id", "too few users"),
    "bad utf-8": (ITEMS.encode() + b"d,Caf\xe9 Hat\n", RATED, ITEMS_FILE, 5, None, "invalid UTF-8"),
    "too many fields": (
        ITEMS,
        RATED.replace("u1,b,200,2", "u1,b,200,2,x"),
        INTERACTIONS_FILE,
        3,
        None,
        "number of fields",
    ),
    "too few fields": (ITEMS.replace("c,Green Gloves", "c"), RATED, ITEMS_FILE, 4, None, "number of fields"),
    "negative timestamp": (ITEMS, RATED.replace(",200,", ",-1,"), INTERACTIONS_FILE, 3, "timestamp", "negative"),
    "before 1970": (ITEMS, RATED.replace(",200,", ",1969-12-31,"), INTERACTIONS_FILE, 3, "timestamp", "negative"),
    "milliseconds": (ITEMS, RATED.replace(",200,", ",1600000000000,"), INTERACTIONS_FILE, 3, "timestamp", "future"),
    "future date": (ITEMS, RATED.replace(",150,", ",3020-01-01,"), INTERACTIONS_FILE, 4, "timestamp", "future"),
    "field too long": (
        ITEMS.replace("Blue Hat", "x" * (MAX_FIELD_CHARS + 1)),
        RATED,
        ITEMS_FILE,
        3,
        "title",
        "field too long",
    ),
    "unclosed quote swallows the file": (  # reported on the line where the record starts
        ITEMS + 'd,"Broken Hat\n' + "e,Fine Hat\n" * (MAX_FIELD_CHARS // 10),
        RATED,
        ITEMS_FILE,
        5,
        "title",
        "field too long",
    ),
    "header field too long": (
        "item_id,title," + "x" * (MAX_FIELD_CHARS + 1) + "\n",
        RATED,
        ITEMS_FILE,
        1,
        "#3",
        "long",
    ),
}


@pytest.mark.parametrize(("items", "inter", "file", "line", "field", "problem"), ERROR_CASES.values(), ids=ERROR_CASES)
def test_validation_errors_name_file_line_and_field(
    tmp_path: Path,
    items: str | bytes | None,
    inter: str | None,
    file: str,
    line: int | None,
    field: str | None,
    problem: str,
) -> None:
    # Prepare
    folder = _write_raw(tmp_path, items, inter)
    where = f"{folder / file}:{line}: " if line is not None else f"{folder / file}: "
    what = f"field `{field}`: " if field is not None else ""

    # Execute
    with pytest.raises(DatasetError) as info:
        load_platform(tmp_path, "shop")

    # Assert
    message = str(info.value)
    assert message.startswith(where + what), message
    assert problem in message
    assert "\n" not in message
    assert len(message) < 500  # never the offending value itself when it is huge


@pytest.mark.parametrize("length", [5_000, 200_000])  # 200,000 is over Python csv's default field limit
def test_long_fields_load(tmp_path: Path, length: int) -> None:
    # Prepare
    _write_raw(tmp_path, ITEMS.replace("Blue Hat", "Blue Hat " + "x" * length), RATED)

    # Execute
    data = load_platform(tmp_path, "shop")

    # Assert
    assert len(data.items["b"].title) == len("Blue Hat ") + length


def test_duplicate_interactions_dropped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: line 5 repeats line 2, line 6 repeats line 3 with another rating, line 7 re-rates later (kept)
    folder = _write_raw(tmp_path, ITEMS, RATED + "u1,a,100,4\nu1,b,200,5\nu1,a,300,3\n")

    # Execute
    with caplog.at_level(logging.WARNING, logger="common.data"):
        data = load_platform(tmp_path, "shop")

    # Assert
    assert [(r.user_id, r.item_id, r.timestamp, r.value) for r in data.interactions] == [
        ("u1", "a", 100.0, 4.0), ("u1", "b", 200.0, 2.0), ("u2", "c", 150.0, 5.0), ("u1", "a", 300.0, 3.0),
    ]  # fmt: skip
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    message = caplog.records[0].getMessage()
    assert message.startswith(f"{folder / INTERACTIONS_FILE}: dropped 2 duplicate interaction row(s)")
    assert "first on line 5, a repeat of line 2; 1 of them with a different rating" in message
    assert "\n" not in message


def test_no_warning_without_duplicates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    _write_raw(tmp_path, ITEMS, RATED)

    # Execute
    with caplog.at_level(logging.WARNING, logger="common.data"):
        load_platform(tmp_path, "shop")

    # Assert
    assert caplog.records == []


def test_drop_duplicate_interactions() -> None:
    # Prepare
    a, b = Interaction("u1", "a", 1.0, None), Interaction("u1", "b", 1.0, None)
    rows = [(2, a), (3, b), (4, a), (5, Interaction("u1", "a", 1.0, 3.0)), (6, Interaction("u2", "a", 1.0, None))]

    # Execute
    kept, dropped = drop_duplicate_interactions(rows)

    # Assert
    assert kept == [a, b, Interaction("u2", "a", 1.0, None)]
    assert dropped == [Duplicate(4, 2, True), Duplicate(5, 2, False)]


def test_error_message_says_expected_and_got(tmp_path: Path) -> None:
    # Prepare
    _write_raw(tmp_path, ITEMS, RATED.replace(",2\n", ",good\n"))

    # Execute
    with pytest.raises(DatasetError) as info:
        load_platform(tmp_path, "shop")

    # Assert
    assert str(info.value).endswith("(expected a number, got 'good')")


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda root: None, "dataset folder not found"),
        (lambda root: root.mkdir(), "no platform folders"),
        (lambda root: (root / ".hidden").mkdir(parents=True), "no platform folders"),
    ],
)
def test_discover_platforms_errors(tmp_path: Path, make: object, problem: str) -> None:
    # Prepare
    root = tmp_path / "ds"
    make(root)  # type: ignore[operator]

    # Execute
    with pytest.raises(DatasetError) as info:
        discover_platforms(root)

    # Assert
    assert str(info.value).startswith(f"{root}: {problem}")


def test_discover_platforms_sorted(tmp_path: Path) -> None:
    # Prepare
    for name in ("web", "app", ".cache"):
        (tmp_path / name).mkdir()

    # Execute
    names = discover_platforms(tmp_path)

    # Assert
    assert names == ["app", "web"]


def test_load_unknown_platform(tmp_path: Path) -> None:
    # Prepare
    write_dataset(tmp_path / "ds", [_platform()])

    # Execute / Assert
    with pytest.raises(DatasetError, match="platform folder not found"):
        load_platform(tmp_path / "ds", "nope")


BAD_PLATFORMS = {
    "value missing for ratings": lambda d: d.interactions.append(Interaction("u1", "c", 1.0, None)),
    "unknown item": lambda d: d.interactions.append(Interaction("u1", "zz", 1.0, 3.0)),
    "lone surrogate": lambda d: d.items.update(c=Item("c", "Bad \udc80 Hat")),
}


@pytest.mark.parametrize("spoil", BAD_PLATFORMS.values(), ids=BAD_PLATFORMS)
def test_write_platform_failure_leaves_old_files(tmp_path: Path, spoil: object) -> None:
    # Prepare
    write_platform(tmp_path, _platform())
    before = {p.name: p.read_bytes() for p in (tmp_path / "shop").iterdir()}
    bad = _platform()
    spoil(bad)  # type: ignore[operator]

    # Execute
    with pytest.raises(DatasetError):
        write_platform(tmp_path, bad)

    # Assert: old files intact, no temp files
    assert {p.name: p.read_bytes() for p in (tmp_path / "shop").iterdir()} == before


def test_write_dataset_is_all_or_nothing(tmp_path: Path) -> None:
    # Prepare
    bad = _platform(name="web")
    bad.interactions.append(Interaction("u1", "zz", 1.0, 3.0))

    # Execute
    with pytest.raises(DatasetError, match="unknown item id"):
        write_dataset(tmp_path / "ds", [_platform(), bad])

    # Assert: neither the dataset nor its temp folder exists
    assert list(tmp_path.iterdir()) == []


def test_write_dataset_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "ds"
    write_dataset(root, [_platform("rating", "old")])

    # Execute
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        write_dataset(root, [_platform()])
    write_dataset(root, [_platform()], overwrite=True)

    # Assert: replaced whole, nothing left beside it
    assert discover_platforms(root) == ["shop"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_empty_and_very_long_titles_load(tmp_path: Path) -> None:
    # Real catalogues have untitled items and 5,000-character "titles"; both load as they are.
    folder = tmp_path / "ds" / "shop"
    folder.mkdir(parents=True)
    long_title = "Ünïcode 商品 " * 400  # 5,200 characters
    (folder / ITEMS_FILE).write_text(f"item_id,title\na,\nb,{long_title}\nc,Red Hat\n", encoding="utf-8")
    (folder / INTERACTIONS_FILE).write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu2,c,3\n", encoding="utf-8")
    data = load_platform(tmp_path / "ds", "shop")
    assert data.items["a"].title == "" and data.items["b"].title == long_title.strip()


def test_timestamp_up_to_a_day_ahead_is_accepted() -> None:
    # Prepare: a clock fixed at 1,600,000,000 s; exports in local time run up to a day ahead
    now = 1_600_000_000.0
    # Execute / Assert
    assert parse_timestamp(str(now + 86_000), Path("x.csv"), 2, now=now) == now + 86_000
    with pytest.raises(DatasetError, match="x.csv:2: field `timestamp`: timestamp in the future"):
        parse_timestamp(str(now + 86_401), Path("x.csv"), 2, now=now)


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("1,5", (1.0, 5.0)), (" 0 , 10 ", (0.0, 10.0))])
def test_parse_rating_scale(raw: str, expected: tuple[float, float] | None) -> None:
    assert parse_rating_scale(raw) == expected


@pytest.mark.parametrize("raw", ["5,1", "1", "1,2,3", "a,b", "1,inf"])
def test_parse_rating_scale_refuses_bad_declarations(raw: str) -> None:
    with pytest.raises(ValueError, match="`data.rating-scale`"):
        parse_rating_scale(raw)


def test_rating_outside_declared_scale_is_one_line(tmp_path: Path) -> None:
    # Prepare: a 99 on a 1-5 scale on line 3
    folder = _write_raw(tmp_path, ITEMS, RATED.replace("u1,b,200,2", "u1,b,200,99"))
    # Execute
    with pytest.raises(DatasetError) as info:
        load_platform(tmp_path, "shop", rating_scale=(1.0, 5.0))
    # Assert
    message = str(info.value)
    assert message.startswith(f"{folder / INTERACTIONS_FILE}:3: field `rating`: rating outside the declared scale")
    assert "from 1 to 5 (data.rating-scale)" in message and "'99'" in message and "\n" not in message


def test_ratings_on_the_scale_edges_load_and_undeclared_scale_is_unchecked(tmp_path: Path) -> None:
    _write_raw(tmp_path / "edges", ITEMS, RATED.replace("u1,b,200,2", "u1,b,200,1"))  # ratings 4, 1, 5
    assert len(load_platform(tmp_path / "edges", "shop", rating_scale=(1.0, 5.0)).interactions) == 3
    _write_raw(tmp_path / "free", ITEMS, RATED.replace("u1,b,200,2", "u1,b,200,99"))
    assert load_platform(tmp_path / "free", "shop").interactions[1].value == 99.0


def test_written_dataset_has_result_modes(tmp_path: Path) -> None:
    # Prepare / Execute
    write_dataset(tmp_path / "data", [_platform()])
    # Assert: 0o666 / 0o777 less the umask (mkstemp's 0600 and mkdtemp's 0700 are not left behind)
    from common.files import result_dir_mode, result_mode

    assert (tmp_path / "data").stat().st_mode & 0o777 == result_dir_mode()
    for f in (tmp_path / "data" / "shop").iterdir():
        assert f.stat().st_mode & 0o777 == result_mode()
