"""No-training baselines, scored with the very protocol of the trained arms.

Every trained arm must beat these to claim anything:

- ``liked-share``: score = share of liked items in the history the model sees
  (``data.history-len`` most recent liked + disliked), 0.5 when the history is empty.
  It is a user-only score, so within one user's ranking list every candidate ties and,
  with pessimistic ties, HR@10/NDCG@10 are 0 by construction.
- ``popularity``: the item's number of train interactions on this platform (likes and
  dislikes alike; implicit data: positives only), mapped to a probability by a 1-D
  logistic fit on ``log1p(count)`` over the train split (monotone, so AUC/HR/NDCG are
  those of the raw count).
- ``like-rate``: the item's smoothed like-rate on the train split,
  ``(likes + a * p) / (n + a)`` with ``p`` the platform's train like-rate and ``a`` the prior strength.
- ``content``: the like-rate of the candidate's nearest KNOWN item (one with train interactions on
  this platform; a known candidate is its own nearest) by cosine similarity of frozen base-model text
  vectors: what a text model gives on new items before any training, so what LoRA training adds.
- ``mf``: biased matrix factorisation (:mod:`simulations.compare.mf`) fitted per platform on its
  train split, tuned on its valid split: the collaborative baseline. It trains, but in seconds.
- ``mf-central``: one MF on every platform's train split with user ids linked across
  platforms: an upper bound a privacy law forbids (raw data and user ids pooled).

A scorer sees the query (an :class:`~common.splits.Example` or
:class:`~common.splits.RankingCase`: user id and history) and the candidate item id, so a
history rule, an item statistic and a per-user model share one protocol.

The untrained-model baseline (frozen base + untrained head) needs the model and lives in
the comparison harness.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.item_stats import smoothed_rate
from common.metrics import classification_metrics, ranking_metrics
from common.splits import Example, PlatformSplits, RankingCase
from simulations.compare.mf import MFModel, central_item_id, fit_central_mf, fit_mf

BASELINES = ("liked-share", "popularity", "like-rate", "content", "mf", "mf-central")


class Query(Protocol):
    """What a scorer may use about the user: an ``Example`` or a ``RankingCase`` (its own candidate ignored)."""

    @property
    def user_id(self) -> str: ...
    @property
    def liked(self) -> tuple[str, ...]: ...
    @property
    def disliked(self) -> tuple[str, ...]: ...


Scorer = Callable[[Query, str], float]  # (query, candidate item id) -> probability of a like
# platform -> (item ids, (I, H) frozen text vectors, a row per id): the content baseline's similarity,
# computed by the caller (it needs the model; this module does not import torch)
ItemVectors = Callable[[str], tuple[Sequence[str], np.ndarray]]


def liked_share(liked: Sequence[str], disliked: Sequence[str]) -> float:
    """|liked| / (|liked| + |disliked|); 0.5 for an empty history."""
    total = len(liked) + len(disliked)
    return len(liked) / total if total else 0.5


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 50, ridge: float = 1e-6) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a x + b) by Newton's method on the mean log-loss (a tiny ridge keeps it defined)."""
    design = np.stack([np.asarray(x, np.float64), np.ones(len(x))], axis=1)  # (N, 2)
    y = np.asarray(y, np.float64)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        grad = design.T @ (p - y) / len(y) + ridge * w
        hess = (design * (p * (1 - p))[:, None]).T @ design / len(y) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


@dataclass(frozen=True)
class ItemCounts:
    """One platform's train split, item by item: what the item baselines are fitted on."""

    interactions: Counter[str]  # train interactions (implicit: positives only; sampled negatives are none)
    likes: Counter[str]
    rows: Counter[str]  # train rows, sampled negatives included: the like-rate's denominator
    prior: float  # the platform's train like-rate

    @classmethod
    def from_train(cls, train: Sequence[Example], implicit: bool = False) -> ItemCounts:
        if not train:
            raise ValueError("no train examples to fit the item baselines on")
        interactions: Counter[str] = Counter()
        likes: Counter[str] = Counter()
        for ex in train:
            if ex.label or not implicit:
                interactions[ex.item_id] += 1
            likes[ex.item_id] += ex.label
        prior = sum(ex.label for ex in train) / len(train)
        return cls(interactions, likes, Counter(ex.item_id for ex in train), prior)

    def like_rate(self, item: str) -> float:
        """The smoothed train like-rate; the prior for an item never in train."""
        return float(smoothed_rate(self.likes[item], self.rows[item], self.prior))


def item_scorers(train: Sequence[Example], implicit: bool = False) -> dict[str, Scorer]:
    """``popularity`` and ``like-rate`` fitted on one platform's train split."""
    stats = ItemCounts.from_train(train, implicit)
    counts, prior = stats.interactions, stats.prior
    x = np.log1p([counts[ex.item_id] for ex in train])
    y = np.array([ex.label for ex in train], np.float64)
    a, b = fit_logistic(x, y) if 0 < y.sum() < len(y) else (0.0, math.log(max(prior, 1e-6) / max(1 - prior, 1e-6)))

    def popularity(query: Query, item: str) -> float:
        return 1.0 / (1.0 + math.exp(-(a * math.log1p(counts[item]) + b)))

    def like_rate(query: Query, item: str) -> float:
        return stats.like_rate(item)

    return {"popularity": popularity, "like-rate": like_rate}


def nearest_known(vectors: np.ndarray, known: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Row i -> the row of the known item whose vector is most cosine-similar to row i's; -1 if none is known.

    A known item is its own nearest (it has its own statistics: no neighbour is needed), so only
    unknown rows are searched, among the known ones (never themselves). Ties go to the lowest row,
    so the answer depends on the vectors only. ``chunk`` rows at a time bound the similarity matrix.
    """
    known = np.asarray(known, dtype=bool)
    out = np.where(known, np.arange(len(known)), -1)
    targets = np.flatnonzero(known)
    if not targets.size:
        return out
    x = np.asarray(vectors, dtype=np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # a zero vector: ties everywhere
    cold = np.flatnonzero(~known)
    for start in range(0, cold.size, chunk):
        rows = cold[start : start + chunk]
        out[rows] = targets[np.argmax(unit[rows] @ unit[targets].T, axis=1)]  # argmax: the first of equals
    return out


def content_scorer(train: Sequence[Example], ids: Sequence[str], vectors: np.ndarray, implicit: bool = False) -> Scorer:
    """``content``: the like-rate of the candidate's nearest known item (:func:`nearest_known`) by text
    vectors ``vectors`` (a row per id of ``ids``); known = with a train interaction on this platform."""
    stats = ItemCounts.from_train(train, implicit)
    nearest = nearest_known(vectors, np.array([stats.interactions[i] > 0 for i in ids], dtype=bool))
    proxy = {item: ids[j] for item, j in zip(ids, nearest, strict=True) if j >= 0}

    def content(query: Query, item: str) -> float:
        return stats.like_rate(proxy.get(item, item))  # no known item at all: the prior

    return content


def baseline_scorers(splits: PlatformSplits, implicit: bool = False) -> dict[str, Scorer]:
    """All no-training baselines of one platform, fitted on its train split only."""

    def share(query: Query, item: str) -> float:
        return liked_share(query.liked, query.disliked)

    return {"liked-share": share, **item_scorers(splits.train, implicit)}


def mf_scorer(model: MFModel, platform: str | None = None) -> Scorer:
    """``model.prob(user, item)``; ``platform`` set: a central model, whose item ids are namespaced."""

    def score(query: Query, item: str) -> float:
        return model.prob(query.user_id, item if platform is None else central_item_id(platform, item))

    return score


def platform_scorers(
    name: str, platforms: Mapping[str, PlatformSplits], implicit: set[str], seed: int,
    item_vectors: ItemVectors | None = None,
) -> dict[str, Scorer]:  # fmt: skip
    """Baseline ``name`` for every platform, each fitted on train (and, for MF, tuned on valid) only.

    ``mf-central`` is fitted once on all platforms together; the others platform by platform,
    and only the named one (MF trains, the item statistics do not). ``content`` needs
    ``item_vectors`` (asked only for it: the vectors take a forward pass over every catalogue).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}, expected one of {', '.join(BASELINES)}")
    if name == "content":
        if item_vectors is None:
            raise ValueError("the content baseline needs item vectors")
        return {p: content_scorer(s.train, *item_vectors(p), p in implicit) for p, s in platforms.items()}
    if name == "mf-central":
        model = fit_central_mf(platforms, seed)
        return {p: mf_scorer(model, p) for p in platforms}
    if name == "mf":
        return {p: mf_scorer(fit_mf(s.train, s.valid, seed)) for p, s in platforms.items()}
    return {p: baseline_scorers(s, p in implicit)[name] for p, s in platforms.items()}


def evaluate_baseline(
    scorer: Scorer, splits: PlatformSplits, cases: Sequence[RankingCase], k: int = 10
) -> dict[str, float]:
    """The same keys as :func:`clients.trainer.evaluate`: ``{valid,test}.{auc,logloss,n,...}``, ``test.hr@10``...,
    and the extra test splits of a cold-start run (``test-k1.auc``... new users with k interactions of history)."""
    out: dict[str, float] = {}
    extra = getattr(splits, "extra_tests", {})  # absent before cold-start splits
    for name, examples in (("valid", splits.valid), ("test", splits.test), *extra.items()):
        if not examples:
            continue
        probs = [scorer(ex, ex.item_id) for ex in examples]
        for key, value in classification_metrics([ex.label for ex in examples], probs).items():
            out[f"{name}.{key}"] = float(value)
    if cases:
        scores = np.array(
            [[scorer(c, item) for item in (c.positive, *c.negatives)] for c in cases]
        )  # (U, 1+N), positive first
        for key, value in ranking_metrics(scores[:, 0], scores[:, 1:], k).items():
            out[f"test.{key}"] = float(value)
        out["test.rank-users"] = float(len(cases))
    return out
