from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from common.metrics import (
    auc,
    bootstrap_metric,
    classification_metrics,
    hit_at_k,
    log_loss,
    mean_metrics,
    ndcg_at_k,
    paired_bootstrap_diff,
    rank_of_positive,
    ranking_metrics,
    weighted_auc,
    weighted_mean,
)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        ([0, 1], [0.2, 0.9], 1.0),
        ([0, 1], [0.9, 0.2], 0.0),
        ([0, 1], [0.5, 0.5], 0.5),  # a tie counts 1/2
        ([0, 0, 1], [0.3, 0.5, 0.5], 0.75),  # one win, one tie out of two pairs
    ],
)
def test_auc_hand_values(labels: list[int], scores: list[float], expected: float) -> None:
    # Execute / Assert
    assert auc(labels, scores) == pytest.approx(expected)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_auc_nan_for_one_class(labels: list[int]) -> None:
    # Execute / Assert
    assert math.isnan(auc(labels, [0.5] * len(labels)))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn(seed: int) -> None:
    # Prepare: rounded scores so ties occur
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)

    # Execute / Assert
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_log_loss_matches_sklearn(seed: int) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 100)
    probs = rng.uniform(0.01, 0.99, 100)

    # Execute / Assert
    assert log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs), rel=1e-12)


def test_log_loss_hand_value_and_clipping() -> None:
    # Execute / Assert
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_binary_labels_required() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="0/1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        log_loss([0, 1], [0.1])


@pytest.mark.parametrize(
    ("pos", "negs", "rank"),
    [
        (0.9, [0.1, 0.2, 0.3], 0),
        (0.25, [0.1, 0.2, 0.3], 1),
        (0.0, [0.1, 0.2, 0.3], 3),
        (0.2, [0.1, 0.2, 0.3], 2),  # the tie counts against the positive
        (0.5, [0.5, 0.5, 0.5], 3),
    ],
)
def test_rank_of_positive(pos: float, negs: list[float], rank: int) -> None:
    # Execute / Assert
    assert rank_of_positive(pos, np.array(negs)) == rank


@pytest.mark.parametrize(
    ("rank", "k", "hit", "ndcg"),
    [(0, 10, 1.0, 1.0), (1, 10, 1.0, 1 / math.log2(3)), (9, 10, 1.0, 1 / math.log2(11)), (10, 10, 0.0, 0.0)],
)
def test_hit_and_ndcg(rank: int, k: int, hit: float, ndcg: float) -> None:
    # Execute / Assert
    assert hit_at_k(rank, k) == hit
    assert ndcg_at_k(rank, k) == pytest.approx(ndcg)


def test_ranking_metrics_match_per_user_functions() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    pos = np.round(rng.random(50), 2)
    neg = np.round(rng.random((50, 30)), 2)
    ranks = [rank_of_positive(p, n) for p, n in zip(pos, neg, strict=True)]

    # Execute
    metrics = ranking_metrics(pos, neg, k=5)

    # Assert
    assert set(metrics) == {"hr@5", "ndcg@5"}
    assert metrics["hr@5"] == pytest.approx(np.mean([hit_at_k(r, 5) for r in ranks]))
    assert metrics["ndcg@5"] == pytest.approx(np.mean([ndcg_at_k(r, 5) for r in ranks]))


def test_ranking_metrics_hand_value() -> None:
    # Execute: ranks 0 and 1 -> ndcg (1 + 1/log2(3)) / 2
    metrics = ranking_metrics(np.array([0.9, 0.5]), np.array([[0.1, 0.2], [0.1, 0.6]]))

    # Assert
    assert metrics == pytest.approx({"hr@10": 1.0, "ndcg@10": (1 + 1 / math.log2(3)) / 2})


def test_classification_metrics() -> None:
    # Execute
    metrics = classification_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])

    # Assert
    assert set(metrics) == {"auc", "logloss", "positive_rate", "n"}
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["positive_rate"] == 0.5
    assert metrics["n"] == 4


def test_weighted_mean_matches_numpy_and_skips_nan() -> None:
    # Prepare
    per_platform = {"a": {"auc": 0.6, "n": 10.0}, "b": {"auc": 0.8, "n": 30.0}, "c": {"auc": math.nan, "n": 5.0}}
    weights = {"a": 1.0, "b": 3.0, "c": 2.0}

    # Execute
    mean = weighted_mean(per_platform, weights)

    # Assert
    assert mean["auc"] == pytest.approx(np.average([0.6, 0.8], weights=[1.0, 3.0]))
    assert mean["n"] == pytest.approx(np.average([10.0, 30.0, 5.0], weights=[1.0, 3.0, 2.0]))
    assert math.isnan(weighted_mean({"a": {"auc": math.nan}}, {"a": 1.0})["auc"])


def test_mean_metrics_weights_split_metrics_by_n_and_ranking_by_ranked_users() -> None:
    # Prepare: web's AUC is NaN (one class), so it drops out of the AUC mean only
    per_platform = {
        "app": {"valid.n": 10.0, "valid.rank-users": 4.0, "valid.auc": 0.6, "valid.hr@10": 0.5},
        "web": {"valid.n": 30.0, "valid.rank-users": 1.0, "valid.auc": math.nan, "valid.hr@10": 1.0},
    }

    # Execute
    mean = mean_metrics(per_platform)

    # Assert: hand-derived
    assert mean == {
        "valid.n": 40.0,
        "valid.rank-users": 5.0,
        "valid.auc": 0.6,
        "valid.hr@10": pytest.approx((4 * 0.5 + 1 * 1.0) / 5),
    }


# --- paired bootstrap ------------------------------------------------------------------------


def _seeded_pairs(n: int, seeds: int, gap: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per seed: labels, an arm whose scores separate the classes by ``gap`` more than ref's."""
    pairs = []
    for k in range(seeds):
        rng = np.random.default_rng(100 + k)
        y = (rng.random(n) < 0.4).astype(float)
        noise = rng.normal(size=n)
        pairs.append((y, y * (0.5 + gap) + noise, y * 0.5 + rng.normal(size=n)))
    return pairs


@pytest.mark.parametrize("seed", range(3))
def test_weighted_auc_equals_auc_of_the_repeated_sample(seed: int) -> None:
    # Prepare: scores with ties (rounded), multiplicities 0..3 per example
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.5).astype(float)
    s = np.round(rng.random(60), 1)
    counts = rng.integers(0, 4, size=(5, 60))
    # Execute
    got = weighted_auc(y, s, counts)
    # Assert: the same as expanding each resample and calling auc (mean ranks for ties)
    want = [auc(np.repeat(y, c), np.repeat(s, c)) for c in counts]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_bootstrap_metric_vectorised_auc_matches_the_generic_loop() -> None:
    y, arm, _ = _seeded_pairs(80, 1, 0.5)[0]
    fast = bootstrap_metric(y, [arm], auc, n_boot=50, seed=3)
    slow = bootstrap_metric(y, [arm], lambda a, b: auc(a, b), n_boot=50, seed=3)  # not `auc`: the loop path
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_paired_bootstrap_identical_scores_give_zero() -> None:
    pairs = [(y, arm, arm.copy()) for y, arm, _ in _seeded_pairs(200, 3, 0.0)]
    got = paired_bootstrap_diff(pairs, n_boot=200)
    assert (got["diff"], got["low"], got["high"]) == (0.0, 0.0, 0.0)
    assert got["n_boot"] == 200 and got["n"] == 200


def test_paired_bootstrap_clearly_better_arm_excludes_zero_and_point_is_the_auc_difference() -> None:
    pairs = _seeded_pairs(1000, 3, 1.0)
    got = paired_bootstrap_diff(pairs, n_boot=1000, seed=7)
    want = np.mean([auc(y, a) - auc(y, r) for y, a, r in pairs])
    assert got["diff"] == pytest.approx(want, abs=1e-12)
    assert 0 < got["low"] < got["diff"] < got["high"]
    # and the reverse comparison is the mirror image, below zero
    flipped = paired_bootstrap_diff([(y, r, a) for y, a, r in pairs], n_boot=1000, seed=7)
    assert flipped["high"] < 0 and flipped["low"] == pytest.approx(-got["high"])


def test_paired_bootstrap_is_deterministic_by_seed_and_no_better_arm_straddles_zero() -> None:
    pairs = _seeded_pairs(300, 2, 0.0)
    a, b, c = (paired_bootstrap_diff(pairs, n_boot=300, seed=s) for s in (1, 1, 2))
    assert a == b and a != c
    assert a["low"] < 0 < a["high"]


def test_paired_bootstrap_is_fast() -> None:
    # 1,000 examples x 1,000 replicates x 3 seeds: the size of one platform's report cell
    import time

    pairs = _seeded_pairs(1000, 3, 0.2)
    t0 = time.perf_counter()
    paired_bootstrap_diff(pairs)
    assert time.perf_counter() - t0 < 2.0


def test_paired_bootstrap_rejects_misaligned_pairs() -> None:
    y, a, _ = _seeded_pairs(10, 1, 0.0)[0]
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap_diff([(y, a, a[:5])])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_diff([])


def test_test_prefix_of_new_users_extra_splits_round_trips_and_weights_by_its_own_n() -> None:
    from common.metrics import add_test_prefix, mean_metrics, strip_test_prefix

    raw = {"valid.auc": 0.5, "test.auc": 0.7, "test.n": 10.0, "test-k1.auc": 0.6, "test-k1.n": 4.0, "test-k10.n": 1.0}
    plain = strip_test_prefix(raw)
    assert plain == {"auc": 0.7, "n": 10.0, "k1.auc": 0.6, "k1.n": 4.0, "k10.n": 1.0}
    assert add_test_prefix(plain) == {k: v for k, v in raw.items() if not k.startswith("valid.")}
    other = {"test.auc": 0.9, "test.n": 10.0, "test-k1.auc": 0.9, "test-k1.n": 1.0}
    mean = strip_test_prefix(mean_metrics({"a": raw, "b": other}))
    assert mean["k1.auc"] == pytest.approx((0.6 * 4 + 0.9 * 1) / 5) and mean["auc"] == pytest.approx(0.8)
