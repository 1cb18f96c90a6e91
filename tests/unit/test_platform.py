"""A platform's prepared data: the scarce scenario's thinned train split, user rows, private parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.platform import NodeSetup, prepare, split_config
from clients.private_state import PrivateStore, private_folder
from common.config import AppConfig, DataSpec
from common.modeling import load_base
from common.splits import SplitConfig
from simulations.compare.runner import train_fractions

CFG = AppConfig().replace(**{"model.base": "tiny-random", "model.max-length": 16, "eval.max-rank-users": 3})


def _prepared(fraction: float):
    _, tokenizer = load_base("tiny-random")
    setup = NodeSetup("web_shop", "", "cpu", fraction)
    return prepare(setup, CFG.data, CFG.eval.max_rank_users, CFG.seed, tokenizer, CFG.model.max_length)


def test_a_scarce_platform_keeps_a_share_of_its_train_examples_and_its_whole_test_set() -> None:
    full, scarce = _prepared(1.0), _prepared(0.1)
    assert len(scarce.train) == round(0.1 * len(full.train))
    np.testing.assert_array_equal(scarce.test.labels, full.test.labels)
    np.testing.assert_array_equal(scarce.test.items, full.test.items)
    assert len(scarce.valid) == len(full.valid) and scarce.ranking[1] == full.ranking[1]


def test_scarce_scenario_thins_every_platform_but_the_large_one() -> None:
    assert train_fractions(["a", "b", "c"], "scarce", "a", 0.1) == {"b": 0.1, "c": 0.1}
    assert train_fractions(["a", "b", "c"], "full", "a", 0.1) == {}


def test_every_user_of_every_split_has_a_private_row() -> None:
    full = _prepared(1.0)
    users = {ex.user_id for part in (full.splits.train, full.splits.valid, full.splits.test) for ex in part}
    assert set(full.users) == users and sorted(full.users.values()) == list(range(len(users)))


@pytest.mark.parametrize("on_disk", [True, False])
def test_private_store_loads_the_latest_round_at_or_before_and_keeps_only_recent_rounds(
    tmp_path: Path, on_disk: bool
) -> None:
    store = PrivateStore(tmp_path / "p" if on_disk else None, keep=2)
    for rnd in (1, 2, 3):
        store.save(rnd, {"item_bias": np.full(2, float(rnd))})
    assert store.rounds() == [2, 3]
    assert store.load(1) is None and store.load(2)["item_bias"][0] == 2.0 and store.load(9)["item_bias"][0] == 3.0
    assert store.upto(2).rounds() == [2] and store.upto(2).folder is None
    if on_disk:  # another process (a resumed run) finds the same rounds
        assert PrivateStore(tmp_path / "p").load(3)["item_bias"][0] == 3.0
        assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["round-000002.safetensors",
                                                                      "round-000003.safetensors"]  # fmt: skip


def test_private_folders_are_per_platform_and_per_run() -> None:
    assert private_folder("runs/a", "web") == Path("runs/a/private/web")
    deployed = private_folder("/srv/run1", "web", "/var/crossfed")
    assert deployed.parent == Path("/var/crossfed/web") and deployed != private_folder(
        "/srv/run2", "web", "/var/crossfed"
    )


def test_validation_is_ranked_too_so_ndcg_can_pick_the_best_round() -> None:
    from clients.tasks import evaluate_state
    from common.modeling import build_scorer, get_trainable_state

    cfg = CFG.replace(**{"model.dim": 16, "lora.r": 4})
    state = get_trainable_state(build_scorer(cfg.model, cfg.lora, cfg.seed)[0])
    metrics = evaluate_state(cfg, NodeSetup("web_shop", "", "cpu"), state, 1, PrivateStore(), ("valid",))
    assert {"valid.auc", "valid.hr@10", "valid.ndcg@10", "valid.rank-users"} <= set(metrics)
    assert metrics["valid.rank-users"] == 3 and not any(k.startswith("test.") for k in metrics)


def test_rounds_kept_cover_the_oldest_possible_best_round() -> None:
    from clients.private_state import rounds_to_keep

    assert rounds_to_keep(2) == 3 and rounds_to_keep(0) == 0  # 0: no early stopping, keep every round


def test_a_runs_split_defaults_are_the_split_defaults() -> None:
    # `data.*` is declared once (DataSpec): SplitConfig's defaults are the same settings
    assert split_config(DataSpec(), seed=0) == SplitConfig()
