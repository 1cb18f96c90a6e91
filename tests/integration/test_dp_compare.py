"""`crossfed compare` runs the differential-privacy arms next to the recommended one, and every DP round
reports the epsilon it spent, never past the arm's budget."""

import json
from pathlib import Path

import pytest

from simulations.cli import main


@pytest.mark.slow
def test_dp_arms_run_end_to_end_and_stay_within_their_budget(tmp_path: Path) -> None:
    # Prepare: the embedded shops at CI size, 4 users a platform (a quick run), one seed
    out = tmp_path / "run"
    argv = ["compare", "--out", str(out), "--seeds", "1", "--size", "ci", "--base-model", "tiny-random",
            "--scenario", "full", "--arms", "federated,dp-eps1,dp-eps4,dp-eps8",
            "--set", "data.max-users=4"]  # fmt: skip
    # Execute
    assert main(argv) == 0
    # Assert: every arm has test metrics; each DP round logs epsilon (rounds.jsonl) up to the target, the
    # summary the total, with delta = 1/N (4 users on each of the 3 shops)
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]["full"]) == {"federated", "dp-eps1", "dp-eps4", "dp-eps8"}
    for eps in (1, 4, 8):
        run = out / "runs" / "full" / "seed0" / f"dp-eps{eps}"
        rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
        spent = [r["privacy"]["epsilon"] for r in rounds]
        assert len(spent) == 2 and 0 < spent[0] < spent[1] <= eps, spent
        assert all(r["privacy"]["delta"] == pytest.approx(1 / 12) for r in rounds)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["privacy"]["epsilon"] == spent[-1] and summary["privacy"]["target-epsilon"] == eps
        train = rounds[0]["train"]
        assert {p: m["dp-users"] for p, m in train.items() if p != "differential-privacy"} == {
            "app": 4, "social_shop": 4, "web_shop": 4}  # fmt: skip
    assert "privacy" not in json.loads((out / "runs/full/seed0/federated/rounds.jsonl").read_text().splitlines()[0])
