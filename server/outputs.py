"""What a run leaves on disk: rounds.jsonl, summary.json, the best adapter, a table.

Every file is written to a temp name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.run_layout import ADAPTER_DIR as ADAPTER_DIR  # re-exported: the server writes these
from common.run_layout import ROUNDS_FILE as ROUNDS_FILE
from common.run_layout import SUMMARY_FILE as SUMMARY_FILE

TABLE_METRICS = ("auc", "logloss", "hr@10", "ndcg@10")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    with open(out_dir / ROUNDS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_clean(record), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = out_dir / SUMMARY_FILE
    atomic_write_text(path, to_json(summary) + "\n")
    return path


def platform_table(per_platform: Mapping[str, Mapping[str, float]], mean: Mapping[str, float], title: str) -> str:
    """A plain-text per-platform table of test metrics (rendered with rich when printed)."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("platform")
    table.add_column("n test", justify="right")
    for m in TABLE_METRICS:
        table.add_column(m, justify="right")
    rows = [*per_platform.items(), ("weighted mean", mean)]
    for name, metrics in rows:
        cells = [_fmt(metrics.get(f"test.{m}")) for m in TABLE_METRICS]
        table.add_row(name, _fmt(metrics.get("test.n"), digits=0), *cells)
    buf = StringIO()
    Console(file=buf, width=100, force_terminal=False).print(table)
    return buf.getvalue()


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"
