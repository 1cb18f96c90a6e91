"""`crossfed bench batch`: the lr scaling rule, the 95 % interval over seeds and the choice rule, exactly."""

import math

import pytest

from common.config import ConfigError
from simulations.bench.batch import BatchBenchSpec, batch_arms, choose_batch, mean_ci, scaled_lr, summarise_rows


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [
        ("sqrt", 256, 2e-3),  # 4x the batch: 2x the lr
        ("sqrt", 16, 5e-4),  # a quarter of the batch: half the lr
        ("sqrt", 128, 1e-3 * math.sqrt(2)),
        ("linear", 256, 4e-3),
        ("linear", 32, 5e-4),
        ("none", 512, 1e-3),
        ("sqrt", 64, 1e-3),  # the reference batch keeps the reference lr under every rule
        ("linear", 64, 1e-3),
    ],
)
def test_scaled_lr(rule: str, batch: int, expected: float) -> None:
    assert scaled_lr(1e-3, 64, batch, rule) == pytest.approx(expected, rel=1e-12)


def test_scaled_lr_unknown_rule_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="`--lr-rule`"):
        scaled_lr(1e-3, 64, 128, "cubic")


def test_mean_ci_is_the_student_t_interval() -> None:
    # two seeds: std (ddof 1) of (0.6, 0.7) is 0.1/sqrt(2); t(0.975, 1) = 12.706 -> 12.706 * 0.05
    mean, half = mean_ci([0.6, 0.7])
    assert mean == pytest.approx(0.65) and half == pytest.approx(12.706 * 0.05)
    # three seeds: std of (1, 2, 3) is 1; t(0.975, 2) = 4.303 -> 4.303 / sqrt(3)
    assert mean_ci([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.303 / math.sqrt(3)))
    # NaN (a seed that failed) is left out; one value has no interval; none has no mean
    mean, half = mean_ci([0.6, math.nan])
    assert mean == 0.6 and math.isnan(half)
    assert all(math.isnan(x) for x in mean_ci([]))
    # many seeds: the normal quantile
    values = [0.0, 1.0] * 20
    assert mean_ci(values)[1] == pytest.approx(1.96 * 0.5063696835418333 / math.sqrt(40))


@pytest.mark.parametrize(
    ("valid", "tolerance", "expected"),
    [
        ({64: 0.70, 128: 0.699, 256: 0.696, 512: 0.690}, 0.005, 256),  # 512 loses 0.010: too much
        ({64: 0.70, 128: 0.699, 256: 0.696, 512: 0.690}, 0.0, 64),  # no loss accepted: the best
        ({64: 0.70, 128: 0.699, 256: 0.696, 512: 0.690}, 0.02, 512),
        ({64: 0.68, 128: 0.70, 256: 0.60}, 0.005, 128),  # the best is a middle batch
        ({64: 0.70, 128: 0.699, 256: math.nan}, 0.005, 128),  # a failed batch is never chosen
        ({64: 0.70, 128: 0.695}, 0.005, 128),  # exactly at the tolerance: accepted
        ({64: math.nan}, 0.005, None),
    ],
)
def test_choose_batch(valid: dict[int, float], tolerance: float, expected: int | None) -> None:
    assert choose_batch(valid, tolerance) == expected


def test_batch_arms_scale_both_learning_rates_from_the_config_reference() -> None:
    # Prepare: ci preset (train.batch-size 16, train.lr 1e-3, train.private-lr 1e-2), sqrt rule
    spec = BatchBenchSpec(batches=(16, 64), size="ci", base_model="tiny-random")
    # Execute
    arms, ref = batch_arms(spec)
    # Assert
    assert ref == {"batch": 16, "lr": 1e-3, "private_lr": 1e-2, "rule": "sqrt"}
    assert [a.name for a in arms] == ["local-b16", "local-b64"] and {a.kind for a in arms} == {"local"}
    assert arms[1].overrides == {"train.batch-size": 64, "train.lr": pytest.approx(2e-3),
                                 "train.private-lr": pytest.approx(2e-2)}  # fmt: skip
    linear, ref = batch_arms(BatchBenchSpec(batches=(256,), ref_batch=64, ref_lr=2e-3, lr_rule="linear", size="ci"))
    assert ref["private_lr"] == pytest.approx(2e-2)  # the configured private/shared ratio kept
    assert linear[0].overrides["train.lr"] == pytest.approx(8e-3)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"batches": (64, 0)}, "--batches"), ({"batches": (64, 64)}, "--batches"), ({"lr_rule": "x"}, "--lr-rule"),
     ({"seeds": 0}, "--seeds"), ({"tolerance": -0.1}, "--tolerance")],
)  # fmt: skip
def test_bad_spec_names_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"`{flag}`"):
        BatchBenchSpec(**kwargs)


def _seed(valid: float, examples: float, seconds: float, steps: float) -> dict[str, float]:
    return {"valid_auc": valid, "test_auc": valid - 0.01, "examples": examples, "train_seconds": seconds,
            "steps": steps}  # fmt: skip


def test_summarise_rows_speed_is_total_examples_over_total_seconds_and_a_failed_seed_is_left_out() -> None:
    # Prepare: batches 32 and 128 (the reference 64 was not run: speed-up against the smallest)
    arms, _ = batch_arms(BatchBenchSpec(batches=(128, 32), size="ci", ref_batch=64))
    per_seed = {
        "local-b32": [_seed(0.70, 1000.0, 10.0, 32.0), _seed(0.72, 1000.0, 30.0, 32.0)],  # 2000 / 40 = 50/s
        "local-b128": [_seed(0.705, 1000.0, 5.0, 8.0), None],  # seed 1 failed: 1000 / 5 = 200/s
    }
    # Execute
    rows, chosen = summarise_rows(arms, per_seed, ref_batch=64, tolerance=0.005)
    # Assert: sorted by batch; the valid means are 0.71 and 0.705: 128 is within 0.005 of the best
    assert [r["batch"] for r in rows] == [32, 128] and chosen == 128
    small, large = rows
    assert small["samples_per_s"] == pytest.approx(50.0) and large["samples_per_s"] == pytest.approx(200.0)
    assert small["speedup"] == pytest.approx(1.0) and large["speedup"] == pytest.approx(4.0)
    assert small["valid_auc"] == pytest.approx(0.71) and small["valid_auc_ci95"] == pytest.approx(12.706 * 0.01)
    assert large["seeds_done"] == 1 and math.isnan(large["valid_auc_ci95"]) and large["steps"] == 8.0
    assert [r["chosen"] for r in rows] == [False, True]
