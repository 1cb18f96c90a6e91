"""Evaluation metrics as one vector whose cohort sum gives their example-weighted means.

Why: a deployed platform does not reveal its own validation metrics by default, yet early
stopping and best-round selection need the federation's mean. Each platform encodes its
metrics as a vector ``v_i`` with weight ``N_i`` (its evaluated examples over all splits);
secure aggregation then reveals only ``sum_i N_i v_i / sum_i N_i`` and ``sum_i N_i``, from
which :func:`decode_metric_sum` recovers exactly what :func:`common.metrics.mean_metrics`
computes from per-platform metrics (up to quantisation).

Layout per split ``s`` (``n`` its examples, ``r`` its ranked users), every entry divided by
``N`` so it lies in [0, 1] and then scaled into the secure-aggregation clip range ``c``::

    [n, r, w_auc, w_auc*auc, w_ll, w_ll*logloss/LOGLOSS_SCALE, w_pr, w_pr*positive_rate,
     w_hr, w_hr*hr@10, w_nd, w_nd*ndcg@10]

where ``w_m`` is ``n`` (``r`` for the ranking metrics) when the metric is finite on this
platform, else 0: a NaN metric (one class in a split) drops out of that metric's mean, as
in :func:`common.metrics.weighted_mean`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from common.metrics import COUNT_KEYS, weight_key

METRIC_VECTOR = "metric-sums"  # the one tensor name in the secure sum's manifest
LOGLOSS_SCALE = 64.0  # log-loss is unbounded; clipped predictions keep it far below this
# (metric, weight key, scale): the order of the pairs in the vector; weights as mean_metrics weighs
MEANS: tuple[tuple[str, str, float], ...] = tuple(
    (name, weight_key(name), scale)
    for name, scale in (("auc", 1.0), ("logloss", LOGLOSS_SCALE), ("positive_rate", 1.0), ("hr@10", 1.0),
                        ("ndcg@10", 1.0))
)  # fmt: skip
COUNTS = COUNT_KEYS
PER_SPLIT = len(COUNTS) + 2 * len(MEANS)


def vector_length(splits: Sequence[str]) -> int:
    return PER_SPLIT * len(splits)


def encode_metrics(metrics: Mapping[str, float], splits: Sequence[str], clip_range: float) -> tuple[np.ndarray, int]:
    """(vector in [0, clip_range], weight N) for one platform's ``<split>.<metric>`` values."""
    total = sum(_count(metrics, f"{s}.n") for s in splits)
    vec = np.zeros(vector_length(splits), dtype=np.float64)
    if total == 0:  # nothing evaluated: weight 0 adds nothing to any mean
        return vec.astype(np.float32), 0
    i = 0
    for split in splits:
        counts = {key: _count(metrics, f"{split}.{key}") for key in COUNTS}
        vec[i : i + 2] = [counts["n"] / total, counts["rank-users"] / total]
        i += 2
        for name, counted_by, scale in MEANS:
            value = metrics.get(f"{split}.{name}", math.nan)
            weight = counts[counted_by] / total if math.isfinite(value) else 0.0
            vec[i : i + 2] = [weight, weight * value / scale if weight else 0.0]
            i += 2
    if not np.all((vec >= 0) & (vec <= 1 + 1e-9)):
        raise ValueError(f"metrics out of range for a secure sum: {dict(metrics)}")
    return (np.clip(vec, 0.0, 1.0) * clip_range).astype(np.float32), int(total)


def decode_metric_sum(
    mean: np.ndarray, total_weight: float, splits: Sequence[str], clip_range: float
) -> dict[str, float]:
    """The cohort's ``<split>.<metric>`` means (and summed counts) from the secure weighted mean."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1) / clip_range
    if mean.size != vector_length(splits):
        raise ValueError(f"metric sum has {mean.size} values, expected {vector_length(splits)} for {list(splits)}")
    out: dict[str, float] = {}
    i = 0
    for split in splits:
        for key, share in zip(COUNTS, mean[i : i + 2], strict=True):
            out[f"{split}.{key}"] = float(round(share * total_weight))
        i += 2
        for name, _, scale in MEANS:
            weight, weighted = mean[i : i + 2]
            if weight * total_weight >= 0.5:  # at least one platform had this metric
                out[f"{split}.{name}"] = float(weighted / weight * scale)
            i += 2
        for key in COUNTS:  # as in per-platform metrics: no key for a split nobody evaluated
            if out[f"{split}.{key}"] == 0:
                del out[f"{split}.{key}"]
    return out


def _count(metrics: Mapping[str, float], key: str) -> int:
    value = metrics.get(key, 0.0)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ValueError(f"`{key}` must be a non-negative whole count, got {value}")
    return int(value)
