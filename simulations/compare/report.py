"""What ``crossfed compare`` leaves in RUN/: report.json, report.md, report.png, paired.png, rounds.png.

``report.json``: ``results[scenario][arm][platform | "mean"][metric] = {mean, std, values}``
(values per planned seed, in seed order, null where that seed's record is missing; std is the
sample std over the seeds present, 0 for one seed; scenario ``new-users`` also has ``k1.auc``, ``k5.auc``:
new users' test AUC with 1 and 5 interactions of history, ``auc`` being k = 3),
``paired[scenario][ref][arm][platform | "mean"] = {diff, low, high, n_boot, n, seeds}`` (paired
bootstrap of the test-AUC difference arm - ref, 95 % interval; every arm against ``local``, the
recommended arm also against the baselines, ``pooled`` and ``mf-central``), ``wall_s`` per scenario
and arm, ``targets`` (each met / missed / not evaluated, with its rule and margin), and ``meta``
(config, kind, seeds, scenarios, arms, hardware, wall time, missing / failed / not started units).

``python -m simulations.compare.report summary --out SUMMARY.md RUN [RUN ...]`` puts the target tables
of several runs (e.g. the cross- and same-domain comparisons) into one file.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_text
from common.metrics import auc, paired_diff_replicates, percentile_interval
from common.run_files import read_rounds, to_json
from server.outputs import render_table

METRICS = ("auc", "logloss", "hr@10", "ndcg@10")
METRIC_NAMES = {"auc": "test AUC", "logloss": "test log-loss", "hr@10": "HR@10", "ndcg@10": "NDCG@10"}
RECOMMENDED = "federated"  # the arm the targets are about: what we tell a platform to deploy (`--recommended`)
REFERENCE = "local"  # every arm's paired interval is taken against this one
# The differentially private arms (dp-eps*) are `federated` plus privacy: paired against it, their interval is
# the cost of privacy alone (against the recommended arm it would mix in what that arm adds, e.g. mixing).
PRIVATE_OF = "federated"
PRIVATE_PREFIX = "dp-"
BASELINES_TO_BEAT = ("like-rate", "popularity", "mf")  # full and scarce
CONTENT = "content"  # frozen text vectors: what the trained text model must add on new items
WARM_SCENARIOS = ("full", "scarce")
NEW_ITEMS_BASELINES = (CONTENT, "mf")  # new-items: the recommended arm beats these by COLD_GAIN
NEW_USERS_BASELINES = ("popularity", "mf")  # new-users: ... and beats these
COLD_GAIN = 0.05  # new items: the recommended arm must beat content, mf (and, same-domain, local) by this much AUC
NEW_USER_HISTORY = {1: "k1.auc", 3: "auc", 5: "k5.auc"}  # new users: history length k -> metric (k = 3 is test)
_EXTRA_AUC = re.compile(r"k(\d+)\.auc")  # test AUC of new users with k interactions of history
STRETCH = "mf-central"  # centralised matrix factorisation: reported when present, not required
SCARCE_GAIN = 0.03  # same-domain, scarce: the recommended arm must beat local by this much AUC
POOLED_GAP = 0.005  # cross-domain: mean AUC within this of pooled, or above
N_BOOT = 1000
LEVEL = 0.95


def summarise(values: Sequence[float | None]) -> dict[str, Any]:
    """{mean, std, values}: mean and sample std (ddof 1; 0 for one value) of the finite values."""
    vals = [float(v) if v is not None else math.nan for v in values]
    finite = np.array([v for v in vals if math.isfinite(v)])
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan)
    return {"mean": mean, "std": std, "values": vals}


def aggregate(
    results: Mapping[str, Mapping[str, Mapping[int, Any]]], seeds: Sequence[int] | None = None
) -> dict[str, Any]:
    """Records (scenario -> arm -> seed -> Record) -> scenario -> arm -> platform -> metric -> summary.

    ``values`` has one entry per seed of ``seeds`` (default: the seeds with records), NaN where
    a seed's record is missing, so a partial run keeps every value at its seed's position.
    """
    out: dict[str, Any] = {}
    for scenario, arms in results.items():
        out[scenario] = {}
        for arm, by_seed in arms.items():
            order = list(seeds) if seeds is not None else sorted(by_seed)
            per_seed = [by_seed[s].with_mean() if s in by_seed else {} for s in order]
            platforms = sorted({p for r in per_seed for p in r}, key=lambda p: (p == "mean", p))
            extra = {m for r in per_seed for per in r.values() for m in per if _EXTRA_AUC.fullmatch(m)}
            metrics = (*METRICS, *sorted(extra, key=lambda m: int(m[1:].split(".")[0])))  # new users: k1.auc, ...
            out[scenario][arm] = {
                p: {m: summarise([r.get(p, {}).get(m, math.nan) for r in per_seed]) for m in metrics} for p in platforms
            }
    return out


def wall_times(results: Mapping[str, Mapping[str, Mapping[int, Any]]]) -> dict[str, Any]:
    return {
        s: {a: {"total_s": sum(r.wall_s for r in by.values()), "values": [by[k].wall_s for k in sorted(by)]}
            for a, by in arms.items()}
        for s, arms in results.items()
    }  # fmt: skip


# --- paired bootstrap intervals -----------------------------------------------------------

Pairs = list[tuple[np.ndarray, np.ndarray, np.ndarray]]
_REPLICATES: dict[str, tuple[float, np.ndarray]] = {}  # the parent rewrites the report after every unit


def score_pairs(by_arm: Mapping[int, Any], by_ref: Mapping[int, Any], platform: str) -> Pairs:
    """(labels, arm probs, ref probs) per seed where both records hold test scores of the same examples.

    A seed whose two label vectors differ (other examples or order) is left out: it cannot be paired.
    """
    pairs: Pairs = []
    for seed in sorted(set(by_arm) & set(by_ref)):
        mine = getattr(by_arm[seed], "scores", {}).get(platform)
        theirs = getattr(by_ref[seed], "scores", {}).get(platform)
        if not mine or not theirs:
            continue
        labels = np.asarray(mine["labels"], dtype=np.float64)
        if labels.size and np.array_equal(labels, np.asarray(theirs["labels"], dtype=np.float64)):
            pairs.append((labels, np.asarray(mine["probs"], np.float64), np.asarray(theirs["probs"], np.float64)))
    return pairs


def _replicates(pairs: Pairs, seed: int) -> tuple[float, np.ndarray]:
    """:func:`paired_diff_replicates` of test AUC, memoised on the inputs' bytes."""
    digest = hashlib.sha1(str(seed).encode())
    for triple in pairs:
        for x in triple:
            digest.update(np.ascontiguousarray(x).tobytes())
    key = digest.hexdigest()
    if key not in _REPLICATES:
        _REPLICATES[key] = paired_diff_replicates(pairs, auc, N_BOOT, seed)
    return _REPLICATES[key]


def _interval(point: float, reps: np.ndarray, n: int, seeds: int) -> dict[str, Any]:
    low, high = percentile_interval(reps, LEVEL)
    return {"diff": point, "low": low, "high": high, "n_boot": N_BOOT, "n": n, "seeds": seeds}


def compare_arms(scenario: str, by_arm: Mapping[int, Any], by_ref: Mapping[int, Any]) -> dict[str, Any]:
    """platform -> paired interval of test AUC (arm - ref), plus ``mean`` when every platform has one.

    Every comparison on one (scenario, platform) resamples with the same generator, so all arms
    see the same bootstrap draws. ``mean`` weights each platform's point and replicates by its
    test examples, as the ``mean`` row of the tables weights AUC.
    """
    platforms = sorted({p for r in [*by_arm.values(), *by_ref.values()] for p in getattr(r, "scores", {})})
    cells: dict[str, Any] = {}
    parts = []
    for platform in platforms:
        pairs = score_pairs(by_arm, by_ref, platform)
        if not pairs:
            continue
        point, reps = _replicates(pairs, zlib.crc32(f"{scenario}/{platform}".encode()))
        n = min(len(p[0]) for p in pairs)
        cells[platform] = _interval(point, reps, n, len(pairs))
        parts.append((float(n), point, reps))
    if parts and len(parts) == len(platforms):
        w = np.array([p[0] for p in parts])
        point = float(np.dot(w, [p[1] for p in parts]) / w.sum())
        reps = np.tensordot(w, np.stack([p[2] for p in parts]), axes=1) / w.sum()
        cells["mean"] = _interval(point, reps, int(w.sum()), min(c["seeds"] for c in cells.values()))
    return cells


def recommended_arm(meta: Mapping[str, Any]) -> str:
    """The arm a report's targets are about: ``meta["recommended"]`` (``compare --recommended``), else
    :data:`RECOMMENDED`."""
    return str(meta.get("recommended") or RECOMMENDED)


def paired_intervals(
    results: Mapping[str, Mapping[str, Mapping[int, Any]]], recommended: str = RECOMMENDED
) -> dict[str, Any]:
    """scenario -> ref -> arm -> platform -> interval: every arm vs ``local``; the recommended arm
    also vs each baseline (``content`` too), ``pooled`` and ``mf-central``; each DP arm vs ``federated``
    (``PRIVATE_OF``). Arms without test scores are left out."""
    out: dict[str, Any] = {}
    for scenario, arms in results.items():
        wanted = [(a, REFERENCE) for a in arms if a != REFERENCE]
        wanted += [(recommended, ref) for ref in (*BASELINES_TO_BEAT, CONTENT, "pooled", STRETCH)]
        wanted += [(a, PRIVATE_OF) for a in arms if a.startswith(PRIVATE_PREFIX)]
        for arm, ref in wanted:
            if arm in arms and ref in arms and (cells := compare_arms(scenario, arms[arm], arms[ref])):
                out.setdefault(scenario, {}).setdefault(ref, {})[arm] = cells
    return out


# --- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """How a target reads a paired interval: met when ``margin(cell)`` > 0 (strict) or >= 0."""

    name: str
    text: str
    margin_text: str
    margin: Callable[[Mapping[str, float]], float]
    strict: bool = False

    def met(self, margin: float) -> bool:
        return margin > 0 if self.strict else margin >= 0


BEATS = Rule("beats", "the 95 % paired interval of the AUC difference lies above 0 (low > 0)", "low",
             lambda c: c["low"], strict=True)  # fmt: skip
GAIN = Rule("gain", f"the interval lies at or above +{SCARCE_GAIN} (low >= {SCARCE_GAIN})", f"low − {SCARCE_GAIN}",
            lambda c: c["low"] - SCARCE_GAIN)  # fmt: skip
NOT_WORSE = Rule("not worse", "no significant loss: the interval's upper end is >= 0 (high >= 0)", "high",
                 lambda c: c["high"])  # fmt: skip
COLD = Rule("cold gain", f"the interval lies at or above +{COLD_GAIN} (low >= {COLD_GAIN})", f"low − {COLD_GAIN}",
            lambda c: c["low"] - COLD_GAIN)  # fmt: skip
NEVER_BELOW = Rule("never below", f"never below: the interval's lower end is >= -{POOLED_GAP} (low >= -{POOLED_GAP})",
                   f"low + {POOLED_GAP}", lambda c: c["low"] + POOLED_GAP)  # fmt: skip
WITHIN = Rule("within", f"non-inferior by {POOLED_GAP}: the interval of the mean-AUC difference has low >= "
              f"-{POOLED_GAP}", f"low + {POOLED_GAP}", lambda c: c["low"] + POOLED_GAP)  # fmt: skip
NDCG_RULE = ("mean NDCG@10 over seeds above the other arm's on every platform (point estimates: the records "
             "carry no per-user ranks to resample)")  # fmt: skip
RULES = (BEATS, GAIN, COLD, NOT_WORSE, NEVER_BELOW, WITHIN)


def _target(
    name: str, scenario: str, met: bool | None, margin: float | None, detail: str, rule: str, required: bool = True
) -> dict[str, Any]:
    return {"target": name, "scenario": scenario, "met": met, "margin": margin, "detail": detail, "rule": rule,
            "required": required}  # fmt: skip


def _describe(arm: str, ref: str, platform: str, cell: Mapping[str, Any]) -> str:
    return (f"{arm} − {ref} on {platform}: {cell['diff']:+.4f} [{cell['low']:+.4f}, {cell['high']:+.4f}] "
            f"({cell['seeds']} seed(s) x {cell['n']} examples)")  # fmt: skip


def judge(
    name: str,
    scenario: str,
    rule: Rule,
    paired: Mapping[str, Any],
    ref: str,
    platforms: Sequence[str],
    required: bool = True,
    arm: str = RECOMMENDED,
) -> dict[str, Any]:
    """``arm`` (the recommended one) vs ``ref`` by ``rule`` on every platform of ``platforms``: met iff met
    on each; the margin and detail are the tightest platform's; not evaluated if one has no interval."""
    cells = paired.get(ref, {}).get(arm, {})
    missing = [p for p in platforms if p not in cells or not math.isfinite(cells[p]["low"])]
    if missing:
        why = f"not evaluated: no paired test scores of {arm} and {ref} on {', '.join(missing)}"
        return _target(name, scenario, None, None, why, rule.name, required)
    margin, platform = min((rule.margin(cells[p]), p) for p in platforms)
    detail = ("tightest: " if len(platforms) > 1 else "") + _describe(arm, ref, platform, cells[platform])
    return _target(name, scenario, rule.met(margin), margin, detail, rule.name, required)


def judge_ndcg(
    name: str, scenario: str, agg: Mapping[str, Any], ref: str, platforms: Sequence[str], arm: str = RECOMMENDED
) -> dict[str, Any]:
    """NDCG@10: mean over seeds of ``arm`` (the recommended one) above ``ref``'s on every platform."""
    gaps = []
    for p in platforms:
        means = [agg.get(a, {}).get(p, {}).get("ndcg@10", {}).get("mean", math.nan) for a in (arm, ref)]
        if not all(m is not None and math.isfinite(m) for m in means):
            return _target(name, scenario, None, None, f"not evaluated: no NDCG@10 of {arm} and {ref} on {p}",
                           "ndcg")  # fmt: skip
        gaps.append((means[0] - means[1], p, means))
    margin, p, (mine, theirs) = min(gaps)
    return _target(name, scenario, margin > 0, margin, f"tightest: {arm} {mine:.4f} vs {ref} {theirs:.4f} "
                   f"on {p}", "ndcg")  # fmt: skip


def evaluate_targets(
    agg: Mapping[str, Any], meta: Mapping[str, Any], paired: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The targets for ``meta["kind"]`` (cross | same) and each scenario, each met / missed / not
    evaluated, judged on the paired intervals (``paired``, see :func:`paired_intervals`) by the rule it names.

    Full and scarce: the recommended arm beats like-rate, popularity and mf on every platform (AUC and
    NDCG@10). Same-domain: scarce, >= local + 0.03 AUC on each small platform and not worse on the
    large one; full, beats local on every platform. Cross-domain: not worse than local on any
    platform, mean AUC within 0.005 of pooled or above. Stretch (not required): beats mf-central.
    New items (cold start): >= content + 0.05 and mf + 0.05 AUC on every platform; same-domain also
    >= local + 0.05 on every platform, cross-domain not worse than local on any. New users: beats
    popularity and mf in test AUC (history k = 3) on every platform.
    """
    out: list[dict[str, Any]] = []
    kind = meta.get("kind", "cross")
    paired = paired or {}
    R = recommended_arm(meta)
    on, on_ndcg = functools.partial(judge, arm=R), functools.partial(judge_ndcg, arm=R)  # R vs a reference
    for scenario in agg:
        info = meta.get("scenarios", {}).get(scenario, {})
        platforms = sorted(info.get("users", {}))
        here = paired.get(scenario, {})
        if scenario == "new-items":
            for base in NEW_ITEMS_BASELINES:
                out.append(on(f"{R} >= {base} + {COLD_GAIN} AUC on every platform", scenario, COLD, here, base,
                                 platforms))  # fmt: skip
            if kind == "same":
                out.append(on(f"{R} >= local + {COLD_GAIN} AUC on every platform", scenario, COLD, here, REFERENCE,
                                 platforms))  # fmt: skip
            else:
                out += [on(f"{R} not worse than local on {p}", scenario, NEVER_BELOW, here, REFERENCE, [p])
                        for p in platforms]  # fmt: skip
            continue
        if scenario == "new-users":
            out += [on(f"{R} beats {base} in test AUC on every platform", scenario, BEATS, here, base, platforms)
                    for base in NEW_USERS_BASELINES]  # fmt: skip
            continue
        if scenario not in WARM_SCENARIOS:
            continue
        for base in BASELINES_TO_BEAT:
            out.append(on(f"{R} beats {base} in test AUC on every platform", scenario, BEATS, here, base, platforms))
            out.append(on_ndcg(f"{R} beats {base} in NDCG@10 on every platform", scenario, agg[scenario], base,
                                  platforms))  # fmt: skip
        if kind == "same" and scenario == "scarce":
            large = info.get("large_platform")
            for p in platforms:
                if p == large:
                    out.append(on(f"{R} not worse than local on {p} (large)", scenario, NOT_WORSE, here, REFERENCE,
                                     [p]))  # fmt: skip
                else:
                    out.append(on(f"{R} >= local + {SCARCE_GAIN} AUC on {p}", scenario, GAIN, here, REFERENCE, [p]))
        elif kind == "same":
            out += [on(f"{R} beats local on {p}", scenario, BEATS, here, REFERENCE, [p]) for p in platforms]
        else:  # cross-domain: never below local (issue 21: the interval's low end >= -0.005 on every platform)
            out += [on(f"{R} not worse than local on {p}", scenario, NEVER_BELOW, here, REFERENCE, [p])
                    for p in platforms]  # fmt: skip
            out.append(on(f"{R} mean AUC within {POOLED_GAP} of pooled or above", scenario, WITHIN, here, "pooled",
                             ["mean"]))  # fmt: skip
        if STRETCH in agg[scenario]:
            out.append(on(f"stretch: {R} beats {STRETCH} in test AUC on every platform", scenario, BEATS, here,
                             STRETCH, platforms, required=False))  # fmt: skip
    return out


# --- writing ------------------------------------------------------------------------------


def write_report(out: Path, results: Mapping[str, Any], meta: Mapping[str, Any], plots: bool = True) -> dict[str, Any]:
    """report.json and report.md; report.png and rounds.png too unless ``plots`` is False (they take
    about a second: a run that rewrites its report after every unit draws them now and then)."""
    agg = aggregate(results, meta.get("seeds"))
    paired = paired_intervals(results, recommended_arm(meta))
    report = {
        "results": agg,
        "paired": paired,
        "wall_s": wall_times(results),
        "rounds": {s: {a: [p for r in by.values() for p in r.rounds] for a, by in arms.items()}
                   for s, arms in results.items()},
        "best_round": {s: {a: [r.best_round for _, r in sorted(by.items())] for a, by in arms.items()}
                       for s, arms in results.items()},
        "chosen": {s: {a: [r.chosen for _, r in sorted(by.items())] for a, by in arms.items() if any(
                   r.chosen for r in by.values())} for s, arms in results.items()},  # e.g. fed+mix's share per seed
        "targets": evaluate_targets(agg, meta, paired),
        "arm_order": list(meta.get("arms", {})),  # JSON keys come back sorted; tables and plots keep this order
        "meta": dict(meta),
    }  # fmt: skip
    atomic_write_text(out / "report.json", to_json(report) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    if plots:
        plot_auc(report, out / "report.png")
        plot_paired(report, out / "paired.png")
        plot_rounds(report, out, out / "rounds.png")
    return report


def summary_table(report: Mapping[str, Any]) -> str:
    """The console's one table of a comparison: an arm per row; per scenario its mean test AUC and
    NDCG@10 (example-weighted over platforms, mean ± std over seeds). Per-platform detail: report.md."""
    results = report["results"]
    arms = {a: None for by_arm in results.values() for a in by_arm}
    columns = ["arm"] + [f"{s} {m}" for s in results for m in ("AUC", "NDCG@10")]
    rows = []
    for arm, _ in _ordered(report, arms):
        cells = [arm]
        for by_arm in results.values():
            mean = by_arm.get(arm, {}).get("mean", {})
            cells += [_cell(mean.get("auc")), _cell(mean.get("ndcg@10"))]
        rows.append(cells)
    title = "mean test metrics per arm (more in report.md)"
    return render_table(title, columns, rows, width=160)


def _ordered(report: Mapping[str, Any], arms: Mapping[str, Any]) -> list[tuple[str, Any]]:
    order = [a for a in report.get("arm_order", []) if a in arms]
    return [(a, arms[a]) for a in order + sorted(set(arms) - set(order))]


def _cell(summary: Mapping[str, Any] | None, digits: int = 4) -> str:
    """``mean ± std``, with ``(k/n seeds)`` when some seeds' records are missing."""
    if not summary or summary["mean"] is None or not math.isfinite(summary["mean"]):
        return "–"
    have = sum(v is not None and math.isfinite(v) for v in summary["values"])
    partial = f" ({have}/{len(summary['values'])} seeds)" if have < len(summary["values"]) else ""
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}{partial}"


def _interval_cell(cell: Mapping[str, Any] | None) -> str:
    """``+0.0123 [+0.0050, +0.0190]``, bold when the interval excludes 0."""
    if not cell or cell.get("low") is None or not math.isfinite(cell["low"]):
        return "–"
    text = f"{cell['diff']:+.4f} [{cell['low']:+.4f}, {cell['high']:+.4f}]"
    return f"**{text}**" if cell["low"] > 0 or cell["high"] < 0 else text


def _platforms(arms: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted({p for a in arms.values() for p in a}, key=lambda p: (p == "mean", p))


def _interval_table(title: str, head: str, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """A markdown table of paired intervals: one row per (name, platform -> interval), a column per platform."""
    platforms = _platforms(dict(rows))
    lines = [f"### {title}", "", f"| {head} | " + " | ".join(platforms) + " |", "|---" * (len(platforms) + 1) + "|"]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(_interval_cell(cells.get(p)) for p in platforms) + " |")
    return [*lines, ""]


def paired_lines(report: Mapping[str, Any], scenario: str) -> list[str]:
    """The scenario's paired-interval tables: every arm vs local, each DP arm vs federated, the recommended
    arm vs the others."""
    lines: list[str] = []
    by_ref = report.get("paired", {}).get(scenario, {})
    rec = recommended_arm(report.get("meta", {}))
    if vs_local := by_ref.get(REFERENCE, {}):
        lines += _interval_table(f"Paired bootstrap: arm − {REFERENCE}, test AUC ({LEVEL:.0%} interval, {N_BOOT} "
                                 "resamples)", "arm", _ordered(report, vs_local))  # fmt: skip
    private = {arm: cells for arm, cells in by_ref.get(PRIVATE_OF, {}).items() if arm.startswith(PRIVATE_PREFIX)}
    if private:
        lines += _interval_table(f"Paired bootstrap: DP arm − {PRIVATE_OF} (the cost of privacy), test AUC", "arm",
                                 _ordered(report, private))  # fmt: skip
    others = {ref: arms[rec] for ref, arms in by_ref.items() if ref != REFERENCE and rec in arms}
    if others:
        lines += _interval_table(f"Paired bootstrap: {rec} − other arm, test AUC", "other arm",
                                 sorted(others.items()))  # fmt: skip
    return lines


def target_lines(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    """The targets table and the exact rule behind each ``rule`` name."""
    lines = ["| scenario | target | rule | met | margin | detail |", "|---|---|---|---|---|---|"]
    for t in targets:
        met = {True: "**met**", False: "**missed**", None: "not evaluated"}[t["met"]]
        met += "" if t.get("required", True) else " (stretch)"
        margin = f"{t['margin']:+.4f}" if t["margin"] is not None else "–"
        lines.append(f"| {t['scenario']} | {t['target']} | {t.get('rule', '')} | {met} | {margin} | {t['detail']} |")
    lines += ["", f"Rules (paired intervals: the same test examples resampled for both arms, {N_BOOT} resamples "
              "per seed, averaged over seeds; margin = the quantity the rule compares to 0):"]  # fmt: skip
    lines += [f"- `{r.name}`: {r.text}; margin = {r.margin_text}" for r in RULES]
    lines += [f"- `ndcg`: {NDCG_RULE}; margin = smallest gap", ""]
    return lines


def code_line(code: Mapping[str, Any] | None) -> str:
    """``meta["code"]`` for a reader: the commit, and whether tracked files differed from it."""
    if not code:
        return "commit not recorded (not a git checkout, or a report older than the record)"
    return f"commit `{code['commit'][:12]}`" + (" with uncommitted changes to tracked files" if code["dirty"] else "")


def render_markdown(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    hw = meta["hardware"]
    cfg = meta["config"]
    device = hw["gpu"] or f"{hw['cpu']} ({hw['cpu_cores']} cores, no GPU)"
    kind = meta.get("kind", "cross")
    lines = [
        "# Does federation pay? local vs federated vs pooled",
        "",
        f"- kind `{kind}` ({'cross-domain platforms' if kind == 'cross' else 'same-domain shops'}); recommended "
        f"arm `{recommended_arm(meta)}`",
        f"- size `{meta['size']}`, seeds {meta['seeds']} (mean ± sample std over seeds), base model "
        f"`{cfg['model.base']}`, data `{meta['data'] or 'embedded synthetic shops'}`",
        f"- budget per platform: {cfg['num-server-rounds']} rounds x {cfg['train.local-epochs']} local epoch(s) x "
        f"{cfg['train.max-examples'] or 'all'} train examples; early stopping patience {cfg['fed.patience']} "
        f"on mean valid {cfg['fed.metric']}; ranking: {cfg['eval.max-rank-users'] or 'all'} users/platform x "
        f"(1 + {cfg['data.rank-negatives']}) candidates",
        f"- hardware: {device}; torch {hw['torch']}; wall time of this invocation {meta['total_wall_s'] / 60:.1f} min"
        + (f" ({meta['jobs']} units at a time)" if meta.get("jobs", 1) > 1 else ""),
        f"- code: {code_line(meta.get('code'))}",
        "",
    ]
    lines += status_lines(meta)
    for scenario, arms in report["results"].items():
        info = meta["scenarios"][scenario]
        users = ", ".join(f"{p} {n}" for p, n in info["users"].items())
        lines += [f"## Scenario `{scenario}`", "", f"Users per platform: {users}."]
        if info.get("large_platform"):
            lines.append(f"Scarce: {info['large_platform']} keeps every user, the others a seeded "
                         f"{info['scarce_fraction']:.0%}.")  # fmt: skip
        lines.append("")
        platforms = _platforms(arms)
        for metric in METRICS:
            extra = " | wall s / seed" if metric == "auc" else ""
            lines += [f"### {METRIC_NAMES[metric]}", "", "| arm | " + " | ".join(platforms) + extra + " |",
                      "|---" * (len(platforms) + 1 + bool(extra)) + "|"]  # fmt: skip
            for arm, per in _ordered(report, arms):
                cells = [_cell(per.get(p, {}).get(metric)) for p in platforms]
                if extra:
                    walls = report["wall_s"][scenario][arm]["values"]
                    cells.append(f"{np.mean(walls):.0f}" if walls else "–")
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
            lines.append("")
        if scenario == "new-users":
            lines += history_lines(report, arms)
        lines += paired_lines(report, scenario)
        lines += chosen_lines(report.get("chosen", {}).get(scenario, {}))
    lines += ["## Targets", "", *target_lines(report["targets"])]
    lines += ["The TALLRec target (movie test AUC >= 0.76) is checked by `crossfed tallrec` (its own report).", ""]
    lines += ["## Arms", ""]
    for name, info in meta["arms"].items():
        lines.append(f"- `{name}` ({info['kind']}): {info['about']}")
    lines += ["", "Metrics: per platform on its test split (AUC, log-loss) and ranking cases (HR@10, NDCG@10 of the "
              "held-out liked item against sampled unseen items, pessimistic ties), at the best round by mean "
              "validation metric; `mean` = example-weighted over platforms.", ""]  # fmt: skip
    return "\n".join(lines)


def history_lines(report: Mapping[str, Any], arms: Mapping[str, Any]) -> list[str]:
    """New users: test AUC by the history length k the model sees (mean ± std over seeds), a row per arm and k."""
    platforms = _platforms(arms)
    lines = ["### new users, AUC by history length k", "", "| arm | k | " + " | ".join(platforms) + " |",
             "|---" * (len(platforms) + 2) + "|"]  # fmt: skip
    for arm, per in _ordered(report, arms):
        for k, metric in NEW_USER_HISTORY.items():
            lines.append(f"| {arm} | {k} | " + " | ".join(_cell(per.get(p, {}).get(metric)) for p in platforms) + " |")
    return [*lines, ""]


def chosen_lines(chosen: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]]) -> list[str]:
    """What an arm picked per platform on validation (fed+mix: the fused model's share), seed by seed."""
    lines = []
    for arm, seeds in chosen.items():
        picks: dict[str, list[str]] = {}
        for per_platform in seeds:
            for platform, settings in per_platform.items():
                picks.setdefault(platform, []).append(", ".join(f"{k} {v:g}" for k, v in settings.items()))
        cells = "; ".join(f"{p}: {' / '.join(v)}" for p, v in sorted(picks.items()))
        lines += [f"`{arm}` picked on validation (per seed): {cells}.", ""]
    return lines


def status_lines(meta: Mapping[str, Any]) -> list[str]:
    """A partial run says so up front: which arm runs are missing, which units failed or never started."""
    lines = []
    if meta.get("missing"):
        lines += [f"**Partial report:** {len(meta['missing'])} arm run(s) have no record yet (scenario/seed/arm): "
                  + ", ".join(f"`{m}`" for m in meta["missing"]), ""]  # fmt: skip
    for failure in meta.get("failed", []):
        lines += [f"- failed: `{failure['unit']}`: {failure['error']}"]
    if meta.get("not_started"):
        lines += [f"- not started (time budget): {', '.join(f'`{u}`' for u in meta['not_started'])}"]
    return lines + ([""] if meta.get("failed") or meta.get("not_started") else [])


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recommended_differences(report: Mapping[str, Any], scenario: str) -> dict[str, dict[str, Mapping[str, float]]]:
    """other arm -> platform -> paired interval of test AUC, recommended arm − other arm, for every arm the
    report pairs the recommended arm with (``local`` and the baselines; ``paired`` holds arm − local)."""
    paired = report.get("paired", {}).get(scenario, {})
    rec = recommended_arm(report.get("meta", {}))
    out = {ref: arms[rec] for ref, arms in paired.items() if rec in arms}
    return {ref: out[ref] for ref in sorted(out, key=lambda r: (r != REFERENCE, r))}


def plot_paired(report: Mapping[str, Any], path: Path) -> None:
    """Per scenario: the recommended arm's test-AUC difference to each other arm per platform, with its
    95 % paired bootstrap interval as the error bar (what the targets are judged on)."""
    plt = _plt()
    order = report.get("meta", {}).get("scenarios") or report.get("results", {})  # the run's order, not JSON's
    scenarios = [s for s in order if recommended_differences(report, s)]
    if not scenarios:
        return
    rec = recommended_arm(report.get("meta", {}))
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(14.0, 4.0 * len(scenarios)), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        diffs = recommended_differences(report, scenario)
        platforms = sorted({p for cells in diffs.values() for p in cells}, key=lambda p: (p == "mean", p))
        x, width = np.arange(len(platforms)), 0.8 / len(diffs)
        for i, (ref, cells) in enumerate(diffs.items()):
            mid = [cells.get(p, {}).get("diff", math.nan) for p in platforms]
            err = [[m - cells.get(p, {}).get("low", m) for p, m in zip(platforms, mid, strict=True)],
                   [cells.get(p, {}).get("high", m) - m for p, m in zip(platforms, mid, strict=True)]]  # fmt: skip
            ax.bar(x - 0.4 + (i + 0.5) * width, mid, width, yerr=err, capsize=2, label=f"{rec} − {ref}",
                   color=colours[i % len(colours)])  # fmt: skip
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(x, platforms)
        ax.set_ylabel("test AUC difference")
        ax.set_title(f"scenario {scenario}: {rec} − other arm, test AUC (95 % paired bootstrap interval)")
        ax.legend(ncol=min(6, len(diffs)), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_auc(report: Mapping[str, Any], path: Path) -> None:
    """Per scenario: grouped bars of test AUC per platform (and mean), one bar per arm, ±1 std error bars."""
    plt = _plt()
    results = report["results"]
    bars = max((len(arms) * len(_platforms(arms)) for arms in results.values()), default=1)
    width_in = min(40.0, max(14.0, 0.2 * bars))  # ~12 arms x 4 platforms: bars stay a few pixels wide
    fig, axes = plt.subplots(len(results), 1, figsize=(width_in, 4.5 * len(results)), squeeze=False)
    for ax, (scenario, arms) in zip(axes[:, 0], results.items(), strict=True):
        platforms = _platforms(arms)
        width = 0.8 / max(1, len(arms))
        x = np.arange(len(platforms))
        lows = []
        colours = plt.get_cmap("tab20" if len(arms) > 10 else "tab10").colors  # the default cycle repeats after 10
        for i, (arm, per) in enumerate(_ordered(report, arms)):
            means = [per.get(p, {}).get("auc", {}).get("mean", math.nan) for p in platforms]
            stds = [per.get(p, {}).get("auc", {}).get("std", 0.0) for p in platforms]
            means = [m if m is not None else math.nan for m in means]
            stds = [s if s is not None and math.isfinite(s) else 0.0 for s in stds]
            ax.bar(x - 0.4 + (i + 0.5) * width, means, width, yerr=stds, capsize=2, label=arm,
                   color=colours[i % len(colours)])  # fmt: skip
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


def mean_valid_per_round(path: Path, metric: str) -> list[float]:
    """Mean validation ``metric`` per round of one run's rounds.jsonl (``path``)."""
    values = [row["mean"].get(f"valid.{metric}") for row in read_rounds(path.parent)]
    return [float(value) if value is not None else math.nan for value in values]


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
                values = mean_valid_per_round(out / rel, metric)
                ax.plot(range(1, len(values) + 1), values, marker="o", color=colours[i % len(colours)],
                        alpha=0.8, lw=1.2, label=arm if j == 0 else None)  # fmt: skip
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f"mean valid {metric}")
        ax.set_title(f"scenario {scenario}: federated runs, one line per seed")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run_rounds(run_dir: Path, metric: str = "auc") -> Path | None:
    """One run's rounds.jsonl as ``rounds.png`` beside it: ``metric`` per round, a line per platform
    and one (bold) for the example-weighted mean; validation solid, test dashed when it was measured
    every round (``eval.test-every-round``). None when the run has no round with metrics yet."""
    rows = [r for r in read_rounds(run_dir) if "eval" in r]  # aborted rounds carry no metrics
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    platforms = sorted({p for r in rows for p in r["eval"]})
    for split, style in (("valid", "-"), ("test", "--")):
        key = f"{split}.{metric}"
        if not any(key in r["mean"] for r in rows):
            continue
        for i, name in enumerate([*platforms, "mean"]):
            points = [(r["round"], (r["mean"] if name == "mean" else r["eval"].get(name, {})).get(key)) for r in rows]
            points = [(x, y) for x, y in points if y is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], ls=style, marker="o",
                    color="black" if name == "mean" else colours[i % len(colours)],
                    lw=2.2 if name == "mean" else 1.2, label=f"{name} ({split})")  # fmt: skip
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(metric)
    ax.set_title(f"{run_dir.name}: {metric} per round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "rounds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- several runs in one file -------------------------------------------------------------


def summary_markdown(runs: Sequence[Path]) -> str:
    """The targets of several compare runs (e.g. cross- and same-domain), one section per run."""
    lines = ["# Does federation pay? Targets of every comparison", ""]
    for run in runs:
        path = Path(run) / "report.json"
        if not path.is_file():
            lines += [f"## `{run}`", "", "No report.json: this comparison did not run or wrote nothing.", ""]
            continue
        report = json.loads(path.read_text())
        meta = report["meta"]
        met = [t["met"] for t in report["targets"] if t.get("required", True)]
        lines += [f"## kind `{meta.get('kind', 'cross')}`: `{run}`", "",
                  f"size `{meta['size']}`, seeds {meta['seeds']}, scenarios {', '.join(meta['scenarios'])}; "
                  f"required targets: {met.count(True)} met, {met.count(False)} missed, {met.count(None)} not "
                  f"evaluated; details in `{Path(run) / 'report.md'}`.", ""]  # fmt: skip
        lines += status_lines(meta) + target_lines(report["targets"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations.compare.report summary --out SUMMARY.md RUN [RUN ...]``."""
    parser = argparse.ArgumentParser(prog="python -m simulations.compare.report")
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="the target tables of several compare runs in one markdown file")
    summary.add_argument("--out", required=True, help="markdown file to write")
    summary.add_argument("runs", nargs="+", help="compare RUN folders (each with report.json)")
    args = parser.parse_args(argv)
    atomic_write_text(Path(args.out), summary_markdown([Path(r) for r in args.runs]))
    print(f"summary: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
