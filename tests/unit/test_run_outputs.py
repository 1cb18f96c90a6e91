"""What a run writes beside rounds.jsonl: time stamps, TensorBoard scalars, the rounds plot, file modes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.files import SECRET_MODE, atomic_write_bytes, result_mode, umask
from common.run_files import ROUNDS_FILE
from server.outputs import RoundLog, render_table, round_line, scalars, server_tensorboard_dir
from simulations.compare.report import plot_run_rounds, summary_table
from tests.tensorboard_events import read_scalars

RECORD = {
    "round": 1,
    "train": {"app": {"loss": 0.69, "num-examples": 32.0}},
    "eval": {"app": {"valid.auc": 0.6, "test.auc": 0.55}, "web": {"valid.auc": 0.7, "test.auc": float("nan")}},
    "mean": {"valid.auc": 0.65, "test.auc": 0.55},
    "failures": [],
    "seconds": 2.5,
}


def test_scalars_are_one_tag_per_metric_and_platform() -> None:
    # Execute
    tags = scalars(RECORD)
    # Assert: a chart per metric with a line per platform (and the mean); NaN and strings left out
    assert tags == {
        "valid.auc/app": 0.6, "test.auc/app": 0.55, "valid.auc/web": 0.7, "valid.auc/mean": 0.65,
        "test.auc/mean": 0.55, "train.loss/app": 0.69, "train.num-examples/app": 32.0, "seconds": 2.5,
    }  # fmt: skip


def test_round_log_stamps_each_line(tmp_path: Path) -> None:
    # Execute
    with RoundLog(tmp_path) as log:
        log.append(RECORD)
        log.append({**RECORD, "round": 2})
    # Assert
    rows = [json.loads(line) for line in (tmp_path / ROUNDS_FILE).read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["time"].endswith("+00:00") and r["time"][:2] == "20" for r in rows)
    assert rows[0]["eval"]["web"]["test.auc"] is None  # JSON has no NaN
    assert (tmp_path / ROUNDS_FILE).stat().st_mode & 0o777 == result_mode()


def test_round_log_writes_tensorboard_scalars_tensorboard_reads(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Execute
    with RoundLog(tmp_path) as log:
        log.append(RECORD)
        log.append({**RECORD, "round": 2, "mean": {"valid.auc": 0.7}})
    # Assert: TensorBoard's own reader finds every scalar at its round
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "valid.auc/mean" in events.Tags()["scalars"]
    points = [(e.step, round(e.value, 6)) for e in events.Scalars("valid.auc/mean")]
    assert points == [(1, 0.65), (2, 0.7)]


def test_round_log_writes_tensorboard_dir_server_when_asked(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    # Prepare: `tensorboard-dir = <tmp>/tb` (crossfed simulate / deploy submit --tensorboard)
    folder = server_tensorboard_dir(tmp_path / "run", str(tmp_path / "tb"))
    # Execute
    with RoundLog(tmp_path / "run", 2, folder) as log:
        log.append(RECORD)
    # Assert: the scalars are in <tb>/server, none in the run folder
    assert folder == tmp_path / "tb" / "server"
    assert read_scalars(folder)["valid.auc/mean"] == [(1, 0.65)]
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert server_tensorboard_dir(tmp_path, "") == tmp_path / "tensorboard"


@pytest.mark.parametrize(
    ("record", "line"),
    [
        (RECORD, "round 1/5: cohort 0, 2.5 s, test.auc 0.5500  valid.auc 0.6500"),
        ({**RECORD, "cohort": ["app", "web"], "mean": {"valid.auc": 0.65, "valid.n": 40.0, "valid.new-users": 3.0},
          "failures": ["node 7: no reply after 60 s"]},
         "round 1/5: cohort 2, 2.5 s, valid.auc 0.6500, 1 failure(s): node 7: no reply after 60 s"),
        ({**RECORD, "cohort": ["app"], "epsilon": 0.84213}, "round 1/5: cohort 1, 2.5 s, test.auc 0.5500  "
         "valid.auc 0.6500, ε 0.842"),
        ({**RECORD, "cohort": ["app"], "epsilon": None}, "round 1/5: cohort 1, 2.5 s, test.auc 0.5500  "
         "valid.auc 0.6500, ε -"),
        ({**RECORD, "cohort": ["app"], "privacy": {"epsilon": 3.9998, "delta": 0.001}},
         "round 1/5: cohort 1, 2.5 s, test.auc 0.5500  valid.auc 0.6500, ε 4.000"),
        ({"round": 3, "aborted": "secure aggregation: 2 of 3 platforms", "seconds": 61.04},
         "round 3/5: aborted after 61.0 s: secure aggregation: 2 of 3 platforms"),
        ({"round": 2, "cohort": ["app"], "mean": {}, "seconds": 1.0}, "round 2/5: cohort 1, 1.0 s, no metrics"),
    ],
)  # fmt: skip
def test_round_line_is_one_plain_line_per_round(record: dict, line: str) -> None:
    assert round_line(record, 5) == line


def test_round_log_logs_the_round_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Execute
    with caplog.at_level("INFO", logger="crossfed.server"), RoundLog(tmp_path, 5) as log:
        log.append({**RECORD, "cohort": ["app", "web"]})
    # Assert: the same line the streamed ServerApp log shows
    assert [r.getMessage() for r in caplog.records if r.name == "crossfed.server"] == [
        "round 1/5: cohort 2, 2.5 s, test.auc 0.5500  valid.auc 0.6500"
    ]


def test_plot_run_rounds_draws_a_png_beside_rounds_jsonl(tmp_path: Path) -> None:
    # Prepare: two rounds and an aborted one (no metrics)
    lines = [RECORD, {"round": 2, "aborted": "too few platforms", "seconds": 1.0}, {**RECORD, "round": 3}]
    (tmp_path / ROUNDS_FILE).write_text("".join(json.dumps(r).replace("NaN", "null") + "\n" for r in lines))
    # Execute
    path = plot_run_rounds(tmp_path)
    # Assert
    assert path == tmp_path / "rounds.png" and path.read_bytes()[:4] == b"\x89PNG"


def test_plot_run_rounds_without_metrics_draws_nothing(tmp_path: Path) -> None:
    (tmp_path / ROUNDS_FILE).write_text(json.dumps({"round": 1, "aborted": "x"}) + "\n")
    assert plot_run_rounds(tmp_path) is None and not (tmp_path / "rounds.png").exists()


def test_compare_summary_is_one_table_with_a_row_per_arm() -> None:
    # Prepare: two scenarios, two arms
    cell = {"mean": 0.61234, "std": 0.01, "values": [0.6, 0.62]}
    per = {"mean": {"auc": cell, "ndcg@10": cell}}
    report = {"results": {"full": {"local": per, "federated": per}, "scarce": {"local": per}},
              "arm_order": ["local", "federated"]}  # fmt: skip
    # Execute
    text = summary_table(report)
    # Assert
    rows = [line for line in text.splitlines() if "0.6123 ± 0.0100" in line]
    assert [r.split()[1] for r in rows] == ["local", "federated"]
    assert "full AUC" in text and "scarce NDCG@10" in text and text.count("mean test metrics per arm") == 1
    assert "–" in rows[1]  # federated has no scarce record


def test_render_table_has_no_escape_codes() -> None:
    assert "\x1b" not in render_table("t", ["a", "b"], [["x", "1"]])


def test_atomic_write_modes(tmp_path: Path) -> None:
    # Execute
    atomic_write_bytes(tmp_path / "result.json", b"{}")
    atomic_write_bytes(tmp_path / "key.pem", b"secret", mode=SECRET_MODE)
    # Assert: results 0666 less the umask (what open() gives), secrets exactly 0600
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o666 & ~umask()
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem", "result.json"]  # no temp file left


def test_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert umask() == 0o027 and result_mode() == 0o640
    finally:
        os.umask(old)
