"""report.py on hand-made records with test scores: paired intervals, targets per kind, partial runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.metrics import auc
from simulations.compare.report import evaluate_targets, summary_markdown, write_report
from simulations.compare.runner import Record

PLATFORMS = {"L": 600, "s1": 400, "s2": 400}  # test examples per platform; L is the large one


def _record(strength: dict[str, float], seed: int, ndcg: float = 0.1) -> Record:
    """Scores y * strength + noise per platform: a larger strength separates the classes better.

    Labels depend on the platform only (the same test examples for every arm, as in a real run);
    the noise depends on the platform, seed and strength, so two arms with one strength score alike.
    """
    per_platform, scores = {}, {}
    for i, (platform, n) in enumerate(PLATFORMS.items()):
        y = (np.random.default_rng(i).random(n) < 0.5).astype(float)
        noise = np.random.default_rng([i, seed, int(strength[platform] * 1000)]).normal(size=n)
        probs = 1 / (1 + np.exp(-(y * strength[platform] + noise)))
        per_platform[platform] = {"auc": auc(y, probs), "logloss": 0.6, "hr@10": 0.2, "ndcg@10": ndcg,
                                  "n": float(n), "rank-users": 4.0}  # fmt: skip
        scores[platform] = {"labels": y.tolist(), "probs": probs.tolist()}
    return Record(per_platform, wall_s=1.0, scores=scores)


def _arms(**strengths: dict[str, float]) -> dict[str, dict[int, Record]]:
    ndcg = {"local": 0.1, "federated": 0.2, "pooled": 0.2}  # the baselines rank worse: 0.05
    return {arm: {s: _record(st, s, ndcg.get(arm, 0.05)) for s in (0, 1)} for arm, st in strengths.items()}


FLAT = {"L": 1.0, "s1": 1.0, "s2": 1.0}
WEAK = {"L": 0.1, "s1": 0.1, "s2": 0.1}


def _meta(kind: str, scenarios: list[str]) -> dict:
    info = {"users": dict.fromkeys(PLATFORMS, 10), "interactions": {}, "large_platform": "L",
            "scarce_fraction": 0.1}  # fmt: skip
    cfg = {"model.base": "tiny-random", "num-server-rounds": 2, "train.local-epochs": 1, "train.max-examples": 64,
           "fed.patience": 2, "fed.metric": "auc", "eval.max-rank-users": 4, "data.rank-negatives": 99}  # fmt: skip
    return {"kind": kind, "size": "ci", "seeds": [0, 1], "data": "", "config": cfg,
            "scenarios": {s: info for s in scenarios}, "arms": {}, "total_wall_s": 1.0,
            "hardware": {"gpu": None, "cpu": "cpu", "cpu_cores": 2, "torch": "x"}}  # fmt: skip


def _targets(report: dict) -> dict[tuple[str, str], dict]:
    return {(t["scenario"], t["target"]): t for t in report["targets"]}


def test_same_domain_scarce_targets_are_judged_on_paired_intervals(tmp_path: Path) -> None:
    # Prepare: federated far better than local on s1, equal on s2 and L; baselines weak; no mf arm
    results = {"scarce": _arms(local=FLAT, federated={"L": 1.0, "s1": 3.0, "s2": 1.0}, **{"like-rate": WEAK},
                               popularity=WEAK)}  # fmt: skip
    # Execute
    report = write_report(tmp_path, results, _meta("same", ["scarce"]))
    # Assert: the interval of federated - local on s1 excludes 0, its point is the mean AUC gain
    cell = report["paired"]["scarce"]["local"]["federated"]["s1"]
    gain = np.mean([r.per_platform["s1"]["auc"] for r in results["scarce"]["federated"].values()]) - np.mean(
        [r.per_platform["s1"]["auc"] for r in results["scarce"]["local"].values()]
    )
    assert cell["diff"] == pytest.approx(gain) and cell["low"] > 0.03
    assert cell["n"] == 400 and cell["seeds"] == 2 and cell["n_boot"] == 1000
    same = report["paired"]["scarce"]["local"]["federated"]["L"]  # identical scores: exactly zero
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    got = _targets(report)
    assert got[("scarce", "federated >= local + 0.03 AUC on s1")]["met"] is True
    s2 = got[("scarce", "federated >= local + 0.03 AUC on s2")]
    assert s2["met"] is False and s2["margin"] == pytest.approx(-0.03) and s2["rule"] == "gain"
    assert got[("scarce", "federated not worse than local on L (large)")]["met"] is True
    assert got[("scarce", "federated beats like-rate in test AUC on every platform")]["met"] is True
    assert got[("scarce", "federated beats popularity in NDCG@10 on every platform")]["met"] is True
    assert got[("scarce", "federated beats mf in test AUC on every platform")]["met"] is None  # arm absent
    md = (tmp_path / "report.md").read_text()
    assert "Paired bootstrap: arm − local" in md and "`gain`: the interval lies at or above +0.03" in md
    assert json.loads((tmp_path / "report.json").read_text())["paired"]["scarce"]["local"]["federated"]["s1"]


def test_cross_domain_targets_and_the_weighted_mean_interval() -> None:
    # Prepare: federated = pooled (identical scores), both better than local everywhere
    from simulations.compare.report import aggregate, paired_intervals

    results = {"full": _arms(local=WEAK, federated=FLAT, pooled=FLAT)}
    paired = paired_intervals(results)
    # Execute
    got = {t["target"]: t for t in evaluate_targets(aggregate(results), _meta("cross", ["full"]), paired)}
    # Assert
    within = got["federated mean AUC within 0.005 of pooled or above"]
    assert within["met"] is True and within["margin"] == pytest.approx(0.005)
    assert all(got[f"federated not worse than local on {p}"]["met"] for p in PLATFORMS)
    mean = paired["full"]["local"]["federated"]["mean"]
    per = paired["full"]["local"]["federated"]
    weights = np.array(list(PLATFORMS.values()), dtype=float)
    assert mean["diff"] == pytest.approx(np.dot(weights, [per[p]["diff"] for p in PLATFORMS]) / weights.sum())
    assert mean["n"] == sum(PLATFORMS.values())


def test_dp_arms_are_paired_against_federated_the_arm_they_privatise(tmp_path: Path) -> None:
    # Prepare: fed+mix recommended; dp-eps1 weaker than federated, dp-eps8 as strong (same scores)
    results = {"full": _arms(local=WEAK, federated=FLAT, **{"fed+mix": FLAT, "dp-eps1": WEAK, "dp-eps8": FLAT})}
    meta = {**_meta("cross", ["full"]), "recommended": "fed+mix"}
    # Execute
    report = write_report(tmp_path, results, meta)
    # Assert: DP arm − federated, not − the recommended arm; a no-cost arm's interval is exactly 0
    vs_fed = report["paired"]["full"]["federated"]
    assert set(vs_fed) == {"dp-eps1", "dp-eps8"}
    assert vs_fed["dp-eps1"]["mean"]["high"] < 0
    assert vs_fed["dp-eps8"]["mean"]["diff"] == vs_fed["dp-eps8"]["mean"]["low"] == 0.0
    md = (tmp_path / "report.md").read_text()
    assert "### Paired bootstrap: DP arm − federated (the cost of privacy), test AUC" in md


def test_same_domain_full_needs_a_significant_win_and_stretch_is_optional() -> None:
    from simulations.compare.report import aggregate, paired_intervals

    results = {"full": _arms(local=FLAT, federated=FLAT, **{"mf-central": WEAK})}
    got = {t["target"]: t for t in evaluate_targets(aggregate(results), _meta("same", ["full"]),
                                                    paired_intervals(results))}  # fmt: skip
    assert got["federated beats local on s1"]["met"] is False  # equal is not a win
    stretch = got["stretch: federated beats mf-central in test AUC on every platform"]
    assert stretch["met"] is True and stretch["required"] is False


def test_partial_run_and_records_without_scores(tmp_path: Path) -> None:
    # Prepare: seed 1 of federated missing; local's records carry no scores (before the model side adds them)
    results = {"full": _arms(local=FLAT, federated=FLAT)}
    del results["full"]["federated"][1]
    for record in results["full"]["local"].values():
        record.scores = {}
    meta = {**_meta("cross", ["full"]), "missing": ["full/seed1/federated"], "failed": []}
    # Execute
    report = write_report(tmp_path, results, meta)
    # Assert
    assert report["results"]["full"]["federated"]["s1"]["auc"]["values"][1] is None or np.isnan(
        report["results"]["full"]["federated"]["s1"]["auc"]["values"][1]
    )
    assert report["paired"] == {}
    assert _targets(report)[("full", "federated not worse than local on s1")]["met"] is None
    md = (tmp_path / "report.md").read_text()
    assert "(1/2 seeds)" in md and "**Partial report:**" in md and "`full/seed1/federated`" in md
    summary = summary_markdown([tmp_path, tmp_path / "absent"])
    assert "## kind `cross`" in summary and "No report.json" in summary


STRONG = {"L": 3.0, "s1": 3.0, "s2": 3.0}


def test_new_items_targets_need_a_clear_gain_over_content_mf_and_local() -> None:
    # Prepare: federated far better than content and local everywhere; mf as good as federated
    from simulations.compare.report import aggregate, paired_intervals

    results = {"new-items": _arms(local=WEAK, federated=STRONG, content=WEAK, mf=STRONG)}
    paired = paired_intervals(results)
    # Execute
    same = {t["target"]: t for t in evaluate_targets(aggregate(results), _meta("same", ["new-items"]), paired)}
    cross = {t["target"]: t for t in evaluate_targets(aggregate(results), _meta("cross", ["new-items"]), paired)}
    # Assert: only the new-items targets; the rule is the 0.05 gain
    content = same["federated >= content + 0.05 AUC on every platform"]
    assert content["met"] is True and content["rule"] == "cold gain"
    assert content["margin"] == pytest.approx(min(paired["new-items"]["content"]["federated"][p]["low"]
                                                  for p in PLATFORMS) - 0.05)  # fmt: skip
    assert same["federated >= mf + 0.05 AUC on every platform"]["met"] is False  # equal: no gain
    assert same["federated >= local + 0.05 AUC on every platform"]["met"] is True
    assert sorted(same) == ["federated >= content + 0.05 AUC on every platform",
                            "federated >= local + 0.05 AUC on every platform",
                            "federated >= mf + 0.05 AUC on every platform"]  # fmt: skip
    assert all(cross[f"federated not worse than local on {p}"]["met"] for p in PLATFORMS)
    assert "federated >= local + 0.05 AUC on every platform" not in cross and len(cross) == 2 + len(PLATFORMS)


def test_new_users_targets_and_the_auc_by_history_table(tmp_path: Path) -> None:
    # Prepare: federated beats popularity, not mf; every record also has new users' AUC with 1 and 5 items
    results = {"new-users": _arms(local=FLAT, federated=STRONG, popularity=WEAK, mf=STRONG)}
    for by_seed in results["new-users"].values():
        for seed, record in by_seed.items():
            for m in record.per_platform.values():
                m.update({"k1.auc": 0.6 + seed / 100, "k1.n": 50.0, "k5.auc": 0.7, "k5.n": 30.0})
    # Execute
    report = write_report(tmp_path, results, _meta("cross", ["new-users"]))
    # Assert
    got = _targets(report)
    assert got[("new-users", "federated beats popularity in test AUC on every platform")]["met"] is True
    assert got[("new-users", "federated beats mf in test AUC on every platform")]["met"] is False
    assert len(got) == 2  # no warm-scenario targets here
    cell = report["results"]["new-users"]["federated"]["s1"]["k1.auc"]
    assert cell["mean"] == pytest.approx(0.605) and cell["values"] == pytest.approx([0.6, 0.61])
    assert report["results"]["new-users"]["federated"]["mean"]["k5.auc"]["mean"] == pytest.approx(0.7)
    md = (tmp_path / "report.md").read_text()
    assert "### new users, AUC by history length k" in md
    assert "| federated | 1 | 0.6050 ± 0.0071 |" in md and "| federated | 5 | 0.7000 ± 0.0000 |" in md
    assert "`cold gain`: the interval lies at or above +0.05" in md


def test_warm_targets_are_unchanged_and_content_is_paired(tmp_path: Path) -> None:
    from simulations.compare.report import aggregate, paired_intervals

    results = {"full": _arms(local=WEAK, federated=FLAT, content=WEAK), "scarce": _arms(local=WEAK, federated=FLAT)}
    paired = paired_intervals(results)
    meta = _meta("cross", ["full", "scarce"])
    got = {(t["scenario"], t["target"]) for t in evaluate_targets(aggregate(results), meta, paired)}
    assert paired["full"]["content"]["federated"]["s1"]["low"] > 0
    for scenario in ("full", "scarce"):
        assert (scenario, "federated beats mf in NDCG@10 on every platform") in got
        assert not any("content" in t for s, t in got if s == scenario)
    assert "k1.auc" not in aggregate(results)["full"]["federated"]["s1"]  # only when the records have it


def test_cross_domain_never_below_local_is_judged_on_the_intervals_low_end() -> None:
    from simulations.compare.report import NEVER_BELOW, NOT_WORSE

    # an interval straddling 0 deep on the loss side: no significant loss, but it may be 0.02 below local
    cell = {"diff": -0.005, "low": -0.02, "high": 0.01}
    assert NOT_WORSE.met(NOT_WORSE.margin(cell)) and not NEVER_BELOW.met(NEVER_BELOW.margin(cell))
    assert NEVER_BELOW.met(NEVER_BELOW.margin({"diff": 0.0, "low": -0.005, "high": 0.01}))


def test_the_paired_plot_shows_the_recommended_arm_against_local_first(tmp_path: Path) -> None:
    from simulations.compare.report import plot_paired, recommended_differences

    cell = {"diff": 0.01, "low": -0.01, "high": 0.03}
    report = {"results": {"full": {}}, "meta": {"scenarios": {"full": {}}},
              "paired": {"full": {"mf": {"federated": {"a": cell}}, "local": {"federated": {"a": cell},
                                                                            "pooled": {"a": cell}}}}}  # fmt: skip
    assert list(recommended_differences(report, "full")) == ["local", "mf"]  # pooled − local is not about federated
    plot_paired(report, tmp_path / "paired.png")
    assert (tmp_path / "paired.png").stat().st_size > 0


def test_the_targets_follow_the_recommended_arm_of_the_meta(tmp_path: Path) -> None:
    # Prepare: federated weak (below local), fed+mix strong; the run says fed+mix is the recommended arm
    results = {"full": _arms(local=FLAT, federated=WEAK, **{"fed+mix": {"L": 3.0, "s1": 3.0, "s2": 3.0}},
                             **{"like-rate": WEAK})}  # fmt: skip
    meta = {**_meta("cross", ["full"]), "recommended": "fed+mix"}
    # Execute
    report = write_report(tmp_path, results, meta, plots=False)
    plain = write_report(tmp_path / "plain", results, _meta("cross", ["full"]), plots=False)
    # Assert: the targets, the pairs with the baselines and the markdown are about fed+mix, not federated
    got = _targets(report)
    assert got[("full", "fed+mix beats like-rate in test AUC on every platform")]["met"] is True
    assert all(got[("full", f"fed+mix not worse than local on {p}")]["met"] for p in PLATFORMS)
    assert (
        "fed+mix" in report["paired"]["full"]["like-rate"] and "federated" not in report["paired"]["full"]["like-rate"]
    )
    md = (tmp_path / "report.md").read_text()
    assert "recommended arm `fed+mix`" in md and "Paired bootstrap: fed+mix − other arm" in md
    assert _targets(plain)[("full", "federated not worse than local on L")]["met"] is False  # the default: federated


def test_compare_refuses_a_recommended_arm_it_does_not_run(tmp_path: Path) -> None:
    from common.config import ConfigError
    from simulations.compare.command import CompareOptions, run_compare

    with pytest.raises(ConfigError, match="`--recommended` 'fed\\+mix' is not among the arms run"):
        run_compare(CompareOptions(out=str(tmp_path), arms=["local", "federated"], recommended="fed+mix"))


def test_a_reports_code_version_is_the_checkouts_commit_and_says_when_tracked_files_changed(tmp_path) -> None:
    # Prepare: a git checkout with one commit, and a folder that is no checkout
    import subprocess

    from simulations.compare.report import code_line
    from simulations.compare.runner import code_version

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    # Execute / Assert: clean, then an untracked file (still clean), then a changed tracked file (dirty)
    assert code_version(repo) == {"commit": head, "dirty": False}
    (repo / "new.txt").write_text("not tracked\n")
    assert code_version(repo) == {"commit": head, "dirty": False}
    (repo / "a.py").write_text("x = 2\n")
    assert code_version(repo) == {"commit": head, "dirty": True}
    assert code_version(tmp_path / "elsewhere") is None
    assert code_line(code_version(repo)) == f"commit `{head[:12]}` with uncommitted changes to tracked files"
    assert code_line(None).startswith("commit not recorded")
