"""Issue 22: what one malicious platform can do to a secure sum, through the real protocol.

A lying platform runs the honest client code and then rewrites its masked vector on the way up
(``run_round``'s intercept): masks cancel in the sum, so adding ``delta`` to its masked words adds
``delta`` to the unmasked sum, exactly as a platform running its own code would. Each test's
docstring says what happened on main 7f2a677.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import common.secagg.quantize as quantize
from common.metric_sums import METRIC_VECTOR, decode_metric_sum, encode_metrics, vector_length
from common.secagg import HEADER_WORDS, Manifest, SecAggConfig, run_round
from common.secagg.messages import STAGE_MASKED_INPUT
from common.secagg.quantize import decode_sum, encode_input
from tests.secagg.helpers import flat, make_inputs, tiny_manifest

LIAR = 4  # nodes 1..3 are honest


def _lie(delta: np.ndarray) -> Any:
    """An intercept: the LIAR adds ``delta`` (signed words) to its masked vector."""

    def intercept(direction: str, stage: str, node: int, msg: dict[str, Any]) -> dict[str, Any]:
        if direction == "up" and stage == STAGE_MASKED_INPUT and node == LIAR:
            return {**msg, "masked": msg["masked"] + delta.view(msg["masked"].dtype)}
        return msg

    return intercept


def _weightless(body: np.ndarray) -> np.ndarray:
    """Words that turn the liar's honest weight-1, zero-body input into weight 0 with ``body``."""
    delta = np.zeros(HEADER_WORDS + body.size, dtype=np.int64)
    delta[0] = -1
    delta[HEADER_WORDS:] = body
    return delta


# -- hole 3: weight zero, body kept -----------------------------------------------------
def test_a_weightless_body_outside_the_honest_l2_ball_is_refused() -> None:
    """With `secure.l2-clip`, the liar sends weight 0 and a body that moves the fused update by
    half the clip range on every value (inside the clip box, far outside the L2 ball).

    On main only the clip box was checked: the round fused it, and the liar moved everyone's
    update without counting in the weight. Now the unmasked sum must lie in total weight x the
    honest L2 ball (check `l2-norm`), as every honest cohort's does.
    """
    cfg = SecAggConfig(clip_range=1.0, l2_clip=1.0, min_cohort=3)
    manifest = tiny_manifest()
    inputs = make_inputs([1, 2, 3], seed=5, scale=0.05)
    inputs[LIAR] = ({s.name: np.zeros(s.shape, s.dtype) for s in manifest.specs}, 1)
    honest_weight = sum(inputs[n][1] for n in (1, 2, 3))
    body = np.full(manifest.size, honest_weight * cfg.q_max // 2, dtype=np.int64)

    run = run_round(cfg, manifest, [1, 2, 3, LIAR], inputs, intercept=_lie(_weightless(body)))

    assert run.result is None and "check `l2-norm`" in run.abort_reason, run.abort_reason


def test_what_a_weightless_liar_can_still_do_is_bounded() -> None:
    """The remaining bound (README, threat model): whatever a platform sends, an accepted sum's
    fused mean lies in the clip box and, with `secure.l2-clip`, in the L2 ball of radius l2-clip
    (plus half a grid step per value); one quantum further is refused.
    """
    cfg = SecAggConfig(clip_range=1.0, l2_clip=1.0, min_cohort=3)
    manifest = tiny_manifest()
    inputs = make_inputs([1, 2, 3], seed=6, scale=0.05)
    inputs[LIAR] = ({s.name: np.zeros(s.shape, s.dtype) for s in manifest.specs}, 1)
    honest = {n: inputs[n] for n in (1, 2, 3)}
    weight = sum(w for _, w in honest.values())
    honest_sum = sum(encode_input(t, w, manifest, cfg)[0].view(np.int64)[HEADER_WORDS:] for t, w in honest.values())
    # The liar's best: the sum on the ball's edge, pointing away from the honest mean.
    radius = weight * (cfg.l2_clip * cfg.scale + math.sqrt(manifest.size) / 2)
    target = -honest_sum / np.linalg.norm(honest_sum) * radius * (1 - 1e-9)
    body = np.trunc(target).astype(np.int64) - honest_sum

    run = run_round(cfg, manifest, [1, 2, 3, LIAR], inputs, intercept=_lie(_weightless(body)))

    assert run.result is not None, run.abort_reason
    mean, step = run.result.weighted_mean()
    assert run.result.total_weight == weight  # the liar counted for nothing ...
    honest_mean = np.average([np.clip(flat(t), -1, 1) for t, _ in honest.values()], axis=0,
                             weights=[w for _, w in honest.values()])  # fmt: skip
    moved = np.linalg.norm(mean - honest_mean)
    assert moved > cfg.l2_clip  # ... and moved the fused update across the ball (the bound is real) ...
    assert np.linalg.norm(mean) <= cfg.l2_clip + math.sqrt(manifest.size) / (2 * cfg.scale)  # ... but not out of it
    assert np.max(np.abs(mean)) <= cfg.clip_range
    over = body.copy()
    over[np.argmax(np.abs(target))] += np.int64(np.sign(target[np.argmax(np.abs(target))]) * weight * 8)
    refused = run_round(cfg, manifest, [1, 2, 3, LIAR], inputs, intercept=_lie(_weightless(over)))
    assert refused.result is None and "check `l2-norm`" in refused.abort_reason


_VALID = {
    1: {"auc": 0.71, "logloss": 0.62, "positive_rate": 0.5, "n": 40.0,
        "hr@10": 0.3, "ndcg@10": 0.21, "rank-users": 10.0},
    2: {"auc": 0.64, "logloss": 0.66, "positive_rate": 0.45, "n": 70.0,
        "hr@10": 0.2, "ndcg@10": 0.15, "rank-users": 12.0},
    3: {"auc": 0.55, "logloss": 0.69, "positive_rate": 0.4, "n": 120.0,
        "hr@10": 0.5, "ndcg@10": 0.33, "rank-users": 20.0},
}  # fmt: skip
SPLITS = ("valid", "test")  # two splits: no entry of the vector sits at the clip range's edge
HONEST_METRICS = {
    n: {**{f"valid.{k}": v for k, v in m.items()}, **{f"test.{k}": v for k, v in m.items()}, "test.n": m["n"] + 10}
    for n, m in _VALID.items()
}


def _metric_round(delta_of: Any) -> tuple[Any, Manifest, SecAggConfig]:
    cfg = SecAggConfig(min_cohort=3)
    splits = SPLITS
    inputs = {n: ({METRIC_VECTOR: v}, w) for n, (v, w) in
              ((n, encode_metrics(m, splits, cfg.clip_range)) for n, m in HONEST_METRICS.items())}  # fmt: skip
    inputs[LIAR] = ({METRIC_VECTOR: np.zeros(vector_length(splits), np.float32)}, 1)
    manifest = Manifest.from_arrays({METRIC_VECTOR: np.zeros(vector_length(splits), np.float32)})
    run = run_round(cfg, manifest, [1, 2, 3, LIAR], inputs, intercept=_lie(delta_of(cfg)))
    assert run.result is not None, run.abort_reason
    return run.result, manifest, cfg


def _decode(result: Any, cfg: SecAggConfig) -> dict[str, float]:
    mean, bound = result.weighted_mean()
    return decode_metric_sum(mean, result.total_weight, SPLITS, cfg.clip_range, bound)


@pytest.mark.parametrize(
    ("entry", "phantom", "check"),
    [(0, 50, "metric-counts"), (3, 100, "metric-range"), (2, 50, "metric-weights")],
    ids=["phantom-examples", "auc-above-one", "auc-weight-above-count"],
)
def test_a_weightless_liar_cannot_add_to_the_metric_sums_counts_or_leave_a_metrics_range(
    entry: int, phantom: int, check: str
) -> None:
    """The liar sends weight 0 and some phantom examples' worth of one entry of the metric vector:
    validation examples, weighted AUC mass, or AUC weight.

    On main the decoded sum was not checked: the reported example count grew and the
    mean AUC moved with no platform counted for it. Now the decoded metric sum must be one an
    honest cohort could send: split counts adding up to the total weight, metric weights within
    their counts, weighted metrics within their weights.
    """
    honest_weight = sum(m["valid.n"] + m["test.n"] for m in HONEST_METRICS.values())

    def delta(cfg: SecAggConfig) -> np.ndarray:
        body = np.zeros(vector_length(SPLITS), dtype=np.int64)
        body[entry] = phantom * cfg.q_max
        return _weightless(body)

    result, _, cfg = _metric_round(delta)
    assert result.total_weight == honest_weight
    with pytest.raises(ValueError, match=f"check `{check}`"):
        _decode(result, cfg)


def test_a_weightless_liar_moves_a_metric_mean_only_within_its_range() -> None:
    """The bound that remains: a liar can move the AUC mean anywhere in [0, 1] (its AUC mass is
    unchecked against its own weight), but the example count stays that of the honest platforms."""
    honest_weight = int(sum(m["valid.n"] for m in HONEST_METRICS.values()))

    def delta(cfg: SecAggConfig) -> np.ndarray:
        body = np.zeros(vector_length(SPLITS), dtype=np.int64)
        slack = sum(m["valid.n"] * (1 - m["valid.auc"]) for m in HONEST_METRICS.values())
        body[3] = int(slack * cfg.q_max * 0.999)  # weighted AUC up to (almost) the AUC weight
        return _weightless(body)

    result, _, cfg = _metric_round(delta)
    decoded = _decode(result, cfg)
    assert decoded["valid.n"] == honest_weight and 0.99 < decoded["valid.auc"] <= 1.0


# -- hole 4: clip counts ------------------------------------------------------------------
def test_a_platform_cannot_hide_the_others_clip_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three honest platforms clip values; the liar subtracts their clipped count from its first
    report word.

    On main the count was one word that every platform added to: the sum reported 0 clipped
    values. Now each platform writes its report into its own secretly, randomly chosen slot (here
    the last one), and a slot below 0 is refused: the liar would have to guess where the others are.
    """
    monkeypatch.setattr(quantize, "report_slots", lambda: (quantize.REPORT_SLOTS - 1,) * 3, raising=False)
    cfg = SecAggConfig(clip_range=0.2, min_cohort=3)
    manifest = tiny_manifest()
    inputs = make_inputs([1, 2, 3], seed=7, scale=0.3)
    inputs[LIAR] = ({s.name: np.zeros(s.shape, s.dtype) for s in manifest.specs}, 1)
    clipped = sum(int(np.count_nonzero(np.abs(flat(t)) > 0.2)) for t, _ in inputs.values())
    assert clipped > 0
    delta = np.zeros(HEADER_WORDS + manifest.size, dtype=np.int64)
    delta[1] = -clipped

    run = run_round(cfg, manifest, [1, 2, 3, LIAR], inputs, intercept=_lie(delta))

    assert run.result is None, f"the sum reported {run.result.clipped_values} of {clipped} clipped values"
    assert "check `clipped-count`" in run.abort_reason, run.abort_reason


def test_hiding_a_clip_count_goes_unnoticed_only_in_a_slot_an_honest_platform_chose() -> None:
    """The bound: a liar lowering the reported count in a slot it picks is caught unless an honest
    platform that clipped chose that slot: at most k - 1 of the REPORT_SLOTS slots, whatever it does."""
    cfg = SecAggConfig(clip_range=0.2, min_cohort=3)
    manifest = tiny_manifest()
    inputs = make_inputs([1, 2, 3], seed=8, scale=0.3)
    slots = {1: (5, 5, 5), 2: (9, 9, 9), 3: (5, 5, 5)}
    honest = sum(encode_input(t, w, manifest, cfg, slots=slots[n])[0] for n, (t, w) in inputs.items())
    undetected = []
    for slot in range(quantize.REPORT_SLOTS):
        words = honest.copy()
        words.view(np.int64)[1 + slot] -= 1  # the liar lowers one count by one
        try:
            decode_sum(words, cfg, 4)
        except quantize.InputError as exc:
            assert "check `clipped-count`" in str(exc)
            continue
        undetected.append(slot)
    assert undetected == [5, 9]  # the two slots the honest platforms chose, nothing else
