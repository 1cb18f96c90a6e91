"""A platform's own record of its evaluation metrics, one JSON line per evaluation.

Why: under secure aggregation a platform's metrics never leave it by default (the server
sees only the cohort's mean), so the platform's operator reads its own numbers here,
beside its private parameters: ``<state-dir>/<platform>/<run>/metrics.jsonl`` on a
deployed node, ``<out-dir>/private/<platform>/metrics.jsonl`` in simulation. The same numbers
(and its training loss) go to TensorBoard when asked (:func:`platform_tensorboard_dir`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from common.run_files import add_scalars, append_jsonl, tensorboard_writer

METRICS_LOG = "metrics.jsonl"
TENSORBOARD_KEY = "tensorboard-dir"  # node_config: where a deployed platform writes its TensorBoard scalars


def append_metrics(folder: Path | None, server_round: int, metrics: Mapping[str, float]) -> Path | None:
    """Append one line ``{"round", "time", "metrics"}``; NaN becomes null. None without a folder."""
    if folder is None:
        return None
    path = folder / METRICS_LOG
    append_jsonl(path, {"round": server_round, "time": round(time.time(), 3), "metrics": dict(sorted(metrics.items()))})
    return path


def platform_tensorboard_dir(node_config: Mapping[str, object], run_config_dir: str, platform: str,
                             store_folder: Path | None, simulated: bool) -> Path | None:  # fmt: skip
    """Where this platform writes its own TensorBoard scalars, or None (not asked to).

    Deployed: only where its operator says, node_config ``tensorboard-dir`` = DIR, one folder per
    platform and run, named as its private folder of that run (``DIR/<platform>/<run>``), so two
    platforms on one host never share one; the coordinator's run config never picks a path on a
    platform's disk. Simulated: ``<tensorboard-dir>/<platform>`` of the
    run config (``crossfed simulate --tensorboard DIR``), beside the server's ``DIR/server``.
    """
    if simulated:
        return Path(run_config_dir).expanduser() / platform if run_config_dir else None
    own = node_config.get(TENSORBOARD_KEY)
    if not own or store_folder is None:
        return None
    return Path(str(own)).expanduser() / platform / store_folder.name


def log_scalars(folder: Path | None, server_round: int, metrics: Mapping[str, float], prefix: str = "") -> None:
    """``metrics`` as TensorBoard scalars at step ``server_round``, tags ``<prefix><name>``; none without a folder."""
    if folder is not None:
        add_scalars(tensorboard_writer(folder), {f"{prefix}{k}": v for k, v in metrics.items()}, server_round)
