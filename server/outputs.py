"""What a run leaves on disk: rounds.jsonl, summary.json, TensorBoard logs, the best adapter, a table.

Every file is written to a temp name and renamed, so a crash never leaves half a file; file
modes follow one rule (:mod:`common.files`: results ``0o666`` less the umask).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from common.files import atomic_write_bytes, result_mode
from common.run_layout import ADAPTER_DIR as ADAPTER_DIR  # re-exported: the server writes these
from common.run_layout import ROUNDS_FILE as ROUNDS_FILE
from common.run_layout import SUMMARY_FILE as SUMMARY_FILE

log = logging.getLogger("crossfed.server")

TENSORBOARD_DIR = "tensorboard"
TABLE_METRICS = ("auc", "logloss", "hr@10", "ndcg@10")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(_clean(value), indent=2, sort_keys=True)


def append_round(out_dir: Path, record: Mapping[str, Any]) -> None:
    """One JSON line per round; appended and flushed so a crash keeps finished rounds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / ROUNDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, result_mode())
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_clean(record), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def now_utc() -> str:
    """ISO-8601 UTC to the second, the time stamp of every rounds.jsonl line."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """A round's numbers as TensorBoard tags: ``<split>.<metric>/<platform>`` (one chart per metric,
    a line per platform, ``mean`` the example-weighted mean), ``train.<metric>/<platform>``, ``seconds``."""
    out: dict[str, float] = {}
    for platform, metrics in record.get("eval", {}).items():
        out.update({f"{k}/{platform}": v for k, v in metrics.items()})
    out.update({f"{k}/mean": v for k, v in record.get("mean", {}).items()})
    for platform, metrics in record.get("train", {}).items():
        out.update({f"train.{k}/{platform}": v for k, v in metrics.items()})
    if "seconds" in record:
        out["seconds"] = record["seconds"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


class RoundLog:
    """The run's per-round record: a time-stamped line in rounds.jsonl, scalars in TensorBoard.

    TensorBoard event files (``<run>/tensorboard/``, ``tensorboard --logdir <run>``) are written
    with PyTorch's own ``SummaryWriter``, which needs the ``tensorboard`` package; without it the
    run says so once and rounds.jsonl stays the record.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises it when the tensorboard package is missing
            log.info("no TensorBoard logs: the `tensorboard` package is not installed (pip install tensorboard)")
            return
        self.writer = SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR))

    def append(self, record: Mapping[str, Any]) -> None:
        stamped = {**record, "time": now_utc()}
        append_round(self.out_dir, stamped)
        if self.writer is not None:
            for tag, value in scalars(stamped).items():
                self.writer.add_scalar(tag, value, global_step=int(stamped["round"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> RoundLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = out_dir / SUMMARY_FILE
    atomic_write_text(path, to_json(summary) + "\n")
    return path


def platform_table(per_platform: Mapping[str, Mapping[str, float]], mean: Mapping[str, float], title: str) -> str:
    """A plain-text per-platform table of test metrics (rendered with rich when printed)."""
    rows = [*per_platform.items(), ("weighted mean", mean)]
    cells = [[name, fmt_number(m.get("test.n"), digits=0), *(fmt_number(m.get(f"test.{k}")) for k in TABLE_METRICS)]
             for name, m in rows]  # fmt: skip
    return render_table(title, ["platform", "n test", *TABLE_METRICS], cells)


def render_table(title: str, columns: list[str], rows: list[list[str]], width: int = 100) -> str:
    """A rich table as plain text (no colour codes, box characters only); the first column left-aligned."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    buf = StringIO()
    Console(file=buf, width=width, force_terminal=False).print(table)
    return buf.getvalue()


def fmt_number(value: Any, digits: int = 4, signed: bool = False) -> str:
    """``value`` to ``digits`` decimals (``+`` for gains when ``signed``); ``-`` when missing or not finite."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
