"""A platform's own record of its evaluation metrics, one JSON line per evaluation.

Why: under secure aggregation a platform's metrics never leave it by default (the server
sees only the cohort's mean), so the platform's operator reads its own numbers here,
beside its private parameters: ``<state-dir>/<platform>/<run>/metrics.jsonl`` on a
deployed node, ``<out-dir>/private/<platform>/metrics.jsonl`` in simulation.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

METRICS_LOG = "metrics.jsonl"


def append_metrics(folder: Path | None, server_round: int, metrics: Mapping[str, float]) -> Path | None:
    """Append one line ``{"round", "time", "metrics"}``; NaN becomes null. None without a folder."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    clean = {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())}
    path = folder / METRICS_LOG
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"round": server_round, "time": round(time.time(), 3), "metrics": clean}) + "\n")
    return path
