"""Real Flower simulations (Ray, one SuperNode per platform) end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.config import TINY_PRESET, AppConfig
from common.modeling import load_adapter
from common.run_files import ROUNDS_FILE, SUMMARY_FILE
from simulations.local.simulate import run_simulated_federation, validate_inputs
from tests.tensorboard_events import read_scalars

TINY = {**TINY_PRESET, "num-server-rounds": 2}


def _assert_finished_run(out: Path, cfg: AppConfig, platforms: list[str]) -> dict:
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert sorted(summary["test"]) == sorted(platforms)
    for metrics in summary["test"].values():
        for key in ("auc", "logloss", "hr@10", "ndcg@10"):
            assert metrics[key] is not None and math.isfinite(metrics[key]), (key, metrics)
    assert summary["adapter_changed"] is True
    rounds = [json.loads(line) for line in (out / ROUNDS_FILE).read_text().splitlines()]
    assert 1 <= len(rounds) <= cfg.num_server_rounds
    assert all(not r["failures"] for r in rounds)
    reloaded, _ = load_adapter(cfg.model, cfg.lora, out / "adapter", seed=cfg.seed)
    lora_b = [p for n, p in reloaded.encoder.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # B starts at 0: it was trained
    return summary


def test_tiny_three_platform_federation(tmp_path: Path) -> None:
    # Prepare: embedded synthetic data (3 platforms of unequal size), tiny random base, TensorBoard scalars
    # in one folder (`crossfed simulate --tensorboard DIR`)
    tb = tmp_path / "tb"
    cfg = AppConfig().replace(**TINY, **{"out-dir": str(tmp_path / "run"), "tensorboard-dir": str(tb)})
    platforms = validate_inputs(cfg)
    assert len(platforms) == 3
    # Execute
    summary = run_simulated_federation(cfg, platforms, num_cpus=2)
    # Assert
    _assert_finished_run(tmp_path / "run", cfg, platforms)
    assert summary["config"]["model.base"] == "tiny-random"
    # ... the server's aggregate metrics in tb/server, each platform's own in tb/<platform>, as TensorBoard reads them
    assert [step for step, _ in read_scalars(tb / "server")["valid.auc/mean"]] == [1, 2]
    for platform in platforms:
        tags = read_scalars(tb / platform)
        # (sorted: a simulated platform may run each round in another worker process, so one event file per
        # process, and TensorBoard plots by step, whatever the file order)
        assert sorted(step for step, _ in tags["valid.auc"]) == [1, 2] and "train.train-loss" in tags, sorted(tags)


@pytest.mark.slow
def test_minilm_default_on_ml100k_slice(tmp_path: Path, shared_data: Path) -> None:
    # Prepare: the three genre platforms, 8 users each, the real default model
    from simulations.datasets.movielens import convert_movielens

    convert_movielens(shared_data / "ml-100k", tmp_path / "ml100k")
    cfg = AppConfig().replace(**{
        "data.dir": str(tmp_path / "ml100k"), "out-dir": str(tmp_path / "run"), "data.max-users": 8,
        "train.max-examples": 32, "eval.max-rank-users": 2, "num-server-rounds": 1, "model.max-length": 96,
    })  # fmt: skip
    platforms = validate_inputs(cfg)
    # Execute
    run_simulated_federation(cfg, platforms, num_cpus=2)
    # Assert
    summary = _assert_finished_run(tmp_path / "run", cfg, platforms)
    assert sorted(summary["test"]) == ["P1_action_scifi", "P2_comedy_family", "P3_drama_other"]
    assert np.isfinite(summary["mean"]["test.auc"])
