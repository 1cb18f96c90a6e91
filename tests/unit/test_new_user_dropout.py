"""New-user dropout (``train.new-user-dropout``): a marked train row is scored as a user who never trained,
without the user's private vector and bias and with the history cut to its oldest k interactions."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from clients.trainer import _logits, as_new_users, text_vectors, train
from common.config import AppConfig, ConfigError, LoraSpec, ModelSpec, TrainSpec
from common.modeling import build_scorer, get_trainable_state
from tests.tiny import scorer_with_private_values, tiny_part

CPU = torch.device("cpu")


def _split(liked: list[list[int]], disliked: list[list[int]], width: int = 6):
    """A tiny split whose histories are given row by row (most recent first)."""
    part = tiny_part(n=len(liked))

    def pad(rows: list[list[int]]) -> np.ndarray:
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for r, ids in enumerate(rows):
            out[r, : len(ids)] = ids
        return out

    return dataclasses.replace(part.data, liked=pad(liked), disliked=pad(disliked))


def test_marked_rows_keep_their_oldest_k_interactions_in_proportion() -> None:
    # Prepare: four rows, most recent first
    data = _split(liked=[[9, 8, 7, 6], [5, 4], [3, 2, 1], [10, 11]], disliked=[[20, 21], [22], [], [23, 24, 25, 26]])
    rows = np.array([True, True, True, False])
    ks = np.array([3, 5, 1, 1])
    # Execute
    cut = as_new_users(data, rows, ks)
    # Assert: row 0, k=3 of 4 liked + 2 disliked: round(3 * 4/6) = 2 oldest liked, 1 oldest disliked
    assert cut.liked[0].tolist() == [7, 6, -1, -1, -1, -1] and cut.disliked[0].tolist() == [21, -1, -1, -1, -1, -1]
    # row 1: 3 interactions <= k = 5: whole; row 2: k = 1 of 3 liked: the oldest one
    assert cut.liked[1].tolist() == data.liked[1].tolist() and cut.disliked[1].tolist() == data.disliked[1].tolist()
    assert cut.liked[2].tolist() == [1, -1, -1, -1, -1, -1] and (cut.disliked[2] == -1).all()
    # row 3 is not marked: untouched; the input is not changed in place
    assert cut.liked[3].tolist() == data.liked[3].tolist() and cut.disliked[3].tolist() == data.disliked[3].tolist()
    assert data.liked[0].tolist() == [9, 8, 7, 6, -1, -1]


def test_the_cut_fills_k_from_the_other_list_when_one_is_short() -> None:
    # 1 liked, 5 disliked, k = 5: round(5 / 6) = 1 liked, 4 disliked; 0 liked, 3 disliked, k = 2: 2 disliked
    data = _split(liked=[[1], []], disliked=[[20, 21, 22, 23, 24], [30, 31, 32]])
    cut = as_new_users(data, np.array([True, True]), np.array([5, 2]))
    assert cut.liked[0].tolist()[:1] == [1] and cut.disliked[0].tolist()[:5] == [21, 22, 23, 24, -1]
    assert (cut.liked[1] == -1).all() and cut.disliked[1].tolist()[:3] == [31, 32, -1]


def test_a_new_user_row_is_scored_without_the_users_private_parts() -> None:
    # Prepare: private parts with values
    scorer, part = scorer_with_private_values(n=12)
    data = part.data
    new = np.arange(12) % 3 == 0
    rows = [data.items, data.liked, data.disliked]
    vectors = text_vectors(scorer, part.table, np.arange(len(part.table)), CPU).detach()
    vectors = vectors + part.private.item_residual.detach()
    with torch.no_grad():
        # Execute
        got = _logits(scorer, part, vectors, rows, data, CPU, new_users=new)
        # The oracle: the same rows with every user's private parameters zeroed (a user who never trained)
        bare = copy.deepcopy(part)
        bare.private.user_bias.zero_()
        bare.private.user_residual.zero_()
        oracle = _logits(scorer, bare, vectors, rows, data, CPU)
        warm = _logits(scorer, part, vectors, rows, data, CPU)
        both = _logits(scorer, part, vectors, rows, data, CPU, cold=new, new_users=new)
        both_oracle = _logits(scorer, bare, vectors, rows, data, CPU, cold=new)
    # Assert: marked rows equal the oracle, the others are untouched; with a cold item too, both are taken out
    torch.testing.assert_close(got[torch.from_numpy(new)], oracle[torch.from_numpy(new)], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[torch.from_numpy(~new)], warm[torch.from_numpy(~new)])
    torch.testing.assert_close(both[torch.from_numpy(new)], both_oracle[torch.from_numpy(new)], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[torch.from_numpy(new)], warm[torch.from_numpy(new)])


def test_new_user_dropout_is_checked_and_trains() -> None:
    with pytest.raises(ConfigError, match="train.new-user-dropout"):
        AppConfig().replace(**{"train.new-user-dropout": 1.0})
    # Training with it: the shared model moves, the marked users' private rows still learn from their other rows
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", max_length=32, dim=16), LoraSpec(r=4))
    before = get_trainable_state(scorer)
    part = tiny_part(n=64)
    metrics = train(scorer, [part], TrainSpec(batch_size=16, new_user_dropout=0.5), CPU, seed=0)
    after = get_trainable_state(scorer)
    assert np.isfinite(metrics["train-loss"])
    assert any(not np.array_equal(before[k], after[k]) for k in before if "head." in k)
    assert part.private.user_residual.abs().sum() > 0
