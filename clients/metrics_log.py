"""A platform's own record of its evaluation metrics, one JSON line per evaluation.

Why: under secure aggregation a platform's metrics never leave it by default (the server
sees only the cohort's mean), so the platform's operator reads its own numbers here,
beside its private parameters: ``<state-dir>/<platform>/<run>/metrics.jsonl`` on a
deployed node, ``<out-dir>/private/<platform>/metrics.jsonl`` in simulation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from common.run_files import append_jsonl

METRICS_LOG = "metrics.jsonl"


def append_metrics(folder: Path | None, server_round: int, metrics: Mapping[str, float]) -> Path | None:
    """Append one line ``{"round", "time", "metrics"}``; NaN becomes null. None without a folder."""
    if folder is None:
        return None
    path = folder / METRICS_LOG
    append_jsonl(path, {"round": server_round, "time": round(time.time(), 3), "metrics": dict(sorted(metrics.items()))})
    return path
