"""`crossfed compare` at CI size: every arm runs, every report file is written, every number is finite."""

import json
import math
from pathlib import Path

import pytest

from simulations.cli import main

ARMS = ",".join(("local,federated,fed+personal,fed+finetune,fed+mix,pooled", "untrained,liked-share,popularity",
                 "like-rate,content,mf,mf-central"))  # fmt: skip


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


@pytest.mark.slow
def test_compare_ci_size_writes_a_finite_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the embedded shops, tiny random base, both scenarios, two seeds, two units at a time (CI's 2 cores)
    out = tmp_path / "run"
    argv = ["compare", "--out", str(out), "--seeds", "2", "--size", "ci", "--base-model", "tiny-random",
            "--scenario", "both", "--arms", ARMS, "--lever", "exact:lora.freeze-a=true", "--jobs", "2"]  # fmt: skip
    # Execute
    assert main(argv) == 0
    # Assert: the console gets one summary table, not one per run (26 runs once printed 303 lines)
    out_text = capsys.readouterr().out
    assert out_text.count("mean test metrics per arm") == 1 and "test metrics of best round" not in out_text
    assert sum("┏" in line for line in out_text.splitlines()) == 1, out_text
    for name in ("report.json", "report.md", "report.png", "rounds.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    assert sorted(results) == ["full", "scarce"]
    for scenario, arms in results.items():
        assert set(arms) == {*ARMS.split(","), "exact"}, scenario
        for arm, per in arms.items():
            assert sorted(per) == ["app", "mean", "social_shop", "web_shop"], (scenario, arm)
            for platform, metrics in per.items():
                assert sorted(metrics) == ["auc", "hr@10", "logloss", "ndcg@10"]
                for metric, cell in metrics.items():
                    assert len(cell["values"]) == 2, (scenario, arm, platform, metric)
                    values = _numbers(cell)
                    assert values and all(math.isfinite(v) for v in values), (scenario, arm, platform, metric, cell)
    assert all(math.isfinite(v) for v in _numbers(report["wall_s"]))
    for scenario in ("full", "scarce"):  # fed+mix: the fused model's share, picked per platform and seed
        shares = report["chosen"][scenario]["fed+mix"]
        assert len(shares) == 2 and all(0 <= s["fused-share"] <= 1 for seed in shares for s in seed.values())
    assert report["meta"]["seeds"] == [0, 1] and report["meta"]["hardware"]["torch"]
    code = report["meta"]["code"]  # the commit the comparison ran from (CI runs on a clone of main)
    assert code is None or (len(code["commit"]) == 40 and isinstance(code["dirty"], bool)), code
    assert report["meta"]["scenarios"]["scarce"]["users"]["app"] == 100  # the large shop keeps every user
    assert report["meta"]["scenarios"]["scarce"]["users"]["social_shop"] == 25  # scarce thins train examples, not users
    assert report["meta"]["scenarios"]["scarce"]["scarce_fraction"] == 0.4
    assert {t["met"] for t in report["targets"]} <= {True, False, None} and report["targets"]
    md = (out / "report.md").read_text()
    assert "## Targets" in md and "| federated |" in md and "- code: " in md
    assert len(report["rounds"]["full"]["local"]) == 2 * 3  # one run per platform and seed


def test_compare_rejects_unknown_arm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--out", str(tmp_path), "--arms", "federated,bogus"]) == 2
    assert "unknown arm 'bogus'" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path), "--arms", "fed+finetune"]) == 2
    assert main(["compare", "--out", str(tmp_path), "--lever", "x:lora.rr=3"]) == 2
    assert not (tmp_path / "report.json").exists()


def _cell(mean: float, std: float = 0.0) -> dict:
    return {"auc": {"mean": mean, "std": std, "values": [mean]}, "ndcg@10": {"mean": mean, "std": 0, "values": [mean]}}


def test_targets_are_never_judged_on_means_when_paired_intervals_are_missing() -> None:
    # Prepare: federated far ahead on every mean, but no record carried test scores
    from simulations.compare.report import evaluate_targets

    agg = {"full": {"local": {"L": _cell(0.60)}, "federated": {"L": _cell(0.90), "mean": _cell(0.90)},
                    "pooled": {"mean": _cell(0.80)}, "like-rate": {"L": _cell(0.5)}}}  # fmt: skip
    meta = {"kind": "cross", "scenarios": {"full": {"users": {"L": 9}}}}
    # Execute
    got = {t["target"]: t for t in evaluate_targets(agg, meta, paired={})}
    # Assert: AUC targets wait for intervals; NDCG (means by design) is judged
    assert got["federated not worse than local on L"]["met"] is None
    assert got["federated mean AUC within 0.005 of pooled or above"]["met"] is None
    assert got["federated beats like-rate in test AUC on every platform"]["met"] is None
    assert got["federated beats like-rate in NDCG@10 on every platform"]["met"] is True
    assert got["federated beats mf in NDCG@10 on every platform"]["met"] is None  # arm absent


@pytest.mark.slow
def test_compare_jobs_records_resume_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: 2 units at a time; the lever `bad` passes config checks but fails when its model is built
    out = tmp_path / "run"
    argv = ["compare", "--out", str(out), "--seeds", "1", "--size", "ci", "--base-model", "tiny-random",
            "--scenario", "full", "--arms", "local,federated,fed+finetune,like-rate", "--jobs", "2"]  # fmt: skip
    # Execute
    rc = main([*argv, "--lever", "bad:lora.target-modules=nope"])
    # Assert: one error line naming the unit and its exception, the other units' records on disk
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if "FAILED" in line]
    assert rc == 1 and len(failures) == 1 and "full/seed0/bad" in failures[0] and "ModelLoadError" in failures[0]
    records = out / "records" / "full" / "seed0"
    assert sorted(p.name for p in records.iterdir()) == [
        "fed+finetune.json", "federated.json", "like-rate.json", "local.json"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["missing"] == ["full/seed0/bad"] and report["meta"]["kind"] == "cross"
    assert "**Partial report:**" in (out / "report.md").read_text()
    federated = json.loads((records / "federated.json").read_text())["record"]
    assert sorted(federated["scores"]) == ["app", "social_shop", "web_shop"]  # test labels + probs per platform
    cell = report["paired"]["full"]["local"]["federated"]["mean"]
    assert cell["low"] <= cell["diff"] <= cell["high"] and cell["n_boot"] == 1000
    # Execute again without the failing lever: every unit is already done
    before = {p.name: p.stat().st_mtime_ns for p in records.iterdir()}
    assert main(argv) == 0
    assert "3 of 3 units already have their records" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in records.iterdir()} == before
    assert json.loads((out / "report.json").read_text())["meta"]["missing"] == []


@pytest.mark.slow
def test_compare_trains_on_long_empty_and_non_ascii_titles(tmp_path: Path) -> None:
    """A real catalogue's worst titles: 5,000 characters, empty, non-ASCII; none may crash tokenisation."""
    # Prepare: the embedded shops with three items of the web shop retitled
    import dataclasses

    from common.data import write_dataset
    from common.synthetic import make_synthetic

    shops = make_synthetic(seed=0)
    web = shops["web_shop"]
    ids = sorted(web.items)
    titles = {ids[0]: "Wool scarf " * 455, ids[1]: "", ids[2]: "Écharpe en laine 羊毛围巾 🧣"}
    items = {k: dataclasses.replace(v, title=titles.get(k, v.title)) for k, v in web.items.items()}
    shops["web_shop"] = dataclasses.replace(web, items=items)
    write_dataset(tmp_path / "data", shops.values())
    assert len(items[ids[0]].title) >= 5000
    out = tmp_path / "run"
    argv = ["compare", "--data", str(tmp_path / "data"), "--out", str(out), "--seeds", "1", "--size", "ci",
            "--base-model", "tiny-random", "--scenario", "full", "--arms", "local,federated,like-rate"]  # fmt: skip
    # Execute
    assert main(argv) == 0
    # Assert
    web_auc = json.loads((out / "report.json").read_text())["results"]["full"]["federated"]["web_shop"]["auc"]
    assert math.isfinite(web_auc["mean"])


@pytest.mark.slow
def test_compare_runs_on_implicit_feedback_with_long_titles(tmp_path: Path) -> None:
    # Prepare: the embedded shops as implicit feedback (the liked rows only, no rating column: what a
    # shop's clicks or purchases look like) and one 5,000-character product title per shop
    import csv

    from common.data import write_dataset
    from common.synthetic import make_synthetic

    data = tmp_path / "data"
    write_dataset(data, make_synthetic(seed=0).values())
    for path in data.glob("*/interactions.csv"):
        header, *rows = list(csv.reader(path.open()))
        col = header.index("rating")
        kept = [[v for j, v in enumerate(r) if j != col] for r in rows if float(r[col]) >= 4]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([[h for j, h in enumerate(header) if j != col], *kept])
    for path in data.glob("*/items.csv"):
        header, first, *rows = list(csv.reader(path.open()))
        first[header.index("title")] = "very long title " * 312
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([header, first, *rows])
    out = tmp_path / "run"
    argv = ["compare", "--data", str(data), "--out", str(out), "--seeds", "1", "--size", "ci",
            "--base-model", "tiny-random", "--scenario", "full", "--arms", "local,federated,popularity,mf"]  # fmt: skip
    # Execute
    assert main(argv) == 0
    # Assert: every arm scored every platform with finite AUC and NDCG@10 (sampled negatives make the
    # AUC defined although every interaction is a positive)
    results = json.loads((out / "report.json").read_text())["results"]["full"]
    for arm, per in results.items():
        assert sorted(per) == ["app", "mean", "social_shop", "web_shop"], arm
        for platform, metrics in per.items():
            for metric in ("auc", "ndcg@10"):
                values = _numbers(metrics[metric])
                assert values and all(math.isfinite(v) for v in values), (arm, platform, metric, metrics[metric])


@pytest.mark.slow
def test_compare_cpu_preset_runs_the_cold_start_scenarios_end_to_end(tmp_path: Path) -> None:
    # Prepare: the cpu preset (top-layer LoRA on cached states, item cache, every train row, every test user)
    # on the tiny random base and 20 users per shop; the cold-start scenarios next to full
    out = tmp_path / "run"
    argv = ["compare", "--out", str(out), "--seeds", "1", "--size", "cpu", "--base-model", "tiny-random",
            "--scenario", "full,new-items,new-users", "--arms", "local,federated,like-rate,content,mf",
            "--set", "data.max-users=20", "--set", "num-server-rounds=2", "--set", "data.history-len=3"]  # fmt: skip
    # Execute
    assert main(argv) == 0
    # Assert: every arm has finite test AUC on every platform of every scenario, the new-users scenario also
    # at k = 1 and 5, and the cold-start targets are judged
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["size"] == "cpu" and report["meta"]["config"]["lora.top-layers"] == 1
    assert report["meta"]["config"]["train.max-examples"] == 0 and report["meta"]["config"]["eval.max-rank-users"] == 0
    assert sorted(report["results"]) == ["full", "new-items", "new-users"]
    for scenario, arms in report["results"].items():
        for arm, per in arms.items():
            for platform in ("app", "social_shop", "web_shop"):
                assert math.isfinite(per[platform]["auc"]["mean"]), (scenario, arm, platform)
    for arm in ("federated", "mf"):
        assert all(math.isfinite(report["results"]["new-users"][arm]["app"][k]["mean"]) for k in ("k1.auc", "k5.auc"))
    names = {(t["scenario"], t["target"]) for t in report["targets"]}
    assert any(s == "new-items" and "content" in t for s, t in names)
    assert any(s == "new-users" and "popularity" in t for s, t in names)
