"""The `crossfed` command as a user meets it: one clear line for bad input, nothing left behind."""

import subprocess
import sys
from pathlib import Path

import pytest

from common.data import write_dataset
from common.synthetic import make_synthetic


def _crossfed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _dataset(root: Path) -> Path:
    write_dataset(root, make_synthetic(seed=0).values())
    return root


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda d: (d / "app" / "items.csv").unlink(), "items.csv"),
        (
            lambda d: (d / "app" / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,NOPE,1\nu2,NOPE,2\n"),
            "field `item_id`",
        ),
        (
            lambda d: (d / "app" / "interactions.csv").write_text("user_id,item_id,timestamp,rating\nu1,x,soon,3\n"),
            "field `",
        ),
    ],
)
def test_malformed_dataset_is_one_clear_line(tmp_path: Path, damage, expected: str) -> None:
    # Prepare
    data = _dataset(tmp_path / "data")
    damage(data)
    out = tmp_path / "run"
    # Execute
    result = _crossfed("simulate", "--data", str(data), "--out", str(out), "--base-model", "tiny-random")
    # Assert
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crossfed: error:"), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_model_path_is_one_clear_line(tmp_path: Path) -> None:
    result = _crossfed("simulate", "--out", str(tmp_path / "run"), "--base-model", str(tmp_path / "no-model"))
    assert result.returncode == 2
    assert "no Hugging Face model folder" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_config_override_names_the_key(tmp_path: Path) -> None:
    result = _crossfed("simulate", "--out", str(tmp_path / "run"), "--set", "lora.r=0")
    assert result.returncode == 2 and "`lora.r` must be positive" in result.stderr
