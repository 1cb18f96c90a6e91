"""Keep training a finished run on new data (``fed.warm-start``), driven in-process with a tiny model.

The Flower path of the same loop is covered by ``test_use.py::test_continue_training_on_appended_data``.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from common.config import TINY_PRESET, AppConfig
from common.data import write_dataset
from common.modeling import get_trainable_state, load_adapter
from common.run_files import ADAPTER_DIR, ROUNDS_FILE
from common.synthetic import make_synthetic
from server.federation import run_federation
from server.warm_start import WarmStartError
from simulations.compare.inprocess import InProcessTransport, setups_for

TINY = {**TINY_PRESET, "train.max-examples": 48, "eval.max-rank-users": 2, "num-server-rounds": 2, "fed.patience": 0}
PLATFORMS = ["app", "social_shop", "web_shop"]


class SpyTransport(InProcessTransport):
    """The real in-process transport, recording the state and private parameters each round starts from."""

    def __init__(self, cfg: AppConfig) -> None:
        super().__init__(setups_for(cfg, PLATFORMS, device="cpu"))
        self.started: dict[int, tuple[dict, dict]] = {}

    def train_round(self, state, cfg, rnd):  # noqa: ANN001, ANN201
        private = {p: self.store(cfg, p).load(rnd - 1) for p in PLATFORMS}
        self.started[rnd] = ({k: np.array(v) for k, v in state.items()}, private)
        return super().train_round(state, cfg, rnd)


def _dataset(root: Path, extra: str = "") -> Path:
    write_dataset(root, make_synthetic(seed=0).values())
    if extra:
        with open(root / "app" / "interactions.csv", "a") as fh:
            fh.write(extra)
    return root


def _cfg(data: Path, out: Path, **extra: object) -> AppConfig:
    return AppConfig().replace(**{**TINY, "data.dir": str(data), "out-dir": str(out), **extra})


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AppConfig]:
    root = tmp_path_factory.mktemp("first")
    cfg = _cfg(_dataset(root / "data"), root / "run")
    run_federation(SpyTransport(cfg), cfg)
    return root / "run", cfg


def test_continued_run_starts_from_the_old_adapter_and_private_parts(
    finished: tuple[Path, AppConfig], tmp_path: Path
) -> None:
    # Prepare: new interactions (a new user; a new item in the catalogue)
    old_dir, old_cfg = finished
    data = _dataset(tmp_path / "data", "newbie,app-003,1750000000,5\nnewbie,app-004,1750000001,1\n")
    items = data / "app" / "items.csv"
    items.write_text(items.read_text() + "app-new,Purple Velvet Scarf\n")
    cfg = _cfg(data, tmp_path / "run", **{"num-server-rounds": 4, "fed.warm-start": str(old_dir)})
    transport = SpyTransport(cfg)
    # Execute
    summary = run_federation(transport, cfg)
    # Assert: rounds 3 and 4, numbered after the old run's two
    assert sorted(transport.started) == [3, 4]
    assert [json.loads(x)["round"] for x in (tmp_path / "run" / ROUNDS_FILE).read_text().splitlines()] == [3, 4]
    best = json.loads((old_dir / "summary.json").read_text())["best_round"]
    assert summary["continued_from"] == {"run": str(old_dir), "after_round": 2, "adapter_of_round": best}
    assert summary["best_round"] in (3, 4) and summary["config"]["fed.warm-start-round"] == best
    # ... round 3 started from the old run's exported adapter ...
    scorer, _ = load_adapter(old_cfg.model, old_cfg.lora, old_dir / ADAPTER_DIR, seed=old_cfg.seed)
    state, private = transport.started[3]
    for name, value in get_trainable_state(scorer).items():
        np.testing.assert_array_equal(state[name], value)
    # ... and each platform from its own private parameters of that round (round 4 from round 3's)
    from safetensors.numpy import load_file

    old_app = load_file(str(old_dir / "private" / "app" / f"round-{best:06d}.safetensors"))
    np.testing.assert_array_equal(private["app"]["item_bias"], old_app["item_bias"])
    assert np.any(private["app"]["item_bias"] != 0)
    assert not np.array_equal(transport.started[4][1]["app"]["item_bias"], old_app["item_bias"])


def test_a_continued_run_that_dies_resumes_as_usual(finished: tuple[Path, AppConfig], tmp_path: Path) -> None:
    # Prepare: one continued round done, then ask for one more on the same folder
    old_dir, _ = finished
    data = _dataset(tmp_path / "data")
    cfg = _cfg(data, tmp_path / "run", **{"num-server-rounds": 3, "fed.warm-start": str(old_dir)})
    run_federation(SpyTransport(cfg), cfg)
    more = cfg.replace(**{"num-server-rounds": 4})
    transport = SpyTransport(more)
    # Execute
    summary = run_federation(transport, more)
    # Assert: the checkpoint wins over the warm start: only round 4 is trained
    assert sorted(transport.started) == [4] and summary["resumed_after_round"] == 3


@pytest.mark.parametrize(
    "change,message",
    [
        ({"lora.r": 8}, r"another model: `lora.r` \(4 there, 8 now\)"),
        ({"model.pick-head": False}, r"another model: `model.pick-head` \(True there, False now\)"),  # head width
        ({"model.item-stats": False}, r"another model: `model.item-stats` \(True there, False now\)"),
        ({"num-server-rounds": 2}, r"already ran 2 rounds"),
        ({"fed.warm-start": "SELF"}, r"this run's own folder"),
        ({"fed.warm-start": "MISSING"}, r"no finished run there"),
    ],
)
def test_unsound_continuations_are_refused_before_anything_is_written(
    finished: tuple[Path, AppConfig], tmp_path: Path, change: dict, message: str
) -> None:
    # Prepare
    old_dir, old_cfg = finished
    out = tmp_path / "run"
    warm = {"SELF": str(out), "MISSING": str(tmp_path / "nothing")}.get(str(change.get("fed.warm-start")), old_dir)
    cfg = _cfg(Path(old_cfg.data.dir), out, **{"num-server-rounds": 3, **change, "fed.warm-start": str(warm)})
    # Execute / Assert
    with pytest.raises(WarmStartError, match=message):
        run_federation(SpyTransport(cfg), cfg)
    assert not out.exists()
