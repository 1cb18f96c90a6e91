"""Reading a run's records back (common.run_files): rounds.jsonl with a torn last line, summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common.run_files import (
    ROUNDS_FILE,
    RunFileError,
    append_round,
    read_rounds,
    read_summary,
    trim_rounds,
    write_summary,
)


def test_rounds_read_back_in_order_nan_as_null(tmp_path: Path) -> None:
    # Prepare
    append_round(tmp_path, {"round": 1, "mean": {"valid.auc": 0.6}})
    append_round(tmp_path, {"round": 2, "mean": {"valid.auc": math.nan}})
    # Execute / Assert
    assert read_rounds(tmp_path) == [
        {"round": 1, "mean": {"valid.auc": 0.6}},
        {"round": 2, "mean": {"valid.auc": None}},
    ]
    assert read_rounds(tmp_path / "missing") == []


def test_a_torn_last_line_is_not_a_round(tmp_path: Path) -> None:
    # Prepare: a coordinator killed mid-append leaves half a line
    append_round(tmp_path, {"round": 1})
    append_round(tmp_path, {"round": 2})
    with open(tmp_path / ROUNDS_FILE, "a") as fh:
        fh.write('{"round": 3, "me')
    # Execute / Assert: readers stop there; a resume after round 1 keeps only round 1's line
    assert [r["round"] for r in read_rounds(tmp_path)] == [1, 2]
    trim_rounds(tmp_path, 1)
    assert (tmp_path / ROUNDS_FILE).read_text() == json.dumps({"round": 1}) + "\n"


def test_summary_round_trip_missing_and_unreadable(tmp_path: Path) -> None:
    # Prepare / Execute
    path = write_summary(tmp_path, {"best_round": 2, "mean": {"test.auc": math.inf}})
    # Assert
    assert read_summary(tmp_path) == {"best_round": 2, "mean": {"test.auc": None}}
    assert read_summary(tmp_path / "missing") is None
    path.write_text("{not json")
    with pytest.raises(RunFileError, match="summary.json:1: not JSON"):
        read_summary(tmp_path)
    path.write_bytes(b'{"best_round": "\xff"}')
    with pytest.raises(RunFileError, match="summary.json:1: invalid UTF-8"):
        read_summary(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(RunFileError, match="not a run summary"):
        read_summary(tmp_path)
