"""The pick output: which rows each loss sees, the exact losses, and the ranking score p(pick) * p(like)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients.trainer import EncodedSplit, PlatformBatches, batch_logits, batch_loss, predict, train
from common.config import LoraSpec, ModelSpec, TrainSpec
from common.modeling import PrivateParts, build_scorer, get_trainable_state
from tests.tiny import tiny_split, tiny_table

LORA = LoraSpec(r=2, alpha=4, dropout=0.0, target_modules="query,value")
CPU = torch.device("cpu")


def _rows(rated: list[int], labels: list[int], implicit: bool = False) -> EncodedSplit:
    n = len(rated)
    base = tiny_split(n)
    return EncodedSplit(base.users, base.items, base.liked, base.disliked, np.asarray(labels, np.float32),
                        np.asarray(rated, np.float32), implicit)  # fmt: skip


def test_like_loss_skips_unrated_rows_of_explicit_data_only() -> None:
    data = _rows(rated=[1, 1, 0, 0], labels=[1, 0, 0, 0])
    assert data.like_rows(pick=True).tolist() == [1, 1, 0, 0]
    assert data.like_rows(pick=False).tolist() == [1, 1, 1, 1]  # no pick output: unrated rows are dislikes
    implicit = _rows(rated=[1, 1, 0, 0], labels=[1, 1, 0, 0], implicit=True)
    assert implicit.like_rows(pick=True).tolist() == [1, 1, 1, 1]  # implicit: liked == interacted


def test_loss_is_masked_like_bce_plus_weighted_pick_bce() -> None:
    data = _rows(rated=[1, 1, 0, 0], labels=[1, 0, 0, 0])
    logits = torch.tensor([[2.0, 1.0], [-1.0, 0.5], [3.0, -2.0], [0.0, -0.5]])
    spec = TrainSpec(pick_weight=0.5)
    like = (F.softplus(-logits[0, 0]) + F.softplus(logits[1, 0])) / 2  # BCE of rows 0 (label 1) and 1 (label 0)
    pick = F.binary_cross_entropy_with_logits(logits[:, 1], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert batch_loss(logits, data, spec, CPU).item() == pytest.approx((like + 0.5 * pick).item(), rel=1e-6)
    one = logits[:, :1]  # a model without a pick output: plain BCE over every row
    expected = F.binary_cross_entropy_with_logits(one[:, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert batch_loss(one, data, spec, CPU).item() == pytest.approx(expected.item(), rel=1e-6)


def _part(pick: bool, n: int = 24) -> PlatformBatches:
    table = tiny_table()
    return PlatformBatches(table, tiny_split(n, len(table)), PrivateParts(len(table), 6, 16, "embed", pick=pick))


def test_rank_score_is_p_pick_times_p_like_and_like_score_is_p_like() -> None:
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", dim=16), LORA)
    part = _part(pick=True)
    with torch.no_grad():
        part.private.item_pick_bias.copy_(torch.linspace(-2, 2, len(part.table)))
    scorer.eval()
    with torch.no_grad():
        logits = batch_logits(scorer, part, part.data, CPU)
    like, rank = (predict(scorer, part, part.data, 8, CPU, score=s) for s in ("like", "rank"))
    assert logits.shape == (len(part.data), 2)
    np.testing.assert_allclose(like, torch.sigmoid(logits[:, 0]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(rank, (torch.sigmoid(logits[:, 0]) * torch.sigmoid(logits[:, 1])).numpy(), rtol=1e-5)


def test_without_a_pick_output_rank_and_like_scores_agree_and_the_head_is_one_wide() -> None:
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", dim=16, pick_head=False), LORA)
    part = _part(pick=False)
    assert get_trainable_state(scorer)["head.3.weight"].shape == (1, 16)
    like, rank = (predict(scorer, part, part.data, 8, CPU, score=s) for s in ("like", "rank"))
    np.testing.assert_allclose(like, rank)


def test_pick_output_learns_which_items_get_picked() -> None:
    # Prepare: items 0-14 are what users rate, items 15-29 are the unrated samples
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", dim=16), LORA)
    part = _part(pick=True, n=240)
    rated = (part.data.items < 15).astype(np.float32)
    part.data = EncodedSplit(part.data.users, part.data.items, part.data.liked, part.data.disliked,
                             part.data.labels * rated, rated)  # fmt: skip
    # Execute
    train(scorer, [part], TrainSpec(local_epochs=5, batch_size=32, lr=1e-2, private_lr=0.1), CPU, seed=0)
    # Assert: the pick bias of picked items is above every unpicked one's
    bias = part.private.item_pick_bias.detach().numpy()
    seen = np.unique(part.data.items)
    picked, unpicked = bias[seen[seen < 15]], bias[seen[seen >= 15]]
    assert picked.min() > unpicked.max()
