"""Evaluation metrics: pure numpy, one small function each, formula in the docstring."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence

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


COUNT_KEYS = ("n", "rank-users")  # per split: its examples, its ranked users (summed, never averaged)
RANKING_METRICS = ("hr@10", "ndcg@10")


def weight_key(metric: str) -> str:
    """The count a metric's federation mean is weighted by: ranked users for ranking metrics, else examples."""
    return "rank-users" if metric in RANKING_METRICS else "n"


def mean_metrics(per_platform: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The federation's mean of platform metrics (``<split>.<metric>`` keys): example-weighted, split
    metrics by that split's n, ranking metrics (HR/NDCG@10) by its ranked users; the counts
    (``.n``, ``.rank-users``) are summed. The one rule: :mod:`common.metric_sums` encodes it for a
    secure sum, which decodes to the same means."""
    keys = sorted({k for m in per_platform.values() for k in m})
    out: dict[str, float] = {}
    for key in keys:
        split, _, metric = key.partition(".")
        if metric in COUNT_KEYS:
            out[key] = float(sum(m.get(key, 0.0) for m in per_platform.values()))
            continue
        values = {p: {key: m[key]} for p, m in per_platform.items() if key in m}
        weights = {p: per_platform[p].get(f"{split}.{weight_key(metric)}", 0.0) for p in values}
        out.update(weighted_mean(values, weights))
    return out


_EXTRA_TEST = re.compile(r"^test-(k\d+)\.(.+)$")  # test-k1.auc: new users' test with 1 interaction of history


def strip_test_prefix(metrics: Mapping[str, float]) -> dict[str, float]:
    """A platform's test metrics without the split prefix: ``test.X`` -> ``X``, and the extra test splits
    of a cold-start run (``test-kN.X``: new users with N interactions of history) -> ``kN.X``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith("test."):
            out[key.removeprefix("test.")] = float(value)
        elif match := _EXTRA_TEST.match(key):
            out[f"{match[1]}.{match[2]}"] = float(value)
    return out


def add_test_prefix(metrics: Mapping[str, float]) -> dict[str, float]:
    """The inverse of :func:`strip_test_prefix` (``kN.X`` -> ``test-kN.X``), so :func:`mean_metrics` weights
    each extra test split by its own examples."""
    return {(f"test-{k}" if re.fullmatch(r"k\d+\..+", k) else f"test.{k}"): v for k, v in metrics.items()}


# --- paired bootstrap -----------------------------------------------------------------------
# Two arms scored on the SAME test examples are compared on the same resamples, so the
# example-to-example noise they share cancels and the interval measures only their difference.

Metric = Callable[[np.ndarray, np.ndarray], float]
_CHUNK_CELLS = 2_000_000  # replicates x examples per vectorised block: bounds memory to ~16 MB a matrix


def bootstrap_indices(n: int, n_boot: int, seed: int | Sequence[int]) -> np.ndarray:
    """(n_boot, n) example indices drawn with replacement; the same ``seed`` gives the same draws."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def weighted_auc(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC of each resample given as multiplicities ``counts`` (R, n) of the n examples -> (R,).

    The Mann-Whitney statistic of :func:`auc` with example i repeated counts[r, i] times:
    sum over distinct scores g of pos_g * (negatives below g + neg_g / 2) / (P * N), ties
    counting 1/2 exactly like mean ranks. One sort of the scores serves every resample, so
    R resamples cost O(R n) instead of R sorts. NaN where a resample has one class only.
    """
    y, s = _binary(labels, scores)
    order = np.argsort(s, kind="stable")
    _, starts = np.unique(s[order], return_index=True)  # first sorted position of each distinct score
    w = np.asarray(counts, dtype=np.float64)[:, order]
    pos_w = w * y[order]
    pos = np.add.reduceat(pos_w, starts, axis=1)  # (R, groups)
    neg = np.add.reduceat(w - pos_w, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + neg / 2.0)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def bootstrap_metric(
    labels: np.ndarray,
    score_sets: Sequence[np.ndarray],
    metric: Metric = auc,
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """``metric`` of every score set on the same ``n_boot`` resamples -> (len(score_sets), n_boot).

    All score sets share one draw of indices (that is what makes a later difference paired).
    :func:`auc` takes the vectorised path (:func:`weighted_auc`); any other metric is called
    once per resample.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    sets = [np.asarray(s, dtype=np.float64).ravel() for s in score_sets]
    idx = bootstrap_indices(y.size, n_boot, seed)
    out = np.empty((len(sets), n_boot))
    step = max(1, _CHUNK_CELLS // max(1, y.size))
    for lo in range(0, n_boot, step):
        block = idx[lo : lo + step]
        if metric is auc:
            rows = np.repeat(np.arange(block.shape[0]), y.size)
            counts = np.bincount(rows * y.size + block.ravel(), minlength=block.size).reshape(block.shape)
            for k, s in enumerate(sets):
                out[k, lo : lo + step] = weighted_auc(y, s, counts)
        else:
            for k, s in enumerate(sets):
                out[k, lo : lo + step] = [metric(y[i], s[i]) for i in block]
    return out


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` percentile interval of the finite replicates (NaN, NaN if none)."""
    finite = np.asarray(replicates, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_diff_replicates(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: Metric = auc,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """(point, replicates) of metric(arm) - metric(ref), averaged over the seeds in ``pairs``.

    Seed k resamples with its own generator ``(seed, k)``; arm and ref share those indices.
    Building block of :func:`paired_bootstrap_diff`, and for combining platforms (their
    replicates can be averaged with weights before taking percentiles).
    """
    if not pairs:
        raise ValueError("paired bootstrap needs at least one (labels, scores_arm, scores_ref) triple")
    points, reps = [], []
    for k, (labels, arm, ref) in enumerate(pairs):
        if np.shape(arm) != np.shape(ref) or np.shape(arm) != np.shape(labels):
            raise ValueError(f"pair {k}: labels, arm and ref scores must cover the same examples")
        points.append(metric(labels, arm) - metric(labels, ref))
        both = bootstrap_metric(labels, [arm, ref], metric, n_boot, (seed, k))
        reps.append(both[0] - both[1])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate with one class in every seed stays NaN
        return float(np.nanmean(points)), np.nanmean(np.stack(reps), axis=0)


def paired_bootstrap_diff(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: Metric = auc,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Paired bootstrap of metric(arm) - metric(ref) over seeds: {diff, low, high, n_boot, n}.

    ``pairs``: one (labels, scores_arm, scores_ref) per seed over the same test examples.
    Each replicate resamples the examples (independently per seed, the same indices for arm
    and ref), takes the difference per seed and averages over seeds; ``low``/``high`` are the
    central ``level`` percentiles of those replicates, ``diff`` the mean over seeds of the
    full-sample difference, ``n`` the test examples per seed (the fewest, if seeds differ).
    """
    point, reps = paired_diff_replicates(pairs, metric, n_boot, seed)
    low, high = percentile_interval(reps, level)
    return {"diff": point, "low": low, "high": high, "n_boot": n_boot, "n": min(len(p[0]) for p in pairs)}
