"""Biased MF baseline: it finds planted structure, is tuned on validation only, is seeded, and
falls back to the known parts for unseen ids; the central variant links users across platforms."""

import dataclasses
import math

import numpy as np
import pytest

from common.data import Interaction, Item, PlatformData
from common.metrics import auc
from common.splits import Example, PlatformSplits, SplitConfig, split_platform
from simulations.compare import baselines
from simulations.compare.baselines import evaluate_baseline, platform_scorers
from simulations.compare.mf import MFParams, central_item_id, fit_central_mf, fit_mf

SMALL_GRID = (MFParams(2, 0.01), MFParams(8, 0.03))


def _planted_platform(name: str = "p", users: int = 80, items: int = 40, per_user: int = 20, seed: int = 0):
    """Labels from a rank-2 taste model with zero-mean item effects: only collaborative signal."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(users, 2))
    q = rng.normal(size=(items, 2))
    rows = []
    for u in range(users):
        for t, i in enumerate(rng.choice(items, per_user, replace=False)):
            like = rng.random() < 1 / (1 + np.exp(-4 * p[u] @ q[i]))
            rows.append(Interaction(f"u{u}", f"i{i}", float(t), 5.0 if like else 1.0))
    catalogue = {f"i{i}": Item(f"i{i}", f"item {i}") for i in range(items)}
    return split_platform(
        PlatformData(name, catalogue, rows, "rating"), SplitConfig(rank_negatives=20, train_unseen_negatives=0)
    )


@pytest.fixture(scope="module")
def planted() -> PlatformSplits:
    return _planted_platform()


def test_mf_beats_item_baselines_on_planted_low_rank(planted: PlatformSplits) -> None:
    # Execute
    got = {
        name: evaluate_baseline(platform_scorers(name, {"p": planted}, set(), seed=0)["p"], planted, planted.ranking)
        for name in ("mf", "like-rate", "popularity")
    }
    # Assert: the planted taste is invisible to item statistics, visible to MF
    assert got["mf"]["test.auc"] > 0.8
    assert got["mf"]["test.auc"] > max(got["like-rate"]["test.auc"], got["popularity"]["test.auc"]) + 0.15
    assert got["mf"]["valid.auc"] > 0.8
    assert got["mf"]["test.hr@10"] > got["popularity"]["test.hr@10"]
    assert math.isfinite(got["mf"]["test.logloss"])


def test_hyperparameters_are_the_best_validation_trial(planted: PlatformSplits) -> None:
    model = fit_mf(planted.train, planted.valid, seed=0, grid=SMALL_GRID)
    assert [t.params for t in model.trials] == list(SMALL_GRID)
    assert model.criterion == "auc"
    assert model.chosen == max(model.trials, key=lambda t: t.valid_score)
    # the recorded score is the chosen model's AUC on the valid split
    probs = model.probs([ex.user_id for ex in planted.valid], [ex.item_id for ex in planted.valid])
    assert auc([ex.label for ex in planted.valid], probs) == pytest.approx(model.chosen.valid_score)
    assert model.hyperparameters()["dim"] == model.chosen.params.dim and model.chosen.epochs > 0


def test_mf_baseline_never_sees_test(planted: PlatformSplits, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the same platform with every test label flipped, and a spy on what fit_mf receives
    flipped = dataclasses.replace(planted, test=[dataclasses.replace(ex, label=1 - ex.label) for ex in planted.test])
    calls = []

    def spy(train: list, valid: list, seed: int, grid: tuple = SMALL_GRID) -> object:
        calls.append((train, valid))
        return fit_mf(train, valid, seed, grid)

    monkeypatch.setattr(baselines, "fit_mf", spy)
    # Execute
    a = platform_scorers("mf", {"p": planted}, set(), seed=0)["p"]
    b = platform_scorers("mf", {"p": flipped}, set(), seed=0)["p"]
    # Assert: fitted from train + valid only, so test labels change nothing
    assert [(id(t), id(v)) for t, v in calls] == [(id(s.train), id(s.valid)) for s in (planted, flipped)]
    assert [a(ex, ex.item_id) for ex in planted.test] == [b(ex, ex.item_id) for ex in planted.test]


def test_fit_is_deterministic_by_seed(planted: PlatformSplits) -> None:
    first = fit_mf(planted.train, planted.valid, seed=3, grid=SMALL_GRID)
    again = fit_mf(planted.train, planted.valid, seed=3, grid=SMALL_GRID)
    other = fit_mf(planted.train, planted.valid, seed=4, grid=SMALL_GRID)
    assert first.trials == again.trials
    assert all(np.array_equal(x, y) for x, y in zip(first.weights.arrays(), again.weights.arrays(), strict=True))
    assert not np.array_equal(first.weights.user_factors, other.weights.user_factors)


def test_unseen_user_and_item_fall_back_to_known_biases() -> None:
    # Prepare
    train = [Example("u1", "i1", 1, (), ()), Example("u1", "i2", 0, (), ()), Example("u2", "i1", 1, (), ())]
    valid = [Example("u2", "i2", 0, (), ()), Example("u1", "i1", 1, (), ())]
    model = fit_mf(train, valid, seed=0, grid=(MFParams(2, 0.01),))
    p = model.weights
    mu, bu, bi = p.mu[0], p.user_bias[model.users["u1"]], p.item_bias[model.items["i1"]]

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    # Assert
    assert model.prob("nobody", "nothing") == pytest.approx(sig(mu))
    assert model.prob("nobody", "i1") == pytest.approx(sig(mu + bi))
    assert model.prob("u1", "nothing") == pytest.approx(sig(mu + bu))


def test_one_label_valid_split_tunes_on_logloss() -> None:
    train = [Example("u1", "i1", 1, (), ()), Example("u1", "i2", 0, (), ()), Example("u2", "i1", 1, (), ())]
    model = fit_mf(train, [Example("u2", "i1", 1, (), ())], seed=0, grid=(MFParams(2, 0.01),))
    assert model.criterion == "-logloss" and model.chosen.valid_score <= 0
    with pytest.raises(ValueError, match="no valid examples"):
        fit_mf(train, [], seed=0)


def _linked_platforms() -> dict[str, PlatformSplits]:
    """Two platforms with the same item ids meaning different things; tastes are +-1.

    Users b* have no train interactions on B at all: their taste is visible only on A.
    """
    rng = np.random.default_rng(1)
    taste = {f"{g}{n}": int(rng.choice([-1, 1])) for g in "ab" for n in range(30)}
    flip = {"A": 1, "B": -1}  # on B, items i10..i19 have the opposite kind of A's same-named item
    kind = {(plat, f"i{i}"): (1 if i % 2 else -1) * (flip[plat] if i >= 10 else 1) for plat in "AB" for i in range(20)}

    def ex(plat: str, user: str, item: str) -> Example:
        return Example(user, item, int(taste[user] == kind[plat, item]), (), ())

    def rated(plat: str, user: str, count: int, skip: int = 0) -> list[Example]:
        return [ex(plat, user, f"i{i}") for i in rng.permutation(20)[skip : skip + count]]

    items = {f"i{i}": Item(f"i{i}", "") for i in range(20)}
    linked, a_only = [u for u in taste if u[0] == "a"], [u for u in taste if u[0] == "b"]
    a_train = [e for u in taste for e in rated("A", u, 14)]
    b_train = [e for u in linked for e in rated("B", u, 14)]
    b_valid = [e for u in linked for e in rated("B", u, 2)]
    b_test = [e for u in a_only for e in rated("B", u, 6)]
    a_valid = [e for u in linked for e in rated("A", u, 2)]
    return {
        "A": PlatformSplits("A", items, a_train, a_valid, a_valid, []),
        "B": PlatformSplits("B", items, b_train, b_valid, b_test, []),
    }


def test_central_mf_links_users_across_platforms() -> None:
    # Prepare
    platforms = _linked_platforms()
    b = platforms["B"]
    # Execute
    central = platform_scorers("mf-central", platforms, set(), seed=0)["B"]
    local = platform_scorers("mf", platforms, set(), seed=0)["B"]
    # Assert: B's test users are strangers to B's own MF, but known to the central one through A
    assert evaluate_baseline(central, b, [])["test.auc"] > 0.9
    assert evaluate_baseline(local, b, [])["test.auc"] < 0.7


def test_central_mf_namespaces_items_by_platform() -> None:
    model = fit_central_mf(_linked_platforms(), seed=0, grid=SMALL_GRID)
    assert {central_item_id("A", "i0"), central_item_id("B", "i0")} <= set(model.items)
    assert "i0" not in model.items
    assert any(u.startswith("b") for u in model.users)  # A-only users are in the one user table
