"""`crossfed tallrec` at CI size on the shared TALLRec movie split (skipped when the data is absent)."""

import json
import math
from pathlib import Path

import pytest

from simulations.cli import main
from simulations.datasets.tallrec import parse_prompt, read_rows


def test_parse_prompt() -> None:
    record = {
        "input": 'User Preference: "A (1990)", "B, The (1991)"\nUser Unpreference: \n'
        'Whether the user will like the target movie "C (1992)"?',
        "output": "Yes.",
    }
    assert parse_prompt(record) == (("A (1990)", "B, The (1991)"), (), "C (1992)", 1)


@pytest.mark.slow
def test_tallrec_ci_size(tmp_path: Path, shared_data: Path) -> None:
    # Prepare
    src, ml = shared_data / "tallrec-movie", shared_data / "ml-100k"
    # Execute
    argv = ["tallrec", "--src", str(src), "--ml100k", str(ml), "--out", str(tmp_path), "--size", "ci",
            "--base-model", "tiny-random", "--train-rows", "200"]  # fmt: skip
    assert main(argv) == 0
    # Assert: the ids rebuild the published prompts exactly; the liked-share rule reproduces 0.726
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["prompt_agreement"] == {"valid": 1.0, "test": 1.0}
    assert report["liked_share_test_auc"] == pytest.approx(0.726, abs=5e-4)
    assert report["train_rows"] == 200 and math.isfinite(report["test_auc"]["mean"])
    assert "Target: test AUC >= 0.76" in (tmp_path / "report.md").read_text()
    assert len(read_rows(src / "movielens_train.csv")) == 8000
