"""Local training and evaluation on one platform's splits.

A short loop in the nanoGPT spirit: texts are tokenised once per process
(:class:`EncodedSplit`), batches are padded only to their own longest row, and the
optimiser is rebuilt every round because the fused adapter replaces the weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from common.config import TrainSpec
from common.data import Item
from common.metrics import classification_metrics, ranking_metrics
from common.modeling import Scorer
from common.splits import Example, RankingCase
from common.text import example_texts


@dataclass
class EncodedSplit:
    """Token ids of (candidate, history) pairs, unpadded, plus labels."""

    ids: list[list[int]]
    labels: np.ndarray  # (N,) float32 in {0, 1}

    def __len__(self) -> int:
        return len(self.ids)


def encode(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    labels: Sequence[int],
    max_length: int,
) -> EncodedSplit:
    """Candidate first, history second: when too long, the oldest history is cut, never the item."""
    if not pairs:
        return EncodedSplit([], np.zeros(0, np.float32))
    users, cands = zip(*pairs, strict=True)
    enc = tokenizer(list(cands), list(users), truncation="only_second", max_length=max_length)
    return EncodedSplit(list(enc["input_ids"]), np.asarray(labels, dtype=np.float32))


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], items: dict[str, Item], max_length: int
) -> EncodedSplit:
    pairs = [example_texts(ex, ex.item_id, items) for ex in examples]
    return encode(tokenizer, pairs, [ex.label for ex in examples], max_length)


def encode_ranking(
    tokenizer: PreTrainedTokenizerBase, cases: Sequence[RankingCase], items: dict[str, Item], max_length: int
) -> tuple[EncodedSplit, int]:
    """All candidates of all cases, case-major: row c*(1+N) is case c's positive."""
    pairs: list[tuple[str, str]] = []
    labels: list[int] = []
    width = 1 + (len(cases[0].negatives) if cases else 0)
    for case in cases:
        if 1 + len(case.negatives) != width:
            raise ValueError("every ranking case must have the same number of negatives")
        for j, cand in enumerate((case.positive, *case.negatives)):
            pairs.append(example_texts(case, cand, items))
            labels.append(int(j == 0))
    return encode(tokenizer, pairs, labels, max_length), width


def _batch(ids: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids.to(device), mask.to(device)  # (B, T), (B, T)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _length_bucketed(
    order: np.ndarray, lengths: Sequence[int], batch_size: int, rng: np.random.Generator, window: int = 32
) -> list[np.ndarray]:
    """Batches of similar length: sort each window of ``window`` shuffled batches by length, then shuffle batches.

    Padding (and so compute) drops to about the longest row of each batch, while every example is
    still seen once per epoch and batch order stays random.
    """
    batches: list[np.ndarray] = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches.extend(_batches(chunk, batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def train(
    scorer: Scorer,
    data: EncodedSplit,
    spec: TrainSpec,
    pad_id: int,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """E epochs of AdamW on BCE (+ optional FedProx term); returns mean loss and example count.

    Batch order and dropout masks come from ``seed`` alone (torch's global RNG is forked and
    seeded), so a platform's update does not depend on which process or actor ran it.
    """
    if len(data) == 0:
        raise ValueError("no training examples on this platform")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(scorer, data, spec, pad_id, device, seed)


def _train(
    scorer: Scorer, data: EncodedSplit, spec: TrainSpec, pad_id: int, device: torch.device, seed: int
) -> dict[str, float]:
    scorer.to(device).train()
    params = [p for p in scorer.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if spec.proximal_mu > 0 else None
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(data.labels)
    total, seen = torch.zeros((), dtype=torch.float64, device=device), 0  # summed on device: no sync per step
    for _ in range(spec.local_epochs):
        order = rng.permutation(len(data))
        if spec.sort_by_length:
            batches = _length_bucketed(order, [len(row) for row in data.ids], spec.batch_size, rng)
        else:
            batches = list(_batches(order, spec.batch_size))
        for idx in batches:
            input_ids, mask = _batch([data.ids[i] for i in idx], pad_id, device)
            with _autocast(device):
                logits = scorer(input_ids, mask)  # (B,)
            loss = loss_fn(logits.float(), labels[idx].to(device))
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * spec.proximal_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(idx)
            seen += len(idx)
        if not math.isfinite(total.item()):  # one GPU sync per epoch, not per step
            raise FloatingPointError("training loss became NaN/Inf; lower `train.lr`")
    return {"train-loss": total.item() / seen, "num-examples": float(len(data))}


@torch.no_grad()
def predict(scorer: Scorer, data: EncodedSplit, batch_size: int, pad_id: int, device: torch.device) -> np.ndarray:
    """Like-probabilities in input order; rows are length-sorted so batches carry little padding."""
    scorer.to(device).eval()
    order = np.argsort([len(row) for row in data.ids], kind="stable")
    probs = np.empty(len(data), dtype=np.float64)
    for idx in _batches(order, batch_size):
        input_ids, mask = _batch([data.ids[i] for i in idx], pad_id, device)
        with _autocast(device):
            logits = scorer(input_ids, mask)
        probs[idx] = torch.sigmoid(logits.float()).cpu().numpy()
    scorer.train()
    return probs


def evaluate(
    scorer: Scorer,
    splits: dict[str, EncodedSplit],
    ranking: tuple[EncodedSplit, int] | None,
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    """``{split}.auc / .logloss / .n ...`` for every split, plus ``test.hr@10 / test.ndcg@10``."""
    out: dict[str, float] = {}
    for name, data in splits.items():
        if len(data) == 0:
            continue
        probs = predict(scorer, data, batch_size, pad_id, device)
        for key, value in classification_metrics(data.labels, probs).items():
            out[f"{name}.{key}"] = float(value)
    if ranking is not None and len(ranking[0]) > 0:
        data, width = ranking
        scores = predict(scorer, data, batch_size, pad_id, device).reshape(-1, width)  # (U, 1+N)
        for key, value in ranking_metrics(scores[:, 0], scores[:, 1:]).items():
            out[f"test.{key}"] = float(value)
        out["test.rank-users"] = float(scores.shape[0])
    return out
