"""Metrics as a secure sum: the decoded cohort mean equals the plain example-weighted mean."""

import math

import numpy as np
import pytest

from common.metric_sums import METRIC_VECTOR, decode_metric_sum, encode_metrics, vector_length
from common.metrics import mean_metrics
from common.secagg import Manifest, SecAggConfig
from common.secagg.messages import STAGES
from common.secagg.runner import run_round
from server.federation import AGGREGATE, Best, split_mean

PLATFORMS = {
    "app": {"valid.auc": 0.71, "valid.logloss": 0.62, "valid.positive_rate": 0.5, "valid.n": 40.0,
            "valid.hr@10": 0.3, "valid.ndcg@10": 0.21, "valid.rank-users": 10.0},
    "web": {"valid.auc": math.nan, "valid.logloss": 1.9, "valid.positive_rate": 1.0, "valid.n": 7.0,
            "valid.hr@10": 0.0, "valid.ndcg@10": 0.0, "valid.rank-users": 3.0},
    "social": {"valid.auc": 0.55, "valid.logloss": 0.69, "valid.positive_rate": 0.4, "valid.n": 120.0,
               "valid.hr@10": 0.5, "valid.ndcg@10": 0.33, "valid.rank-users": 20.0},
}  # fmt: skip


def _plain_sum(clip: float) -> tuple[np.ndarray, int]:
    encoded = [encode_metrics(m, ("valid",), clip) for m in PLATFORMS.values()]
    total = sum(w for _, w in encoded)
    return sum(w * v.astype(np.float64) for v, w in encoded) / total, total


@pytest.mark.parametrize("clip", [1.0, 0.05])
def test_decoded_sum_equals_weighted_mean(clip: float) -> None:
    # Prepare
    mean, total = _plain_sum(clip)
    # Execute
    decoded = decode_metric_sum(mean, total, ("valid",), clip)
    # Assert: NaN AUC of `web` drops out of the AUC mean only, as in mean_metrics
    expected = mean_metrics(PLATFORMS)
    assert decoded.keys() == expected.keys()
    for key, value in expected.items():
        assert decoded[key] == pytest.approx(value, abs=1e-6), key
    assert decoded["valid.auc"] == pytest.approx((0.71 * 40 + 0.55 * 120) / 160)


def test_encoded_vector_stays_inside_clip_range() -> None:
    vec, weight = encode_metrics(PLATFORMS["social"], ("valid",), 0.5)
    assert weight == 120 and vec.shape == (vector_length(("valid",)),)
    assert vec.min() >= 0 and vec.max() <= 0.5


def test_bad_count_is_refused() -> None:
    with pytest.raises(ValueError, match="`valid.n`"):
        encode_metrics({"valid.n": 2.5, "valid.auc": 0.5}, ("valid",), 1.0)


def test_secure_sum_of_metrics_equals_plain_mean() -> None:
    # Prepare: three platforms' metric vectors, summed by the real protocol
    config = SecAggConfig(min_cohort=2)
    encoded = {i + 1: encode_metrics(m, ("valid",), config.clip_range) for i, m in enumerate(PLATFORMS.values())}
    inputs = {n: ({METRIC_VECTOR: v}, w) for n, (v, w) in encoded.items()}
    manifest = Manifest.from_arrays({METRIC_VECTOR: np.zeros(vector_length(("valid",)), np.float32)})
    # Execute
    run = run_round(config, manifest, list(inputs), inputs)
    mean, _ = run.result.weighted_mean()
    decoded = decode_metric_sum(mean, run.result.total_weight, ("valid",), config.clip_range)
    # Assert
    for key, value in mean_metrics(PLATFORMS).items():
        assert decoded[key] == pytest.approx(value, abs=1e-5), key


def test_split_mean_prefers_the_secure_aggregate() -> None:
    per_platform, mean = split_mean({"app": {}, "web": {}, AGGREGATE: {"valid.auc": 0.6}})
    assert per_platform == {"app": {}, "web": {}} and mean == {"valid.auc": 0.6}
    per_platform, mean = split_mean(PLATFORMS)
    assert mean == mean_metrics(PLATFORMS)


ALL = {"app", "web", "social"}


@pytest.mark.parametrize(
    ("best", "score", "cohort", "platforms", "improved"),
    [
        (Best(), 0.5, ["app", "social", "web"], ALL, True),  # first full round
        (Best(1, 0.6, {}, cohort=sorted(ALL)), 0.5, sorted(ALL), ALL, False),  # worse full round
        (Best(1, 0.6, {}, cohort=sorted(ALL)), 0.7, sorted(ALL), ALL, True),  # better full round
        (Best(1, 0.6, {}, cohort=sorted(ALL)), 0.9, ["app", "social"], ALL, False),  # a dropout never wins
        (Best(), 0.9, ["app", "social"], ALL, True),  # ...unless nothing is kept yet (provisional)
        (Best(1, 0.9, {}, cohort=["app", "social"]), 0.1, sorted(ALL), ALL, True),  # the cohort grew
        (Best(1, 0.6, {}, cohort=sorted(ALL)), math.nan, sorted(ALL), ALL, False),  # no metric
    ],
)
def test_best_round_only_among_comparable_cohorts(best, score, cohort, platforms, improved) -> None:
    assert best.improved_by(score, cohort, platforms) is improved


@pytest.mark.parametrize("stage", STAGES)
def test_a_platform_lost_at_any_stage_leaves_the_mean_of_the_survivors(stage: str) -> None:
    # Prepare: 4 platforms (t = 3 > 2n/3: one dropout is recovered), `web` (node 2) stops answering at `stage`
    config = SecAggConfig(min_cohort=2)
    platforms = {**PLATFORMS, "shop": {**PLATFORMS["app"], "valid.auc": 0.6, "valid.n": 15.0}}
    names = dict(enumerate(platforms, start=1))
    inputs = {n: ({METRIC_VECTOR: v}, w) for n, (v, w) in
              ((n, encode_metrics(platforms[p], ("valid",), 1.0)) for n, p in names.items())}  # fmt: skip
    manifest = Manifest.from_arrays({METRIC_VECTOR: np.zeros(vector_length(("valid",)), np.float32)})
    # Execute
    run = run_round(config, manifest, list(inputs), inputs, drops={stage: [2]})
    # Assert: the mean is exactly that of the platforms whose inputs are in the sum
    assert run.result is not None, run.abort_reason
    survivors = {names[n]: platforms[names[n]] for n in run.result.survivors}
    mean, _ = run.result.weighted_mean()
    decoded = decode_metric_sum(mean, run.result.total_weight, ("valid",), 1.0)
    for key, value in mean_metrics(survivors).items():
        assert decoded[key] == pytest.approx(value, abs=1e-5), (stage, key)
