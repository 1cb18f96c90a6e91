"""A random platform's worth of encoded rows for trainer and model tests (no data files, no tokenizer)."""

from __future__ import annotations

import numpy as np
import torch

from clients.trainer import EncodedSplit, ItemTable, PlatformBatches
from common.config import LoraSpec, ModelSpec
from common.modeling import PrivateParts, Scorer, build_scorer


def tiny_table(num_items: int = 30, seed: int = 0) -> ItemTable:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 10, size=num_items)
    tokens = np.zeros((num_items, int(lengths.max())), dtype=np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = [101, *rng.integers(1000, 2000, size=int(n) - 2).tolist(), 102]
    ids = [f"i{i}" for i in range(num_items)]
    return ItemTable(ids, {x: i for i, x in enumerate(ids)}, tokens, lengths.astype(np.int64), pad_id=0)


def tiny_split(n: int = 24, num_items: int = 30, num_users: int = 6, history: int = 3, seed: int = 0) -> EncodedSplit:
    rng = np.random.default_rng(seed)
    liked = rng.integers(-1, num_items, size=(n, history))
    disliked = rng.integers(-1, num_items, size=(n, history))
    return EncodedSplit(
        users=rng.integers(0, num_users, size=n), items=rng.integers(0, num_items, size=n),
        liked=liked, disliked=disliked, labels=(rng.random(n) < 0.5).astype(np.float32),
    )  # fmt: skip


def tiny_part(n: int = 24, dim: int = 16, kind: str = "embed", seed: int = 0) -> PlatformBatches:
    table = tiny_table(seed=seed)
    return PlatformBatches(table, tiny_split(n, len(table), seed=seed), PrivateParts(len(table), 6, dim, kind))


def scorer_with_private_values(n: int = 12) -> tuple[Scorer, PlatformBatches]:
    """A tiny scorer with a pick output (eval mode) and a part of ``n`` rows whose private parameters
    (biases, residuals, pick bias) all hold random values: what tests that hide some of them compare."""
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", dim=16, pick_head=True), LoraSpec(r=4))
    scorer.eval()
    part = tiny_part(n=n)
    part.private = PrivateParts(len(part.table), 6, 16, "embed", pick=True)
    with torch.no_grad():
        for param in part.private.parameters():
            param.normal_(0.0, 0.5)
    return scorer, part
