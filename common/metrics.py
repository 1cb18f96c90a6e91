"""Evaluation metrics: pure numpy, one small function each, formula in the docstring."""

from __future__ import annotations

import math

import numpy as np


def _binary(labels: np.ndarray | list[int], values: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    if y.shape != v.shape:
        raise ValueError(f"labels and scores must have the same length, got {y.size} and {v.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:5].tolist()}")
    return y, v


def auc(labels: np.ndarray | list[int], scores: np.ndarray | list[float]) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score_pos > score_neg) + 1/2 P(score_pos == score_neg).

    AUC = (sum of positives' average ranks - P(P+1)/2) / (P * N), ranks 1-based over all
    scores with ties sharing their mean rank. NaN when only one class is present.
    """
    y, s = _binary(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # 0-based rank of each distinct score's first row
    mean_rank = starts + (counts + 1) / 2.0  # 1-based mean rank of each tie group
    rank_sum = mean_rank[inverse][y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray | list[int], probs: np.ndarray | list[float], eps: float = 1e-7) -> float:
    """Mean binary cross-entropy -[y log p + (1-y) log(1-p)], p clipped to [eps, 1-eps] so a
    confident miss costs -log(eps) instead of infinity. NaN for no rows."""
    y, p = _binary(labels, probs)
    if y.size == 0:
        return math.nan
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def rank_of_positive(pos_score: float, neg_scores: np.ndarray) -> int:
    """0-based rank of the positive among its negatives: #{neg >= pos}.

    Ties count against the positive (pessimistic), so a model that scores everything the
    same gets rank N, not 0.
    """
    return int(np.sum(np.asarray(neg_scores, dtype=np.float64) >= pos_score))


def hit_at_k(rank: int, k: int) -> float:
    """HR@k for one relevant item: 1 if rank < k else 0 (rank 0-based)."""
    return float(rank < k)


def ndcg_at_k(rank: int, k: int) -> float:
    """NDCG@k for one relevant item: 1 / log2(rank + 2) if rank < k else 0 (ideal DCG is 1)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


def ranking_metrics(pos_scores: np.ndarray, neg_scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean ``hr@k`` and ``ndcg@k`` over users; pos_scores (U,), neg_scores (U, N); NaN for U = 0."""
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    if neg.ndim != 2 or pos.shape != (neg.shape[0],):
        raise ValueError(f"expected pos_scores (U,) and neg_scores (U, N), got {pos.shape} and {neg.shape}")
    if pos.size == 0:
        return {f"hr@{k}": math.nan, f"ndcg@{k}": math.nan}
    ranks = (neg >= pos[:, None]).sum(axis=1)  # (U,) pessimistic ties, as rank_of_positive
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return {f"hr@{k}": float(np.mean(ranks < k)), f"ndcg@{k}": float(np.mean(gains))}


def classification_metrics(labels: np.ndarray | list[int], probs: np.ndarray | list[float]) -> dict[str, float]:
    """``auc``, ``logloss``, ``positive_rate`` (share of label 1) and ``n`` (rows)."""
    y, p = _binary(labels, probs)
    return {
        "auc": auc(y, p),
        "logloss": log_loss(y, p),
        "positive_rate": float(y.mean()) if y.size else math.nan,
        "n": float(y.size),
    }


def weighted_mean(per_platform: dict[str, dict[str, float]], weights: dict[str, float]) -> dict[str, float]:
    """Per metric, sum_p w_p m_p / sum_p w_p over the platforms where that metric is not NaN.

    NaN entries (e.g. AUC on a platform whose test split has one class) are skipped and the
    remaining weights renormalised, so one degenerate platform does not poison the mean; a
    metric with no finite entry (or zero total weight) stays NaN.
    """
    missing = sorted(set(per_platform) - set(weights))
    if missing:
        raise ValueError(f"no weight for platforms {missing}")
    keys = sorted({key for metrics in per_platform.values() for key in metrics})
    out: dict[str, float] = {}
    for key in keys:
        pairs = [
            (weights[name], metrics[key])
            for name, metrics in per_platform.items()
            if key in metrics and not math.isnan(metrics[key])
        ]
        total = sum(w for w, _ in pairs)
        out[key] = sum(w * v for w, v in pairs) / total if total > 0 else math.nan
    return out
