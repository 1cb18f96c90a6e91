"""What ``crossfed compare`` leaves in RUN/: report.json, report.md, report.png, rounds.png.

``report.json``: ``results[scenario][arm][platform | "mean"][metric] = {mean, std, values}``
(values per seed, in seed order; std is the sample std over seeds, 0 for one seed), ``wall_s``
per scenario and arm, ``targets`` (each met / missed / not evaluated, with its margin), and
``meta`` (config, seeds, scenarios, arms, hardware, total wall time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.outputs import atomic_write_text, to_json

METRICS = ("auc", "logloss", "hr@10", "ndcg@10")
METRIC_NAMES = {"auc": "test AUC", "logloss": "test log-loss", "hr@10": "HR@10", "ndcg@10": "NDCG@10"}
SCARCE_GAIN = 0.03  # scarce: federated must beat local by this much AUC on each small platform
POOLED_GAP = 0.005  # full: federated mean AUC within this of pooled
BASELINES_TO_BEAT = ("liked-share", "popularity")


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """{mean, std, values}: mean and sample std (ddof 1; 0 for one value) of the finite values."""
    vals = [float(v) if v is not None else math.nan for v in values]
    finite = np.array([v for v in vals if math.isfinite(v)])
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan)
    return {"mean": mean, "std": std, "values": vals}


def aggregate(results: Mapping[str, Mapping[str, Mapping[int, Any]]]) -> dict[str, Any]:
    """Records (scenario -> arm -> seed -> Record) -> scenario -> arm -> platform -> metric -> summary."""
    out: dict[str, Any] = {}
    for scenario, arms in results.items():
        out[scenario] = {}
        for arm, by_seed in arms.items():
            per_seed = [by_seed[s].with_mean() for s in sorted(by_seed)]
            platforms = sorted({p for r in per_seed for p in r}, key=lambda p: (p == "mean", p))
            out[scenario][arm] = {
                p: {m: summarise([r.get(p, {}).get(m, math.nan) for r in per_seed]) for m in METRICS} for p in platforms
            }
    return out


def wall_times(results: Mapping[str, Mapping[str, Mapping[int, Any]]]) -> dict[str, Any]:
    return {
        s: {a: {"total_s": sum(r.wall_s for r in by.values()), "values": [by[k].wall_s for k in sorted(by)]}
            for a, by in arms.items()}
        for s, arms in results.items()
    }  # fmt: skip


# --- targets ------------------------------------------------------------------------------


def _auc(agg: Mapping[str, Any], scenario: str, arm: str, platform: str) -> tuple[float, float] | None:
    try:
        cell = agg[scenario][arm][platform]["auc"]
    except KeyError:
        return None
    return (cell["mean"], cell["std"]) if math.isfinite(cell["mean"]) else None


def _target(name: str, scenario: str, met: bool | None, margin: float | None, detail: str) -> dict[str, Any]:
    return {"target": name, "scenario": scenario, "met": met, "margin": margin, "detail": detail}


def evaluate_targets(agg: Mapping[str, Any], meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met / missed / not evaluated (missing arm or scenario), with its margin."""
    out: list[dict[str, Any]] = []
    scen = meta.get("scenarios", {})
    if "scarce" in agg:
        large = scen["scarce"]["large_platform"]
        platforms = [p for p in sorted(scen["scarce"]["users"]) if p != large]
        for p in platforms:
            fed, loc = _auc(agg, "scarce", "federated", p), _auc(agg, "scarce", "local", p)
            if fed is None or loc is None:
                out.append(
                    _target(
                        f"federated >= local + {SCARCE_GAIN} AUC on {p}",
                        "scarce",
                        None,
                        None,
                        "not evaluated (federated or local missing)",
                    )
                )
                continue
            margin = fed[0] - loc[0] - SCARCE_GAIN
            out.append(
                _target(
                    f"federated >= local + {SCARCE_GAIN} AUC on {p}",
                    "scarce",
                    margin >= 0,
                    margin,
                    f"federated {fed[0]:.4f} vs local {loc[0]:.4f}: gain {fed[0] - loc[0]:+.4f}",
                )
            )
        loc = _auc(agg, "scarce", "local", large)
        feds = {a: _auc(agg, "scarce", a, large) for a in ("federated", "fed+personal")}
        feds = {a: v for a, v in feds.items() if v is not None}
        if loc is None or not feds:
            out.append(_target(f"federated (or +personal) >= local on {large}", "scarce", None, None, "not evaluated"))
        else:
            arm, best = max(feds.items(), key=lambda kv: kv[1][0])
            margin = best[0] - loc[0]
            out.append(
                _target(
                    f"federated (or +personal) >= local on {large}",
                    "scarce",
                    margin >= 0,
                    margin,
                    f"{arm} {best[0]:.4f} vs local {loc[0]:.4f}",
                )
            )
    if "full" in agg:
        for p in sorted(scen["full"]["users"]):
            per, loc = _auc(agg, "full", "fed+personal", p), _auc(agg, "full", "local", p)
            name = f"fed+personal > local on {p}, non-overlapping ±1 std"
            if per is None or loc is None:
                out.append(_target(name, "full", None, None, "not evaluated (fed+personal or local missing)"))
                continue
            margin = (per[0] - per[1]) - (loc[0] + loc[1])
            out.append(
                _target(
                    name,
                    "full",
                    margin > 0,
                    margin,
                    f"fed+personal {per[0]:.4f} ± {per[1]:.4f} vs local {loc[0]:.4f} ± {loc[1]:.4f}",
                )
            )
        fed, pooled = _auc(agg, "full", "federated", "mean"), _auc(agg, "full", "pooled", "mean")
        name = f"federated mean AUC within {POOLED_GAP} of pooled"
        if fed is None or pooled is None:
            out.append(_target(name, "full", None, None, "not evaluated (federated or pooled missing)"))
        else:
            margin = fed[0] - pooled[0] + POOLED_GAP
            out.append(
                _target(
                    name,
                    "full",
                    margin >= 0,
                    margin,
                    f"federated {fed[0]:.4f} vs pooled {pooled[0]:.4f}: gap {fed[0] - pooled[0]:+.4f}",
                )
            )
    trained = [a for a, info in meta.get("arms", {}).items() if info.get("trained")]
    for scenario in agg:
        name = "every trained arm beats liked-share and popularity on every platform (AUC)"
        have = [b for b in BASELINES_TO_BEAT if b in agg[scenario]]
        if not trained or len(have) < len(BASELINES_TO_BEAT):
            out.append(_target(name, scenario, None, None, "not evaluated (baselines or trained arms missing)"))
            continue
        worst: tuple[float, str] = (math.inf, "")
        for arm in trained:
            for p in agg[scenario][arm]:
                if p == "mean":
                    continue
                for b in have:
                    mine, theirs = _auc(agg, scenario, arm, p), _auc(agg, scenario, b, p)
                    if mine is None or theirs is None:
                        worst = min(worst, (-math.inf, f"{arm} or {b} has no AUC on {p}"))
                        continue
                    worst = min(worst, (mine[0] - theirs[0], f"{arm} {mine[0]:.4f} vs {b} {theirs[0]:.4f} on {p}"))
        margin = worst[0] if math.isfinite(worst[0]) else None
        out.append(_target(name, scenario, worst[0] > 0, margin, f"tightest: {worst[1]}"))
    return out


# --- writing ------------------------------------------------------------------------------


def write_report(out: Path, results: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    agg = aggregate(results)
    report = {
        "results": agg,
        "wall_s": wall_times(results),
        "rounds": {s: {a: [p for r in by.values() for p in r.rounds] for a, by in arms.items()}
                   for s, arms in results.items()},
        "best_round": {s: {a: [r.best_round for _, r in sorted(by.items())] for a, by in arms.items()}
                       for s, arms in results.items()},
        "targets": evaluate_targets(agg, meta),
        "arm_order": list(meta.get("arms", {})),  # JSON keys come back sorted; tables and plots keep this order
        "meta": dict(meta),
    }  # fmt: skip
    atomic_write_text(out / "report.json", to_json(report) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    plot_auc(report, out / "report.png")
    plot_rounds(report, out, out / "rounds.png")
    return report


def _ordered(report: Mapping[str, Any], arms: Mapping[str, Any]) -> list[tuple[str, Any]]:
    order = [a for a in report.get("arm_order", []) if a in arms]
    return [(a, arms[a]) for a in order + sorted(set(arms) - set(order))]


def _cell(summary: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not summary or summary["mean"] is None or not math.isfinite(summary["mean"]):
        return "–"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    hw = meta["hardware"]
    cfg = meta["config"]
    device = hw["gpu"] or f"{hw['cpu']} ({hw['cpu_cores']} cores, no GPU)"
    lines = [
        "# Does federation pay? local vs federated vs pooled",
        "",
        f"- size `{meta['size']}`, seeds {meta['seeds']} (mean ± sample std over seeds), base model "
        f"`{cfg['model.base']}`, data `{meta['data'] or 'embedded synthetic shops'}`",
        f"- budget per platform: {cfg['num-server-rounds']} rounds x {cfg['train.local-epochs']} local epoch(s) x "
        f"{cfg['train.max-examples'] or 'all'} train examples; early stopping patience {cfg['fed.patience']} "
        f"on mean valid {cfg['fed.metric']}; ranking: {cfg['eval.max-rank-users'] or 'all'} users/platform x "
        f"(1 + {cfg['data.rank-negatives']}) candidates",
        f"- hardware: {device}; torch {hw['torch']}; total wall time {meta['total_wall_s'] / 60:.1f} min",
        "",
    ]
    for scenario, arms in report["results"].items():
        info = meta["scenarios"][scenario]
        users = ", ".join(f"{p} {n}" for p, n in info["users"].items())
        lines += [f"## Scenario `{scenario}`", "", f"Users per platform: {users}."]
        if info.get("large_platform"):
            lines.append(f"Scarce: {info['large_platform']} keeps every user, the others a seeded "
                         f"{info['scarce_fraction']:.0%}.")  # fmt: skip
        lines.append("")
        platforms = sorted({p for a in arms.values() for p in a}, key=lambda p: (p == "mean", p))
        for metric in METRICS:
            extra = " | wall s / seed" if metric == "auc" else ""
            lines += [f"### {METRIC_NAMES[metric]}", "", "| arm | " + " | ".join(platforms) + extra + " |",
                      "|---" * (len(platforms) + 1 + bool(extra)) + "|"]  # fmt: skip
            for arm, per in _ordered(report, arms):
                cells = [_cell(per.get(p, {}).get(metric)) for p in platforms]
                if extra:
                    walls = report["wall_s"][scenario][arm]["values"]
                    cells.append(f"{np.mean(walls):.0f}")
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Targets", "", "| scenario | target | met | margin | detail |", "|---|---|---|---|---|"]
    for t in report["targets"]:
        met = {True: "**met**", False: "**missed**", None: "not evaluated"}[t["met"]]
        margin = f"{t['margin']:+.4f}" if t["margin"] is not None else "–"
        lines.append(f"| {t['scenario']} | {t['target']} | {met} | {margin} | {t['detail']} |")
    lines += ["", "The TALLRec target (movie test AUC >= 0.76) is checked by `crossfed tallrec` (its own report).", ""]
    lines += ["## Arms", ""]
    for name, info in meta["arms"].items():
        lines.append(f"- `{name}` ({info['kind']}): {info['about']}")
    lines += ["", "Metrics: per platform on its test split (AUC, log-loss) and ranking cases (HR@10, NDCG@10 of the "
              "held-out liked item against sampled unseen items, pessimistic ties), at the best round by mean "
              "validation metric; `mean` = example-weighted over platforms.", ""]  # fmt: skip
    return "\n".join(lines)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_auc(report: Mapping[str, Any], path: Path) -> None:
    """Per scenario: grouped bars of test AUC per platform (and mean), one bar per arm, ±1 std error bars."""
    plt = _plt()
    results = report["results"]
    fig, axes = plt.subplots(len(results), 1, figsize=(14, 4.5 * len(results)), squeeze=False)
    for ax, (scenario, arms) in zip(axes[:, 0], results.items(), strict=True):
        platforms = sorted({p for a in arms.values() for p in a}, key=lambda p: (p == "mean", p))
        width = 0.8 / max(1, len(arms))
        x = np.arange(len(platforms))
        lows = []
        for i, (arm, per) in enumerate(_ordered(report, arms)):
            means = [per.get(p, {}).get("auc", {}).get("mean", math.nan) for p in platforms]
            stds = [per.get(p, {}).get("auc", {}).get("std", 0.0) for p in platforms]
            means = [m if m is not None else math.nan for m in means]
            stds = [s if s is not None and math.isfinite(s) else 0.0 for s in stds]
            ax.bar(x - 0.4 + (i + 0.5) * width, means, width, yerr=stds, capsize=2, label=arm)
            lows += [m for m in means if math.isfinite(m)]
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, platforms)
        ax.set_ylabel("test AUC")
        ax.set_ylim(max(0.0, min(lows, default=0.5) - 0.05), min(1.0, max(lows, default=0.5) + 0.05))
        ax.set_title(f"scenario {scenario}: test AUC per platform (mean ± 1 std over seeds)")
        ax.legend(ncol=min(8, len(arms)), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_rounds(path: Path, metric: str) -> list[float]:
    """Mean validation ``metric`` per round of one run's rounds.jsonl."""
    if not path.is_file():
        return []
    values = []
    for line in path.read_text().splitlines():
        value = json.loads(line)["mean"].get(f"valid.{metric}")
        values.append(float(value) if value is not None else math.nan)
    return values


def plot_rounds(report: Mapping[str, Any], out: Path, path: Path) -> None:
    """Per scenario: mean validation metric per round of every multi-platform run (one line per seed)."""
    plt = _plt()
    metric = report["meta"]["config"]["fed.metric"]
    rounds = report["rounds"]
    fig, axes = plt.subplots(1, len(rounds), figsize=(7 * len(rounds), 4.5), squeeze=False)
    for ax, (scenario, arms) in zip(axes[0], rounds.items(), strict=True):
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (arm, paths) in enumerate(_ordered(report, arms)):
            if arm == "local" or not paths:  # local runs are one platform each: not a federated mean
                continue
            for j, rel in enumerate(paths):
                values = read_rounds(out / rel, metric)
                ax.plot(range(1, len(values) + 1), values, marker="o", color=colours[i % len(colours)],
                        alpha=0.8, lw=1.2, label=arm if j == 0 else None)  # fmt: skip
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f"mean valid {metric}")
        ax.set_title(f"scenario {scenario}: federated runs, one line per seed")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
