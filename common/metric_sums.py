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

Every honest vector obeys linear rules that survive summation: its splits' ``n`` add up to its
weight ``N``, each ``w_m`` is at most its count, each weighted metric at most its ``w_m`` (every
metric, log-loss over ``LOGLOSS_SCALE``, lies in [0, 1]). :func:`decode_metric_sum` refuses a sum
that breaks one (:class:`MetricSumError`, naming the check): a platform that sends weight 0 with
a body cannot add examples to the reported counts or push a mean out of its metric's range.
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


class MetricSumError(ValueError):
    """A decoded metric sum that no cohort of honest platforms could have sent."""


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
    mean: np.ndarray, total_weight: float, splits: Sequence[str], clip_range: float, error_bound: float = 0.0
) -> dict[str, float]:
    """The cohort's ``<split>.<metric>`` means (and summed counts) from the secure weighted mean.

    ``error_bound`` is the secure sum's per-value error bound (``SecAggResult.weighted_mean``);
    MetricSumError when the mean breaks a rule every honest vector obeys (module docstring).
    """
    mean = np.asarray(mean, dtype=np.float64).reshape(-1) / clip_range
    if mean.size != vector_length(splits):
        raise ValueError(f"metric sum has {mean.size} values, expected {vector_length(splits)} for {list(splits)}")
    check_metric_sum(mean, splits, error_bound / clip_range)
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


def check_metric_sum(share: np.ndarray, splits: Sequence[str], error_bound: float = 0.0) -> None:
    """MetricSumError unless the weighted mean ``share`` (in [0, 1] units) is one an honest cohort sends.

    Each value may be off by ``error_bound`` (quantisation) plus 2^-23 (the float32 vector).
    """
    tol = error_bound + 2.0**-23
    counts = 0.0
    for s, split in enumerate(splits):
        block = share[s * PER_SPLIT : (s + 1) * PER_SPLIT]
        count = dict(zip(COUNTS, block[: len(COUNTS)], strict=True))
        if min(count.values()) < -tol:
            raise MetricSumError(f"check `metric-counts`: `{split}` has a negative count share {min(count.values())}")
        counts += count["n"]
        for m, (name, counted_by, _) in enumerate(MEANS):
            weight, weighted = block[len(COUNTS) + 2 * m : len(COUNTS) + 2 * m + 2]
            if not -tol <= weight <= count[counted_by] + 2 * tol:
                raise MetricSumError(
                    f"check `metric-weights`: `{split}.{name}` is weighted by {weight:.9g} of the total weight, "
                    f"outside [0, its `{counted_by}` share {count[counted_by]:.9g}]"
                )
            if not -tol <= weighted <= weight + 2 * tol:
                raise MetricSumError(
                    f"check `metric-range`: `{split}.{name}` sums to {weighted:.9g} for weight {weight:.9g}: "
                    "its mean leaves the metric's range"
                )
    if abs(counts - 1.0) > len(splits) * tol:
        raise MetricSumError(
            f"check `metric-counts`: the splits' example counts add up to {counts:.9g} of the total weight, not 1 "
            "(a platform's weight and examples disagree)"
        )


def _count(metrics: Mapping[str, float], key: str) -> int:
    value = metrics.get(key, 0.0)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ValueError(f"`{key}` must be a non-negative whole count, got {value}")
    return int(value)
