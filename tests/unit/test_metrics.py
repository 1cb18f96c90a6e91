from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from common.metrics import (
    auc,
    classification_metrics,
    hit_at_k,
    log_loss,
    ndcg_at_k,
    rank_of_positive,
    ranking_metrics,
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
