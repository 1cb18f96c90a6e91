"""Benchmark of the train batch size: the largest batch the validation metric tolerates, lr scaled.

    crossfed bench batch [--data DATASET] [--batches 64,128,256,512] [--lr-rule sqrt] [--seeds 2]
    crossfed bench batch --quick --json                # CI size: tiny-random base, 2 batch sizes, 1 seed
    crossfed bench batch --data data/ml100k --size full --seeds 3 --jobs 6 --out results/bench-batch

For every batch size B the ``local`` arm of ``crossfed compare`` runs (each platform trains
alone, :func:`server.federation.run_federation` over an in-process transport of that one
platform) with ``train.batch-size = B`` and both learning rates scaled from a reference
``(B_ref, lr_ref)`` (default: the config's ``train.batch-size`` and ``train.lr``). The arms are
ordinary compare arms (``local-b<B>``), so they run as compare's units (``--jobs`` in parallel,
records, logs and compare's own report under ``OUT/compare``). Same data, same seeds, same
examples seen: rounds, local epochs and ``train.max-examples`` are fixed, so a larger B takes
fewer optimiser steps. Early stopping is off (``fed.patience = 0``, unless ``--set`` says
otherwise) so that every B trains every round; the best round is still picked on validation.

Learning-rate rule (``--lr-rule``), ``lr_B = lr_ref * (B / B_ref) ** p``:

* ``sqrt`` (default, p = 1/2): the trainer is AdamW. Adam divides the gradient by its running
  RMS, so the step size does not grow with the gradient's signal; a B-times larger batch cuts the
  gradient noise variance by B, and matching the SDE of the small-batch run needs the lr scaled
  by sqrt(B) (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient
  algorithms"). Linear scaling overshoots with Adam at large B.
* ``linear`` (p = 1): the rule for SGD (Goyal et al. 2017), where the step is proportional to the
  gradient: a B-times larger batch takes B-times fewer steps of the same mean gradient.
* ``none`` (p = 0): lr_ref at every B.

``train.lr`` (shared model) and ``train.private-lr`` (private item/user rows) scale by the same
factor: both are AdamW groups stepping on the batch-mean gradient. Both are in the table and JSON.

Measured per B, per seed, then over seeds (mean and a 95 % Student-t interval, ``t(0.975, n-1)
* std / sqrt(n)``; none for one seed): validation AUC of the best round and its test AUC (mean
over platforms, example-weighted, as compare's report), and train samples/s = examples trained /
seconds spent in the local epochs (:func:`clients.trainer.train`, timed by
:func:`clients.tasks.fit_together`; data preparation, loading and evaluation are not in it),
summed over platforms and rounds. On a shared CPU this is wall time and mostly measures the
neighbours; the GPU run decides. With ``--jobs 1`` every unit runs in this process and the first
one also pays the process's one-time start-up (first kernels, thread pools); with ``--jobs N``
each unit is its own process and pays its own, but units running at the same time share the
device, so samples/s is then the throughput as shared (the speed-up of one loop alone at each
batch is ``crossfed bench train --batch B``).

Choice: the largest B whose mean validation AUC is within ``--tolerance`` (default 0.005 AUC) of
the best B's mean. Not "overlapping intervals": with 2-3 seeds the t-intervals are wide
(t(0.975, 1) = 12.7), so overlap would accept almost any B; the tolerance states the loss we
accept, and the intervals are printed beside it so a reader sees whether a gap is resolved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ConfigError, parse_overrides
from common.files import atomic_write_text
from common.metrics import mean_metrics
from common.run_files import clean, read_rounds, read_summary
from simulations.compare.arms import SIZES, Arm
from simulations.compare.command import CompareOptions, base_config, run_compare

LR_RULES = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}  # exponent p of lr_ref * (B / B_ref) ** p
SCENARIO = "full"  # the dataset as given: no scarce platforms here
ARM_PREFIX = "local-b"
# t(0.975, df) for df = 1..30; beyond, the normal quantile (the interval is then within 2 % of exact)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip
Z975 = 1.960


@dataclass(frozen=True)
class BatchBenchSpec:
    batches: tuple[int, ...] = (64, 128, 256, 512)
    ref_batch: int = 0  # 0 = the config's train.batch-size
    ref_lr: float = 0.0  # 0 = the config's train.lr (train.private-lr scales by the same factor)
    lr_rule: str = "sqrt"
    tolerance: float = 0.005  # validation AUC a larger batch may lose against the best one
    seeds: int = 2
    size: str = "full"  # compare's size preset
    data: str | None = None  # None = the embedded synthetic shops
    base_model: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    jobs: int = 1
    budget_s: float | None = None  # launch no unit after this many seconds (rows then miss seeds)

    def __post_init__(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"`--batches` must be positive integers, got {list(self.batches)}")
        if len(set(self.batches)) != len(self.batches):
            raise ConfigError(f"`--batches` must be distinct, got {list(self.batches)}")
        if self.lr_rule not in LR_RULES:
            raise ConfigError(f"`--lr-rule` must be one of {', '.join(LR_RULES)}, got {self.lr_rule!r}")
        if self.ref_batch < 0 or self.ref_lr < 0 or not self.tolerance >= 0:
            raise ConfigError("`--ref-batch`, `--ref-lr` and `--tolerance` must not be negative")
        if self.seeds < 1:
            raise ConfigError(f"`--seeds` must be positive, got {self.seeds}")


QUICK = BatchBenchSpec(batches=(16, 64), seeds=1, size="ci", base_model="tiny-random")


# --- the maths ----------------------------------------------------------------------------


def scaled_lr(ref_lr: float, ref_batch: int, batch: int, rule: str) -> float:
    """``ref_lr * (batch / ref_batch) ** p`` with p = 1/2 (sqrt), 1 (linear) or 0 (none)."""
    if rule not in LR_RULES:
        raise ConfigError(f"`--lr-rule` must be one of {', '.join(LR_RULES)}, got {rule!r}")
    return ref_lr * (batch / ref_batch) ** LR_RULES[rule]


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, 95 % half-width ``t(0.975, n-1) * std(ddof=1) / sqrt(n)``) of the finite values; NaN
    half-width for fewer than two values, (NaN, NaN) for none."""
    finite = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan
    if finite.size == 1:
        return float(finite[0]), math.nan
    t = T975[finite.size - 2] if finite.size - 1 <= len(T975) else Z975
    return float(finite.mean()), float(t * finite.std(ddof=1) / math.sqrt(finite.size))


def choose_batch(valid_auc: Mapping[int, float], tolerance: float) -> int | None:
    """The largest batch whose validation AUC is at least ``best - tolerance`` (NaN never qualifies,
    nor counts as the best); None when no batch has a finite AUC."""
    finite = {b: v for b, v in valid_auc.items() if math.isfinite(v)}
    if not finite:
        return None
    best = max(finite.values())
    return max(b for b, v in finite.items() if v >= best - tolerance)


# --- running ------------------------------------------------------------------------------


def batch_arms(spec: BatchBenchSpec) -> tuple[list[Arm], dict[str, Any]]:
    """One ``local`` arm per batch size, with the scaled learning rates; and the reference used."""
    cfg = base_config(_compare_options(spec, ""))
    ref_batch = spec.ref_batch or cfg.train.batch_size
    ref_lr = spec.ref_lr or cfg.train.lr
    ref_private = cfg.train.private_lr * (ref_lr / cfg.train.lr)  # the same ratio to train.lr as configured
    arms = []
    for b in spec.batches:
        lr = scaled_lr(ref_lr, ref_batch, b, spec.lr_rule)
        private = scaled_lr(ref_private, ref_batch, b, spec.lr_rule)
        overrides = {"train.batch-size": b, "train.lr": lr, "train.private-lr": private}
        about = f"local, batch {b}, lr {lr:.3g} (private {private:.3g}): {spec.lr_rule} rule from batch {ref_batch}"
        arms.append(Arm(f"{ARM_PREFIX}{b}", "local", overrides, about=about))
    ref = {"batch": ref_batch, "lr": ref_lr, "private_lr": ref_private, "rule": spec.lr_rule}
    return arms, ref


def _compare_options(spec: BatchBenchSpec, out: str, arms: Sequence[Arm] = ()) -> CompareOptions:
    overrides = {"fed.patience": 0, **spec.overrides}  # every B trains every round: same examples seen
    return CompareOptions(
        out=out, data=spec.data, seeds=spec.seeds, size=spec.size, scenario=SCENARIO, base_model=spec.base_model,
        arms=(), extra_arms=arms, overrides=overrides, jobs=spec.jobs, fresh=True, budget_s=spec.budget_s,
    )  # fmt: skip


def seed_measures(out: Path, arm: Arm, seed: int, local_epochs: int) -> dict[str, float] | None:
    """One arm and seed from its record and run folders: valid/test AUC (platform mean), examples
    trained, seconds in local epochs, optimiser steps; None if the unit left no record."""
    from simulations.compare import jobs  # the arms' code (torch): loaded when a bench runs
    from simulations.compare.runner import Record

    try:
        doc = json.loads(jobs.record_path(out, SCENARIO, seed, arm.name).read_text())
    except (OSError, ValueError):
        return None
    data = doc["record"]
    per_platform = {p: {k: math.nan if v is None else v for k, v in m.items()} for p, m in data["per_platform"].items()}
    test = Record(per_platform).with_mean()["mean"].get("auc", math.nan)
    valid: dict[str, dict[str, float]] = {}
    steps = 0
    batch = int(arm.overrides["train.batch-size"])
    for rel in data.get("rounds", []):
        run_dir = (out / rel).parent
        summary = read_summary(run_dir) or {}
        for p, m in summary.get("valid", {}).items():
            valid[p] = {f"valid.{k}": math.nan if v is None else float(v) for k, v in m.items()}
        for rnd in read_rounds(run_dir):
            steps += sum(math.ceil(m.get("num-examples", 0) / batch) for m in rnd.get("train", {}).values())
    spent = data.get("train_time", {}).values()
    return {
        "valid_auc": mean_metrics(valid).get("valid.auc", math.nan), "test_auc": float(test),
        "examples": float(sum(t["examples"] for t in spent)), "train_seconds": float(sum(t["seconds"] for t in spent)),
        "steps": float(steps * local_epochs),
    }  # fmt: skip


def summarise_rows(
    arms: Sequence[Arm], per_seed: Mapping[str, Sequence[dict[str, float] | None]], ref_batch: int, tolerance: float
) -> tuple[list[dict[str, Any]], int | None]:
    """Per batch: lr, samples/s (all seeds' examples / all seeds' seconds), speed-up against the
    reference batch (or the smallest when it was not run), valid/test AUC mean and 95 % half-width."""
    rows = []
    for arm in arms:
        seeds = per_seed[arm.name]
        got = [s for s in seeds if s is not None]
        seconds = sum(s["train_seconds"] for s in got)
        valid, valid_ci = mean_ci([s["valid_auc"] if s else math.nan for s in seeds])
        test, test_ci = mean_ci([s["test_auc"] if s else math.nan for s in seeds])
        rows.append({
            "batch": int(arm.overrides["train.batch-size"]), "lr": arm.overrides["train.lr"],
            "private_lr": arm.overrides["train.private-lr"], "arm": arm.name, "seeds_done": len(got),
            "examples": sum(s["examples"] for s in got), "train_seconds": seconds,
            "steps": sum(s["steps"] for s in got) / max(len(got), 1),
            "samples_per_s": sum(s["examples"] for s in got) / seconds if seconds > 0 else math.nan,
            "valid_auc": valid, "valid_auc_ci95": valid_ci, "test_auc": test, "test_auc_ci95": test_ci,
            "per_seed": list(seeds),
        })  # fmt: skip
    batches = [r["batch"] for r in rows]
    base = next(r for r in rows if r["batch"] == (ref_batch if ref_batch in batches else min(batches)))
    chosen = choose_batch({r["batch"]: r["valid_auc"] for r in rows}, tolerance)
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base["samples_per_s"] if base["samples_per_s"] > 0 else math.nan
        r["chosen"] = r["batch"] == chosen
    return sorted(rows, key=lambda r: r["batch"]), chosen


def run(spec: BatchBenchSpec, out: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every batch size's local arm (compare's units, under ``out``) and measure it."""
    from simulations.compare.runner import hardware

    arms, ref = batch_arms(spec)
    cfg = base_config(_compare_options(spec, ""))
    progress(f"bench batch: batches {', '.join(map(str, spec.batches))}, {spec.lr_rule} lr rule from batch "
             f"{ref['batch']}, lr {ref['lr']:.3g}; {spec.seeds} seed(s), size {spec.size}; logs in {out}")  # fmt: skip
    started = time.time()
    report = run_compare(_compare_options(spec, str(out), arms))
    per_seed = {a.name: [seed_measures(out, a, k, cfg.train.local_epochs) for k in range(spec.seeds)] for a in arms}
    rows, chosen = summarise_rows(arms, per_seed, ref["batch"], spec.tolerance)
    return {
        "rows": rows, "chosen_batch": chosen, "reference": ref, "tolerance": spec.tolerance,
        "timing": "seconds inside clients.trainer.train (local epochs), summed over platforms and rounds",
        "spec": {**{k: v for k, v in vars(spec).items() if k != "overrides"}, "overrides": dict(spec.overrides)},
        "config": cfg.to_flat(), "hardware": hardware(), "wall_s": time.time() - started,
        "failed": report["meta"].get("failed", []), "not_started": report["meta"].get("not_started", []),
        "compare_report": str(out / "report.json"),
    }  # fmt: skip


# --- output -------------------------------------------------------------------------------


def _pm(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4f} ± {half:.4f}" if math.isfinite(half) else f"{mean:.4f}"


def format_table(payload: Mapping[str, Any]) -> str:
    """A markdown table: one row per batch size, the chosen one marked."""
    ref, hw = payload["reference"], payload["hardware"]
    lines = [
        f"batch-size bench: {ref['rule']} lr rule from batch {ref['batch']}, lr {ref['lr']:.3g}; tolerance "
        f"{payload['tolerance']} valid AUC; device {hw.get('gpu') or hw.get('cpu')}; {payload['spec']['seeds']} "
        f"seed(s), ± = 95 % t-interval over seeds",
        "",
        "| batch | lr | private lr | seeds | steps/seed | train samples/s | speed-up | valid AUC | test AUC | chosen |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in payload["rows"]:
        lines.append(f"| {r['batch']} | {r['lr']:.3g} | {r['private_lr']:.3g} | {r['seeds_done']} | {r['steps']:.0f} | "
                     f"{r['samples_per_s']:.1f} | {r['speedup']:.2f}x | {_pm(r['valid_auc'], r['valid_auc_ci95'])} | "
                     f"{_pm(r['test_auc'], r['test_auc_ci95'])} | {'**yes**' if r['chosen'] else ''} |")  # fmt: skip
    chosen = payload["chosen_batch"]
    lines += ["", f"chosen: batch {chosen}" if chosen is not None else "chosen: none (no batch size finished)"]
    if payload["failed"]:
        lines.append(f"failed units: {', '.join(f['unit'] for f in payload['failed'])}")
    if payload["not_started"]:
        lines.append(f"not started (--budget-s spent): {', '.join(payload['not_started'])}")
    return "\n".join(lines)


def plot(payload: Mapping[str, Any], path: Path) -> None:
    """Validation AUC (95 % interval bars) and train samples/s against the batch size, log2 axis."""
    from simulations.compare.report import _plt

    plt = _plt()
    rows = payload["rows"]
    batches = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    errs = [r["valid_auc_ci95"] if math.isfinite(r["valid_auc_ci95"]) else 0.0 for r in rows]
    ax.errorbar(batches, [r["valid_auc"] for r in rows], yerr=errs, marker="o", capsize=4, color="C0")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("train batch size")
    ax.set_ylabel("validation AUC (mean over platforms)", color="C0")
    if payload["chosen_batch"] is not None:
        ax.axvline(payload["chosen_batch"], color="grey", linestyle="--", label=f"chosen {payload['chosen_batch']}")
        ax.legend(loc="lower left")
    speed = ax.twinx()
    speed.plot(batches, [r["samples_per_s"] for r in rows], marker="s", color="C1")
    speed.set_ylabel("train samples/s", color="C1")
    ax.set_title(f"batch size vs validation AUC and speed ({payload['reference']['rule']} lr rule)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(payload: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.json", json.dumps(clean(payload), indent=2) + "\n")
    atomic_write_text(out / "table.md", format_table(payload) + "\n")
    plot(payload, out / "bench.png")


# --- command line -------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"`--batches` must be a comma list of integers, got {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> tuple[BatchBenchSpec, argparse.Namespace]:
    d = BatchBenchSpec()
    p = argparse.ArgumentParser(prog="crossfed bench batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: tiny-random base, --size ci, batches 16,64, 1 seed")
    p.add_argument("--batches", help=f"comma list of train batch sizes (default {','.join(map(str, d.batches))})")
    p.add_argument("--ref-batch", type=int, help="batch size of the reference lr (default: the config's)")
    p.add_argument("--ref-lr", type=float, help="train.lr at the reference batch (default: the config's)")
    p.add_argument("--lr-rule", choices=list(LR_RULES), help=f"how lr scales with the batch (default {d.lr_rule})")
    p.add_argument("--tolerance", type=float, help=f"valid AUC a larger batch may lose (default {d.tolerance})")
    p.add_argument("--seeds", type=int, help=f"seeds 0..N-1 (default {d.seeds})")
    p.add_argument("--size", choices=sorted(SIZES), help=f"compare's size preset (default {d.size})")
    p.add_argument("--data", help="DATASET folder (default: the embedded synthetic shops)")
    p.add_argument("--base-model", help="'default' (MiniLM), 'tiny-random' or a local Hugging Face model path")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key, e.g. train.local-epochs=2")
    p.add_argument("--jobs", type=int, help="units (seed x batch) at a time, each in its own process (default 1)")
    p.add_argument("--budget-s", type=float, help="launch no unit after this many seconds (rows may miss seeds)")
    p.add_argument("--json", action="store_true", help="print the JSON payload instead of the table")
    p.add_argument("--out", type=Path, help="write bench.json, table.md, bench.png here (compare's run: OUT/compare)")
    args = p.parse_args(argv)
    spec = QUICK if args.quick else d
    values = {"batches": _ints(args.batches) if args.batches else None, "ref_batch": args.ref_batch,
              "ref_lr": args.ref_lr, "lr_rule": args.lr_rule, "tolerance": args.tolerance, "seeds": args.seeds,
              "size": args.size, "data": str(Path(args.data).resolve()) if args.data else None,
              "base_model": args.base_model, "jobs": args.jobs, "budget_s": args.budget_s,
              "overrides": parse_overrides(args.set) if args.set else None}  # fmt: skip
    return replace(spec, **{k: v for k, v in values.items() if v is not None}), args


def main(argv: Sequence[str] | None = None) -> int:
    spec, args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.json:  # stdout is the JSON alone: progress (ours and compare's) goes to stderr
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        root = args.out / "compare" if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        payload = run(spec, root.resolve())
    payload["command"] = " ".join(["crossfed bench batch", *(argv if argv is not None else sys.argv[1:])])
    payload["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.out:
        write_outputs(payload, args.out)
    print(json.dumps(clean(payload), indent=2) if args.json else format_table(payload))
    return 1 if payload["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
