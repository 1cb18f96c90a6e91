"""Continue a finished run on new data: its fused adapter and round count as the starting point.

A run folder's checkpoint is tied to its config (new data is a new config), so continuing is a
new run folder whose ``fed.warm-start`` names the old one. The server starts from the old run's
best fused adapter (``<run>/adapter``, the one it exported) and numbers rounds after the old run's
last; each platform starts from its own private parameters of that best round (see
:meth:`clients.private_state.PrivateStore.warm_start`), lined up by item and user id, so new items
and new users start at zero and the rest keep what they learned.

It is refused only where it cannot be sound: a different model (base, LoRA shape, vector size,
private parts, the head's outputs and inputs) than the one that produced the adapter, or a run
that never finished.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import TINY_BASE, AppConfig, ConfigError
from common.modeling import get_trainable_state, load_adapter
from common.run_files import ADAPTER_DIR, SUMMARY_FILE, RunFileError, read_summary

# What may change between the finished run and its continuation: data, training, fusion, rounds...
# but not what shapes or interprets the adapter and the private parameters.
ARCHITECTURE_KEYS = (
    "model.base", "model.dim", "model.private", "model.private-head", "model.pick-head", "model.item-stats",
    "lora.r", "lora.alpha", "lora.target-modules", "lora.freeze-a",
)  # fmt: skip


class WarmStartError(ConfigError):
    """The run named by ``fed.warm-start`` cannot be continued (missing, unfinished, another model)."""


@dataclass
class WarmStart:
    """Where a continued run starts: the old run's fused adapter after its ``rounds_run`` rounds."""

    run_dir: Path
    state: OrderedDict[str, np.ndarray]
    rounds_run: int
    best_round: int


def read_finished_run(run_dir: Path) -> dict:
    """The ``summary.json`` of a finished run; WarmStartError naming what is missing otherwise."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file() or not (run_dir / ADAPTER_DIR).is_dir():
        raise WarmStartError(
            f"`fed.warm-start` = {str(run_dir)!r}: no finished run there (expected {path} and {run_dir / ADAPTER_DIR}/)"
        )
    try:
        summary = read_summary(run_dir) or {}
    except RunFileError as exc:
        raise WarmStartError(str(exc)) from exc
    try:
        int(summary["best_round"]), int(summary["rounds_run"]), dict(summary["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WarmStartError(f"{path}: not a readable run summary ({exc})") from exc
    return summary


def check_same_model(old: dict, new: AppConfig, where: Path) -> None:
    """Refuse a continuation whose model would not fit the old adapter or private parameters."""
    flat = new.to_flat()
    keys = (*ARCHITECTURE_KEYS, "seed") if flat["model.base"] == TINY_BASE else ARCHITECTURE_KEYS  # seeded base
    diffs = [f"`{k}` ({old.get(k)!r} there, {flat[k]!r} now)" for k in keys if old.get(k) != flat[k]]
    if diffs:
        raise WarmStartError(
            f"{where}: cannot continue a run of another model: {'; '.join(diffs)}. "
            "Keep these settings, or start a new run without `fed.warm-start`."
        )


def prepare_warm_start(cfg: AppConfig) -> tuple[AppConfig, WarmStart | None]:
    """``cfg`` with ``fed.warm-start-round`` filled in, and the starting point (None without warm start)."""
    if not cfg.fed.warm_start:
        return cfg, None
    run_dir = Path(cfg.fed.warm_start).expanduser().resolve()
    if run_dir == Path(cfg.out_dir).expanduser().resolve():
        raise WarmStartError(f"`fed.warm-start` is this run's own folder {run_dir}: continue into a new `out-dir`")
    summary = read_finished_run(run_dir)
    old = summary["config"]
    check_same_model(old, cfg, run_dir / SUMMARY_FILE)
    rounds_run, best_round = int(summary["rounds_run"]), int(summary["best_round"])
    if cfg.num_server_rounds <= rounds_run:
        raise WarmStartError(
            f"`num-server-rounds` = {cfg.num_server_rounds}, but {run_dir} already ran {rounds_run} rounds: "
            f"rounds continue after them, so ask for more (e.g. {rounds_run + 3})"
        )
    old_cfg = AppConfig.from_flat({**cfg.to_flat(), **{k: old[k] for k in ARCHITECTURE_KEYS}, "seed": old["seed"]})
    scorer, _ = load_adapter(old_cfg.model, old_cfg.lora, run_dir / ADAPTER_DIR, seed=old_cfg.seed)
    state = get_trainable_state(scorer)
    bad = [k for k, v in state.items() if not np.all(np.isfinite(v))]
    if bad:
        raise WarmStartError(f"{run_dir / ADAPTER_DIR}: adapter tensors {bad[:3]} contain NaN or Inf")
    warm_cfg = cfg.replace(**{"fed.warm-start-round": best_round})
    return warm_cfg, WarmStart(run_dir, state, rounds_run, best_round)
