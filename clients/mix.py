"""A platform's personal mix: ``a`` x the fused model + ``(1 - a)`` x its own local model, ``a`` picked
on the platform's validation split.

Why: on platforms whose data differ (the genre platforms of ML-100K), the fused model alone was
up to 0.005 AUC below training alone on some platforms and above it on others; mixing each
platform's end of the federation with a model it trained alone, with the share chosen on its own
validation split, was never measurably below either (``results/quality-cpu-2026-12-06/cross-mix/``).
The comparison harness measures this as its ``fed+mix`` arm; this module is what a platform runs
after a federation, on its own machine: nothing here is sent anywhere.

Both ends are whole models: the shared tensors (LoRA adapter, tower, head) and the platform's
private parameters (item and user biases and vectors), averaged tensor by tensor, private rows
matched by item and user id. The result is a finished run folder of its own (``adapter/``,
``private/<platform>/``, ``summary.json`` with the shares tried and their validation metrics), so
``crossfed recommend / score / serve / export`` use it as they use any run.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.private_state import PrivateStore, private_folder
from common.config import AppConfig
from common.fusion import weighted_average
from common.metrics import strip_test_prefix
from common.run_files import ADAPTER_DIR, RunFileError, read_finished_summary, write_summary

# the fused model's share a, tried on validation (also the comparison's fed+mix arm); torch is imported
# inside the functions, so the CLI and the arms table can read this without loading a model
MIX_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
# model settings both ends must share for their tensors to be averaged meaningfully
SAME_MODEL = ("model.base", "model.dim", "model.private", "model.pick-head", "model.item-stats", "lora.r",
              "lora.target-modules", "lora.top-layers", "lora.private-b", "model.private-head")  # fmt: skip

Tensors = Mapping[str, np.ndarray]


class MixError(ValueError):
    """Two runs that cannot be mixed, or a mix that cannot be written; the message says why."""


@dataclass(frozen=True)
class End:
    """One run's model as this platform holds it: the shared tensors and its private ones of the best round."""

    run: Path
    cfg: AppConfig
    summary: dict[str, Any]
    shared: OrderedDict[str, np.ndarray]
    private: OrderedDict[str, np.ndarray]
    index: dict[str, list[str]] | None


@dataclass(frozen=True)
class MixResult:
    share: float  # the fused model's share that validated best
    metric: str  # what it was picked on: ``valid.<fed.metric>``
    valid: dict[float, dict[str, float]]  # share -> this platform's validation metrics
    test: dict[str, float]  # the chosen mix's test metrics
    out: Path


def mix_tensors(fused: Tensors, own: Tensors, share: float) -> OrderedDict[str, np.ndarray]:
    """``share * fused + (1 - share) * own``, tensor by tensor; both must hold the same names and shapes."""
    if set(fused) != set(own):
        missing = sorted(set(fused) ^ set(own))[:5]
        raise MixError(f"the two models hold different tensors (e.g. {', '.join(missing)}): not the same model")
    for name, value in fused.items():
        if np.shape(value) != np.shape(own[name]):
            raise MixError(f"tensor `{name}` has shape {np.shape(value)} in the fused model and "
                           f"{np.shape(own[name])} in the local one: not the same model")  # fmt: skip
    return weighted_average([fused, own], [share, 1.0 - share])


def pick_share(valid: Mapping[float, Mapping[str, float]], metric: str) -> float:
    """The share whose validation ``metric`` is best (log-loss: lowest); ties go to the larger share
    (more of the fused model). A share without a finite metric is never picked."""
    sign = -1.0 if metric.endswith("logloss") else 1.0
    scored = [(sign * m[metric], s) for s, m in valid.items() if math.isfinite(m.get(metric, math.nan))]
    if not scored:
        raise MixError(f"no share gave a finite `{metric}` on this platform's validation split")
    return max(scored)[1]


def read_end(run: Path, platform: str, state_dir: str | None = None) -> End:
    """The best round's model of a finished run, as ``platform`` holds it (private parts from the run's
    ``private/`` folder, or a deployed platform's ``state_dir``)."""
    from common.modeling import get_trainable_state, load_adapter

    run = run.expanduser().resolve()
    try:
        summary = read_finished_summary(run)
    except RunFileError as exc:
        raise MixError(str(exc)) from None
    cfg = AppConfig.from_flat(summary["config"])
    best = int(summary["best_round"])
    store = PrivateStore(private_folder(cfg.out_dir if state_dir else str(run), platform, state_dir))
    private = store.load(best)
    if private is None:
        hint = "" if state_dir else " (a deployed platform: pass its --state-dir)"
        raise MixError(f"{run}: no private parameters of platform {platform!r} at or before round {best} in "
                       f"{store.folder}{hint}")  # fmt: skip
    scorer, _ = load_adapter(cfg.model, cfg.lora, run / ADAPTER_DIR, seed=cfg.seed)
    return End(run, cfg, summary, get_trainable_state(scorer), private, store.index(best))


def check_same_model(fused: End, own: End) -> None:
    """MixError naming the first model setting the two runs differ in."""
    a, b = fused.cfg.to_flat(), own.cfg.to_flat()
    for key in SAME_MODEL:
        if a.get(key) != b.get(key):
            raise MixError(f"`{key}` is {a.get(key)!r} in {fused.run} and {b.get(key)!r} in {own.run}: "
                           "only two runs of the same model can be mixed")  # fmt: skip


def aligned_private(fused: End, own: End) -> OrderedDict[str, np.ndarray]:
    """The local run's private tensors with their rows in the fused run's order (matched by id)."""
    from clients.tasks import align_rows

    if fused.index is None or own.index is None:
        return own.private
    for kind in ("items", "users"):
        if set(fused.index[kind]) != set(own.index[kind]):
            only = len(set(fused.index[kind]) ^ set(own.index[kind]))
            raise MixError(f"the two runs' private parameters cover different {kind} ({only} differ): train the "
                           "local model on the same data and split (same data.*, seed) as the federation")  # fmt: skip
    return OrderedDict(align_rows(own.private, own.index, fused.index))


def mix_runs(
    federated: Path, local: Path, platform: str, out: Path, data_dir: str | None = None,
    state_dir: str | None = None, device: str = "auto", shares: Sequence[float] = MIX_SHARES,
) -> MixResult:  # fmt: skip
    """Try each share on ``platform``'s validation split, write the best mix to ``out`` as a finished run."""
    from clients.platform import NodeSetup
    from clients.tasks import evaluate_state
    from common.modeling import load_adapter, save_adapter

    out = out.expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise MixError(f"{out} exists and is not empty: choose a new folder")
    fused, own = read_end(federated, platform, state_dir), read_end(local, platform)
    check_same_model(fused, own)
    own_private = aligned_private(fused, own)
    cfg = fused.cfg.replace(**{"out-dir": str(out), "fed.resume": False},
                            **({"data.dir": data_dir} if data_dir else {}))  # fmt: skip
    setup = NodeSetup(platform, cfg.data.dir, device)
    metric = f"valid.{cfg.fed.metric}"

    def evaluate(share: float, splits: tuple[str, ...]) -> dict[str, float]:
        store = PrivateStore(None)
        store.save(0, mix_tensors(fused.private, own_private, share), fused.index)
        return evaluate_state(cfg, setup, mix_tensors(fused.shared, own.shared, share), 0, store, splits)

    valid = {float(s): evaluate(s, ("valid",)) for s in shares}
    share = pick_share(valid, metric)
    test = strip_test_prefix({k: v for k, v in evaluate(share, ("test",)).items() if k.startswith("test")})
    best = int(fused.summary["best_round"])
    scorer, _ = load_adapter(cfg.model, cfg.lora, fused.run / ADAPTER_DIR, seed=cfg.seed)
    save_adapter(scorer, mix_tensors(fused.shared, own.shared, share), out / ADAPTER_DIR)
    PrivateStore(private_folder(str(out), platform)).save(
        best, mix_tensors(fused.private, own_private, share), fused.index)  # fmt: skip
    write_summary(out, {
        "config": cfg.to_flat(), "best_round": best, "metric": metric, "seed": cfg.seed,
        "test": {platform: test}, "valid": {platform: valid[share]},
        "mix": {"federated": str(fused.run), "local": str(own.run), "platform": platform, "fused-share": share,
                "valid": {str(s): m for s, m in valid.items()}},
    })  # fmt: skip
    return MixResult(share, metric, valid, test, out)
