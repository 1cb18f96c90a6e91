"""The platform dataset format: one folder per platform, two UTF-8 CSV files each.

```
DATASET/<platform>/items.csv         item_id,title[,text]
DATASET/<platform>/interactions.csv  user_id,item_id,timestamp[,rating|label]
```

No ``rating``/``label`` column means implicit feedback (every row is a positive);
``rating`` is an explicit numeric rating, ``label`` an explicit 0/1. User ids are local
to a platform: the same id on two platforms is not assumed to be the same person.

Everything a platform owner can get wrong is a :class:`DatasetError` whose one-line
message names the file, line and field and says what was expected, so the owner can fix
the file without reading this code. The files are read by :class:`common.files.CsvRecords`
(declared UTF-8, bounded lines and fields; DatasetError is its error kind here). Repeated
interaction rows (same user, item and timestamp: a double export, a retried upload) are not
worth stopping for: the repeats are dropped and counted in one logged warning. The writer renders a platform to text and
parses it back with the same validator before touching the disk, so it never writes a file
the loader would reject.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from common.files import CsvRecords, InputFileError, atomic_write_bytes, result_dir_mode

USER_COL = "user_id"
ITEM_COL = "item_id"
TIME_COL = "timestamp"
RATING_COL = "rating"
LABEL_COL = "label"
TITLE_COL = "title"
TEXT_COL = "text"

ITEMS_FILE = "items.csv"
INTERACTIONS_FILE = "interactions.csv"

# Clocks disagree and exports use local time: a timestamp up to a day ahead of this machine is
# accepted; later ones are refused (a typo'd year, milliseconds read as seconds).
FUTURE_SLACK_S = 86_400.0

log = logging.getLogger(__name__)

Feedback = Literal["rating", "label", "implicit"]


class DatasetError(InputFileError):
    """A dataset file is missing or malformed; the message is one line the owner can act on
    (``DatasetError.at``: file, line, field, expected and got)."""


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    text: str = ""  # optional description; the model sees "title. text"


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    timestamp: float  # unix seconds
    value: float | None  # the rating or the 0/1 label; None for implicit feedback


@dataclass
class PlatformData:
    name: str
    items: dict[str, Item]
    interactions: list[Interaction]  # in file order (ties in time are broken by it)
    feedback: Feedback

    @property
    def num_users(self) -> int:
        return len({row.user_id for row in self.interactions})


# --- reading -----------------------------------------------------------------------------


def _records(source: Path | str, path: Path, required: Sequence[str]) -> CsvRecords:
    """The file at ``path`` (or ``source``, its text) read by the one CSV reader, errors as DatasetError."""
    if isinstance(source, str):
        return CsvRecords(io.StringIO(source, newline=""), required, path=path, error=DatasetError)
    return CsvRecords(path, required, error=DatasetError)


def _required(row: dict[str, str], name: str, path: Path, line: int) -> str:
    value = row[name].strip()
    if not value:
        raise DatasetError.at(path, "empty value", line=line, field=name, expected="a non-empty string", got=row[name])
    return value


def _number(raw: str, path: Path, line: int, field: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DatasetError.at(path, "not a number", line=line, field=field, expected="a number", got=raw) from None
    if not math.isfinite(value):
        raise DatasetError.at(path, "not a finite number", line=line, field=field, expected="a finite number", got=raw)
    return value


def parse_timestamp(raw: str, path: Path, line: int, now: float | None = None) -> float:
    """Unix seconds (int or float) or ISO-8601 date/datetime; naive datetimes are taken as UTC.

    Times before 1970 are refused: in an interaction log they are almost always a placeholder
    such as ``-1`` for "unknown", which would silently sort first in every user's history.
    Times more than :data:`FUTURE_SLACK_S` after ``now`` (default: this machine's clock) are
    refused too: milliseconds read as seconds, or a typo'd year, would sort last in every
    history and so become the test interaction of leave-last-out.
    """
    seconds = _seconds(raw.strip(), path, line)
    if seconds < 0:
        raise DatasetError.at(
            path, "negative timestamp", line=line, field=TIME_COL,
            expected="a time at or after 1970-01-01 (unix seconds >= 0)", got=raw,
        )  # fmt: skip
    latest = (time.time() if now is None else now) + FUTURE_SLACK_S
    if seconds > latest:
        limit = datetime.fromtimestamp(latest, UTC).isoformat(timespec="seconds")
        raise DatasetError.at(
            path, "timestamp in the future", line=line, field=TIME_COL,
            expected=f"a time before {limit} (unix seconds, not milliseconds)", got=raw,
        )  # fmt: skip
    return seconds


def _seconds(raw: str, path: Path, line: int) -> float:
    """``raw`` as unix seconds, whichever of the accepted formats it is in."""
    try:
        return _number(raw, path, line, TIME_COL)
    except DatasetError:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise DatasetError.at(
            path, "unparsable timestamp", line=line, field=TIME_COL,
            expected="unix seconds or an ISO-8601 date/datetime", got=raw,
        ) from None  # fmt: skip
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_items(text: str | None, path: Path) -> dict[str, Item]:
    """The catalogue in ``text``, or (``text`` None) in the file at ``path``, read as it streams."""
    rows = _records(path if text is None else text, path, (ITEM_COL, TITLE_COL))
    items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        item_id = _required(row, ITEM_COL, path, line)
        if item_id in items:
            raise DatasetError.at(
                path, "duplicate item id", line=line, field=ITEM_COL,
                expected=f"unique ids (first seen on line {first_line[item_id]})", got=item_id,
            )  # fmt: skip
        title = row[TITLE_COL].strip()  # may be empty: real catalogues have untitled items (the id still learns)
        items[item_id] = Item(item_id, title, row.get(TEXT_COL, "").strip())
        first_line[item_id] = line
    return items


def _feedback(header: list[str], path: Path) -> Feedback:
    if RATING_COL in header and LABEL_COL in header:
        raise DatasetError.at(
            path,
            "both feedback columns",
            line=1,
            field=LABEL_COL,
            expected=f"`{RATING_COL}` or `{LABEL_COL}`, not both",
            got=",".join(header),
        )
    if RATING_COL in header:
        return "rating"
    return "label" if LABEL_COL in header else "implicit"


@dataclass(frozen=True)
class Duplicate:
    line: int  # the dropped row
    kept_line: int  # the earlier row with the same user, item and timestamp, which is kept
    same_value: bool  # False: the two rows disagree on the rating/label (the kept one wins)


def drop_duplicate_interactions(
    rows: Sequence[tuple[int, Interaction]],
) -> tuple[list[Interaction], list[Duplicate]]:
    """Keep the first row of each (user_id, item_id, timestamp); report the later ones.

    A repeat of the same event would otherwise count twice in training and could land in
    both the training and the test split of leave-last-out.
    """
    kept: list[Interaction] = []
    first: dict[tuple[str, str, float], tuple[int, Interaction]] = {}
    dropped: list[Duplicate] = []
    for line, row in rows:
        key = (row.user_id, row.item_id, row.timestamp)
        if key in first:
            kept_line, kept_row = first[key]
            dropped.append(Duplicate(line, kept_line, kept_row.value == row.value))
            continue
        first[key] = (line, row)
        kept.append(row)
    return kept, dropped


def _warn_duplicates(path: Path, dropped: Sequence[Duplicate], value_col: str | None) -> None:
    if not dropped:
        return
    differing = sum(not d.same_value for d in dropped)
    conflict = f"; {differing} of them with a different {value_col} (the first row's is kept)" if differing else ""
    log.warning(
        "%s: dropped %d duplicate interaction row(s) (same user_id, item_id and timestamp as an earlier row; "
        "first on line %d, a repeat of line %d%s)",
        path, len(dropped), dropped[0].line, dropped[0].kept_line, conflict,
    )  # fmt: skip


RatingScale = tuple[float, float]


def parse_rating_scale(raw: str) -> RatingScale | None:
    """``data.rating-scale`` (``"1,5"``: lowest, highest) as a pair; ``""`` = not declared (unchecked).

    Raises ValueError with a message naming the setting (the config layer turns it into a ConfigError).
    """
    if not raw.strip():
        return None
    parts = raw.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"`data.rating-scale` must be 'lowest,highest' such as '1,5', got {raw!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"`data.rating-scale` must have finite lowest < highest, got {raw!r}")
    return low, high


def _check_rating(value: float, scale: RatingScale | None, raw: str, path: Path, line: int) -> None:
    if scale is not None and not scale[0] <= value <= scale[1]:
        raise DatasetError.at(
            path, "rating outside the declared scale", line=line, field=RATING_COL,
            expected=f"a rating from {_fmt(scale[0])} to {_fmt(scale[1])} (data.rating-scale)", got=raw,
        )  # fmt: skip


def parse_interactions(
    text: str | None, path: Path, items: dict[str, Item], rating_scale: RatingScale | None = None
) -> tuple[list[Interaction], Feedback]:
    """The platform's interactions in file order, repeated rows dropped (one warning), and its feedback kind:
    from ``text``, or (``text`` None) from the file at ``path``, read as it streams.

    ``rating_scale`` (lowest, highest), when declared, refuses a rating outside it: a 99 on a
    1-5 scale would be a like by any threshold and silently bias training.
    """
    rows = _records(path if text is None else text, path, (USER_COL, ITEM_COL, TIME_COL))
    feedback = _feedback(rows.header, path)
    parsed: list[tuple[int, Interaction]] = []
    for line, row in rows:
        user_id = _required(row, USER_COL, path, line)
        item_id = _required(row, ITEM_COL, path, line)
        if item_id not in items:
            raise DatasetError.at(
                path, "unknown item id", line=line, field=ITEM_COL, expected=f"an id from {ITEMS_FILE}", got=item_id
            )
        timestamp = parse_timestamp(row[TIME_COL], path, line)
        value: float | None = None
        if feedback == "rating":
            value = _number(row[RATING_COL].strip(), path, line, RATING_COL)
            _check_rating(value, rating_scale, row[RATING_COL], path, line)
        elif feedback == "label":
            value = _number(row[LABEL_COL].strip(), path, line, LABEL_COL)
            if value not in (0.0, 1.0):
                raise DatasetError.at(
                    path, "label not 0/1", line=line, field=LABEL_COL, expected="0 or 1", got=row[LABEL_COL]
                )
        parsed.append((line, Interaction(user_id, item_id, timestamp, value)))
    out, dropped = drop_duplicate_interactions(parsed)
    _warn_duplicates(path, dropped, {"rating": RATING_COL, "label": LABEL_COL}.get(feedback))
    if not out:
        raise DatasetError.at(path, "empty platform", expected="at least one interaction", got=0)
    users = len({row.user_id for row in out})
    if users < 2:
        raise DatasetError.at(path, "too few users", field=USER_COL, expected="at least 2 users", got=users)
    return out, feedback


def _platform_dir(root: Path, name: str) -> Path:
    if not name or name.startswith(".") or Path(name).name != name:
        raise DatasetError.at(root, "bad platform name", expected="a plain folder name", got=name)
    return root / name


def discover_platforms(root: Path) -> list[str]:
    """Sorted platform folder names under ``root`` (hidden folders are skipped)."""
    if not root.is_dir():
        raise DatasetError.at(root, "dataset folder not found")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError.at(
            root, "no platform folders", expected=f"<platform>/{ITEMS_FILE} and {INTERACTIONS_FILE}", got=0
        )
    return names


def load_platform(root: Path, name: str, rating_scale: RatingScale | None = None) -> PlatformData:
    folder = _platform_dir(root, name)
    if not folder.is_dir():
        raise DatasetError.at(folder, "platform folder not found")
    items_path, inter_path = folder / ITEMS_FILE, folder / INTERACTIONS_FILE
    items = parse_items(None, items_path)
    interactions, feedback = parse_interactions(None, inter_path, items, rating_scale)
    return PlatformData(name, items, interactions, feedback)


def load_dataset(
    root: Path, platforms: Sequence[str] | None = None, rating_scale: RatingScale | None = None
) -> dict[str, PlatformData]:
    names = discover_platforms(root) if platforms is None else list(platforms)
    return {name: load_platform(root, name, rating_scale) for name in names}


# --- writing -----------------------------------------------------------------------------


def _fmt(x: float) -> str:
    """Integers without a trailing ``.0`` (unix seconds, 1-5 ratings); others exactly (repr)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _csv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def render_platform(data: PlatformData, folder: Path) -> tuple[str, str]:
    """Both files' text, validated by parsing it back (errors name the files to be written)."""
    with_text = any(item.text for item in data.items.values())
    item_header = [ITEM_COL, TITLE_COL, *([TEXT_COL] if with_text else [])]
    items_text = _csv(
        item_header,
        ([it.item_id, it.title, *([it.text] if with_text else [])] for it in data.items.values()),
    )
    inter_header = [USER_COL, ITEM_COL, TIME_COL]
    if data.feedback != "implicit":
        inter_header.append(RATING_COL if data.feedback == "rating" else LABEL_COL)
    inter_path = folder / INTERACTIONS_FILE
    rows = []
    for i, row in enumerate(data.interactions):
        if (row.value is None) != (data.feedback == "implicit"):
            expected = "no value (implicit feedback)" if data.feedback == "implicit" else "a number"
            raise DatasetError.at(
                inter_path,
                "value does not match feedback",
                line=i + 2,
                field=inter_header[-1],
                expected=expected,
                got=row.value,
            )
        values = [] if row.value is None else [_fmt(row.value)]
        rows.append([row.user_id, row.item_id, _fmt(row.timestamp), *values])
    inter_text = _csv(inter_header, rows)
    items = parse_items(items_text, folder / ITEMS_FILE)
    parse_interactions(inter_text, inter_path, items)
    return items_text, inter_text


def _encode(text: str, path: Path) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = text[: e.start].count("\n") + 1
        raise DatasetError.at(
            path, "not encodable as UTF-8", line=line, expected="valid Unicode text", got=text[e.start : e.end]
        ) from None


def write_platform(root: Path, data: PlatformData) -> None:
    """Validate, then write both CSVs atomically; on a validation error nothing is touched."""
    folder = _platform_dir(root, data.name)
    items_text, inter_text = render_platform(data, folder)
    payloads = {
        folder / ITEMS_FILE: _encode(items_text, folder / ITEMS_FILE),
        folder / INTERACTIONS_FILE: _encode(inter_text, folder / INTERACTIONS_FILE),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for path, payload in payloads.items():
        atomic_write_bytes(path, payload)


def write_dataset(root: Path, platforms: Iterable[PlatformData], overwrite: bool = False) -> None:
    """All or nothing: build the dataset in a temp folder beside ``root``, then rename it into place.

    A non-empty existing ``root`` is refused unless ``overwrite``; then it is replaced whole,
    so no platform of an older dataset survives next to the new ones.
    """
    if root.exists() and not root.is_dir():
        raise DatasetError.at(root, "not a folder", expected="a dataset folder", got="a file")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise DatasetError.at(
            root,
            "refusing to overwrite a non-empty folder",
            expected="an empty or new folder (or overwrite=True)",
            got="existing files",
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    tmp.chmod(result_dir_mode())
    try:
        seen: set[str] = set()
        for data in platforms:
            if data.name in seen:
                raise DatasetError.at(root, "duplicate platform name", expected="unique names", got=data.name)
            seen.add(data.name)
            write_platform(tmp, data)
        if not seen:
            raise DatasetError.at(root, "no platforms to write", expected="at least one platform", got=0)
        _swap_in(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, root: Path) -> None:
    """Rename ``new`` to ``root``; an existing ``root`` is moved aside first and restored on failure."""
    old = new.with_name(f"{new.name}-old")
    if root.exists():
        root.rename(old)
    try:
        new.rename(root)
    except OSError:
        if old.exists():
            old.rename(root)
        raise
    shutil.rmtree(old, ignore_errors=True)
