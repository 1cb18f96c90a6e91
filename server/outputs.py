"""The coordinator's view of a run as it goes: time-stamped round records, TensorBoard scalars, tables.

The files themselves (rounds.jsonl, summary.json: names, JSON without NaN, atomic writes, readers)
have one home, :mod:`common.run_files`; this module adds what a person watching the run sees.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from common.run_files import TENSORBOARD_DIR, add_scalars, append_round, close_tensorboard, tensorboard_writer

log = logging.getLogger("crossfed.server")

TABLE_METRICS = ("auc", "logloss", "hr@10", "ndcg@10")


def now_utc() -> str:
    """ISO-8601 UTC to the second, the time stamp of every rounds.jsonl line."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def round_line(record: Mapping[str, Any], total: int) -> str:
    """The one line a person watching the run reads per round (the streamed ServerApp log, the console):

    ``round 2/5: cohort 3, 4.1 s, valid.auc 0.6123  valid.logloss 0.6931, ε 0.84``: the cohort that
    evaluated, the round's seconds, its aggregate (example-weighted mean) metrics, and the privacy
    budget spent so far when the record carries one (``epsilon``; ``ε -`` while it is not known).
    """
    head = f"round {record.get('round')}/{total}"
    seconds = record.get("seconds")
    took = f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else "? s"
    if record.get("aborted"):
        return f"{head}: aborted after {took}: {record['aborted']}"
    mean = record.get("mean") or {}
    metrics = "  ".join(f"{k} {fmt_number(v)}" for k, v in sorted(mean.items())
                        if k.startswith(("valid.", "test.")) and not k.endswith((".n", "-users")))  # fmt: skip
    parts = [f"cohort {len(record.get('cohort') or [])}", took, metrics or "no metrics"]
    if "epsilon" in record or "privacy" in record:  # the round loop writes privacy = {"epsilon": ...}
        epsilon = record["epsilon"] if "epsilon" in record else (record["privacy"] or {}).get("epsilon")
        parts.append(f"ε {fmt_number(epsilon, digits=3)}")
    failures = record.get("failures") or []
    if failures:
        parts.append(f"{len(failures)} failure(s): {'; '.join(failures)}")
    return f"{head}: " + ", ".join(parts)


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


def server_tensorboard_dir(out_dir: Path, tensorboard_dir: str = "") -> Path:
    """Where the server's scalars go: ``<out-dir>/tensorboard``, or ``DIR/server`` for ``tensorboard-dir = DIR``."""
    return out_dir / TENSORBOARD_DIR if not tensorboard_dir else Path(tensorboard_dir).expanduser() / "server"


class RoundLog:
    """The run's per-round record: a time-stamped line in rounds.jsonl, scalars in TensorBoard, one log line.

    TensorBoard event files (default ``<run>/tensorboard/``, ``tensorboard --logdir <run>``) are
    written with PyTorch's own ``SummaryWriter``, which needs the ``tensorboard`` package; without
    it the run says so once and rounds.jsonl stays the record. The log line (:func:`round_line`)
    is what ``crossfed deploy submit --stream`` shows of each round.
    """

    def __init__(self, out_dir: Path, total: int = 0, tensorboard_dir: Path | None = None) -> None:
        self.out_dir = out_dir
        self.total = total
        self.tensorboard_dir = tensorboard_dir or out_dir / TENSORBOARD_DIR
        self.writer: Any = tensorboard_writer(self.tensorboard_dir)

    def append(self, record: Mapping[str, Any]) -> None:
        stamped = {**record, "time": now_utc()}
        append_round(self.out_dir, stamped)
        log.info("%s", round_line(stamped, self.total))
        add_scalars(self.writer, scalars(stamped), int(stamped["round"]))

    def close(self) -> None:
        close_tensorboard(self.tensorboard_dir)
        self.writer = None

    def __enter__(self) -> RoundLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


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
