"""Item statistics the head sees: counts and smoothed like-rates by hand, leave-one-out on train rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.config import LoraSpec, ModelSpec
from common.item_stats import PRIOR_STRENGTH, ItemStats
from common.modeling import build_scorer

# item 0: liked twice, disliked once; item 1: disliked once; item 2: only an unrated sample row
ITEMS = np.array([0, 0, 0, 1, 2])
LABELS = np.array([1, 1, 0, 0, 0], dtype=np.float32)
RATED = np.array([1, 1, 1, 1, 0], dtype=np.float32)


def _rate(likes: float, count: float, prior: float) -> float:
    return (likes + PRIOR_STRENGTH * prior) / (count + PRIOR_STRENGTH) - prior


def test_counts_likes_and_prior_come_from_rated_rows_only() -> None:
    stats = ItemStats.from_train(4, ITEMS, LABELS, RATED)
    assert stats.counts.tolist() == [3, 1, 0, 0] and stats.likes.tolist() == [2, 0, 0, 0]
    assert stats.prior == pytest.approx(0.5)  # 2 likes among 4 rated rows


def test_features_by_hand_full_for_held_out_rows_and_leave_one_out_for_train_rows() -> None:
    stats = ItemStats.from_train(4, ITEMS, LABELS, RATED)
    held_out = stats.features(np.array([0, 3]))
    np.testing.assert_allclose(held_out[0], [math.log1p(3), _rate(2, 3, 0.5)], rtol=1e-6)
    np.testing.assert_allclose(held_out[1], [0.0, 0.0], atol=1e-7)  # an unseen item: no count, the prior
    train = stats.features(ITEMS, LABELS, RATED)
    np.testing.assert_allclose(train[0], [math.log1p(2), _rate(1, 2, 0.5)], rtol=1e-6)  # a like, itself removed
    np.testing.assert_allclose(train[2], [math.log1p(2), _rate(2, 2, 0.5)], rtol=1e-6)  # a dislike, itself removed
    np.testing.assert_allclose(train[3], [0.0, 0.0], atol=1e-7)  # its only rating was itself
    np.testing.assert_allclose(train[4], [0.0, 0.0], atol=1e-7)  # unrated rows are not interactions


def test_the_head_reads_the_statistics_only_when_configured() -> None:
    lora = LoraSpec(r=2, alpha=4, dropout=0.0, target_modules="query,value")
    with_stats, _ = build_scorer(ModelSpec(base="tiny-random", dim=16), lora)
    without, _ = build_scorer(ModelSpec(base="tiny-random", dim=16, item_stats=False), lora)
    assert with_stats.head[1].in_features == without.head[1].in_features + 2
    vectors, rows = torch.randn(5, 16), torch.tensor([[0, 1], [2, -1]])
    with pytest.raises(ValueError, match="item-stats"):
        with_stats(vectors, torch.tensor([3, 4]), rows, rows)
    assert with_stats(vectors, torch.tensor([3, 4]), rows, rows, stats=torch.zeros(2, 2)).shape == (2, 2)
