"""A run folder's files by name, and the one reader and writer of its records: rounds.jsonl, summary.json,
TensorBoard scalars.

The coordinator writes them (``server.outputs``, ``server.federation``); platforms, reports,
benchmarks and ``crossfed deploy status`` read them back, all through here. JSON has no NaN, so
non-finite numbers are written as null and every reader can parse the files. A rounds.jsonl line is
appended and fsynced whole, so only the last line can be torn (a coordinator killed mid-append):
readers stop there, and that round counts as not done.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.files import InputFileError, atomic_write_text, read_json, result_mode

ROUNDS_FILE = "rounds.jsonl"  # one JSON line per round
SUMMARY_FILE = "summary.json"  # best round, its test metrics, the run's flat config
ADAPTER_DIR = "adapter"  # the best fused model: PEFT folder + head.safetensors
PRIVATE_DIR = "private"  # simulation only: <run>/private/<platform>/round-<r>.safetensors
TENSORBOARD_DIR = "tensorboard"  # the server's TensorBoard scalars, unless run config `tensorboard-dir` says where


class RunFileError(InputFileError, ValueError):
    """A run file that exists but cannot be read (not UTF-8, not JSON, or not the expected shape)."""


def clean(value: Any) -> Any:
    """Plain JSON types: numpy arrays and scalars become lists and numbers (``tolist``, so numpy is not
    imported here), and non-finite floats null (JSON has no NaN), so every reader can parse the file."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Indented, key-sorted JSON with non-finite numbers as null (summary.json, reports)."""
    return json.dumps(clean(value), indent=2, sort_keys=True)


def append_round(out_dir: Path, record: Mapping[str, Any]) -> None:
    """One JSON line per round in ``rounds.jsonl``."""
    append_jsonl(out_dir / ROUNDS_FILE, record)


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line (NaN as null), flushed and synced so a crash keeps what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, result_mode())
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(clean(record), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The run's round records in order; [] when there is no rounds.jsonl (yet). Blank lines are
    skipped; the read stops at a line that does not parse (one being written, or torn by a kill)."""
    path = run_dir / ROUNDS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def trim_rounds(run_dir: Path, last_round: int) -> None:
    """Keep the lines of rounds up to ``last_round`` (a resumed run reruns the rest); drops a torn line."""
    path = run_dir / ROUNDS_FILE
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if _round_of(line) <= last_round]
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _round_of(line: str) -> float:
    """The round of a rounds.jsonl line; a torn last line (killed mid-append) counts as not done."""
    try:
        return float(json.loads(line).get("round", 0)) if line.strip() else math.inf
    except json.JSONDecodeError:
        return math.inf


# summary.json `status`: every round fused / some rounds lost (`lost_rounds` names them) / no round fused
COMPLETED, DEGRADED, FAILED = "completed", "degraded", "failed"


def lost_rounds(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{"round": r, "reason": why}]`` for each round record that fused nothing (``aborted``)."""
    return [{"round": r.get("round"), "reason": str(r["aborted"])} for r in records if r.get("aborted")]


def run_status(records: Sequence[Mapping[str, Any]]) -> str:
    """COMPLETED when no round record was lost, FAILED when every one was, else DEGRADED."""
    lost = len(lost_rounds(records))
    if not lost:
        return COMPLETED
    return FAILED if lost == len(records) else DEGRADED


def describe_lost(lost: Sequence[Mapping[str, Any]]) -> str:
    """``rounds 2, 3 lost (round 2: why; round 3: why)``: the lost rounds for a person."""
    numbers = ", ".join(str(r.get("round")) for r in lost)
    reasons = "; ".join(f"round {r.get('round')}: {r.get('reason')}" for r in lost)
    return f"round{'s' if len(lost) > 1 else ''} {numbers} lost ({reasons})"


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """``summary.json``, written atomically; returns its path."""
    path = out_dir / SUMMARY_FILE
    atomic_write_text(path, to_json(summary) + "\n")
    return path


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``; None when the run has written none (yet), RunFileError when unreadable."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = read_json(path, error=RunFileError)  # UTF-8 JSON; else one line naming the file and line
    if not isinstance(summary, dict):
        raise RunFileError(f"{path}: not a run summary (a JSON object), got {type(summary).__name__}")
    return summary


def read_finished_summary(run_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run (one with its ``adapter/``); RunFileError naming what is
    missing otherwise. Light (no torch): the CLI asks it before loading a model from the run."""
    summary = read_summary(run_dir) if (run_dir / ADAPTER_DIR).is_dir() else None
    if summary is None:
        raise RunFileError(
            f"{run_dir}: not a finished run (expected {run_dir / SUMMARY_FILE} and {run_dir / ADAPTER_DIR}/)"
        )
    return summary


# ---------------------------------------------------------------------------- TensorBoard scalars

_WRITERS: dict[Path, Any] = {}  # one writer per folder and process: a warm platform appends to one events file


def tensorboard_writer(folder: Path) -> Any:
    """PyTorch's ``SummaryWriter`` on ``folder`` (made once per process), or None without the ``tensorboard``
    package (said once in the log)."""
    folder = Path(folder).expanduser().resolve()
    if folder not in _WRITERS:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises it when the tensorboard package is missing
            logging.getLogger("crossfed").info("no TensorBoard scalars: the `tensorboard` package is not installed "
                                               "(pip install tensorboard)")  # fmt: skip
            _WRITERS[folder] = None
        else:
            _WRITERS[folder] = SummaryWriter(log_dir=str(folder))
    return _WRITERS[folder]


def add_scalars(writer: Any, values: Mapping[str, Any], step: int) -> None:
    """Each finite number of ``values`` as a scalar at ``step`` (NaN and non-numbers left out), then flushed."""
    if writer is None:
        return
    for tag, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            writer.add_scalar(tag, float(value), global_step=step)
    writer.flush()


def close_tensorboard(folder: Path) -> None:
    """Close (and forget) this process's writer on ``folder``, if any."""
    writer = _WRITERS.pop(Path(folder).expanduser().resolve(), None)
    if writer is not None:
        writer.close()
