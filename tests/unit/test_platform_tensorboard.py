"""A platform's own TensorBoard scalars: where they go (its operator decides when deployed) and what they hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.metrics_log import TENSORBOARD_KEY, log_scalars, platform_tensorboard_dir
from common.run_files import close_tensorboard
from tests.tensorboard_events import read_scalars


def test_a_deployed_platform_writes_only_where_its_node_config_says(tmp_path: Path) -> None:
    store = tmp_path / "state" / "web_shop" / "0123456789abcdef"  # its private folder of this run
    own = {TENSORBOARD_KEY: str(tmp_path / "tb")}
    # the run config's folder is the coordinator's: never a path on a deployed platform's disk
    assert platform_tensorboard_dir({}, "/coordinator/tb", "web_shop", store, simulated=False) is None
    mine = platform_tensorboard_dir(own, "/coordinator/tb", "web_shop", store, simulated=False)
    assert mine == tmp_path / "tb" / "web_shop" / store.name
    assert platform_tensorboard_dir(own, "", "web_shop", None, simulated=False) is None


def test_a_simulated_platform_writes_beside_the_server_when_the_run_asks() -> None:
    assert platform_tensorboard_dir({}, "/runs/tb", "app", None, simulated=True) == Path("/runs/tb/app")
    assert platform_tensorboard_dir({}, "", "app", None, simulated=True) is None


def test_log_scalars_writes_tags_tensorboard_reads(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    # Execute: round 1 train + evaluation, round 2 evaluation (NaN left out), as the ClientApp logs them
    log_scalars(tmp_path, 1, {"train-loss": 0.69, "num-examples": 32.0}, prefix="train.")
    log_scalars(tmp_path, 1, {"valid.auc": 0.61, "valid.logloss": 0.7})
    log_scalars(tmp_path, 2, {"valid.auc": 0.64, "valid.logloss": float("nan")})
    log_scalars(None, 3, {"valid.auc": 1.0})  # no folder: nothing
    close_tensorboard(tmp_path)
    # Assert
    tags = read_scalars(tmp_path)
    assert sorted(tags) == ["train.num-examples", "train.train-loss", "valid.auc", "valid.logloss"]
    assert tags["valid.auc"] == [(1, 0.61), (2, 0.64)] and [step for step, _ in tags["valid.logloss"]] == [1]
