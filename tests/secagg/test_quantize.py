"""Config validation, overflow refusal, input validation, quantisation and its error bound."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import AppConfig
from common.secagg import HEADER_WORDS, InputError, Manifest, SecAggConfig, TensorSpec
from common.secagg.config import REPORT_SLOTS
from common.secagg.errors import ConfigError
from common.secagg.quantize import decode_sum, encode_input, quantization_bound, weighted_mean
from common.secure_wire import secagg_config
from tests.secagg.helpers import flat, make_inputs, tiny_manifest


# -- config ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip_range": 0.0}, "`clip_range`"),
        ({"clip_range": float("nan")}, "`clip_range`"),
        ({"l2_clip": -1.0}, "`l2_clip`"),
        ({"modulus_bits": 48}, "`modulus_bits`"),
        ({"quant_bits": 1}, "`quant_bits`"),
        ({"quant_bits": 53}, "`quant_bits`"),
        ({"max_weight": 0}, "`max_weight`"),
        ({"min_cohort": 1}, "`min_cohort`"),
        ({"min_cohort": 10, "max_cohort": 5}, "`max_cohort`"),
        ({"threshold_fraction": 0.5}, "`threshold_fraction`"),
        ({"threshold_fraction": 1.5}, "`threshold_fraction`"),
        ({"quant_bits": "24"}, "`quant_bits`"),
        ({"max_weight": True}, "`max_weight`"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SecAggConfig(**kwargs)


def test_default_config_is_valid_and_derived_values():
    cfg = SecAggConfig()
    assert cfg.q_max == 2**23 - 1
    assert cfg.scale == pytest.approx(cfg.q_max / cfg.clip_range)
    assert cfg.uint_dtype == np.uint64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quant_bits": 40, "max_weight": 2**20, "max_cohort": 2**10},  # 2^39*2^20*2^10 > 2^63
        {"modulus_bits": 32, "quant_bits": 16, "max_weight": 1000, "max_cohort": 100},
        {"max_weight": 2**40, "max_cohort": 2**10, "quant_bits": 16},
    ],
)
def test_overflow_config_refused_naming_settings(kwargs):
    with pytest.raises(ConfigError, match="overflow") as info:
        SecAggConfig(**kwargs)
    msg = str(info.value)
    for name in ("`quant_bits`", "`max_weight`", "`max_cohort`", "`modulus_bits`"):
        assert name in msg


def test_largest_safe_config_accepted():
    # Negative twin of the overflow test: just under the limit passes.
    cfg = SecAggConfig(modulus_bits=32, quant_bits=12, max_weight=2**9, max_cohort=2**9)
    assert cfg.max_cohort * cfg.max_weight * cfg.q_max < 2**31


def test_vector_length_overflow_refused():
    cfg = SecAggConfig(modulus_bits=32, quant_bits=8, max_weight=16, max_cohort=1000)
    cfg.check_vector_length(1_000_000)
    with pytest.raises(ConfigError, match="`max_cohort`"):
        cfg.check_vector_length(3_000_000)


@pytest.mark.parametrize(("n", "t"), [(2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (10, 7), (30, 21)])
def test_threshold_strictly_above_two_thirds(n, t):
    cfg = SecAggConfig()
    assert cfg.threshold(n) == t
    assert 3 * cfg.threshold(n) > 2 * n  # t > 2n/3 (Bonawitz et al., malicious setting)
    assert SecAggConfig(threshold_fraction=0.51).threshold(n) == t  # a lower fraction never lowers t


def test_run_config_secure_section_is_the_protocol_config():
    # One declaration: `secure.*` defaults are SecAggConfig's, and each key reaches its field
    tuned = AppConfig().replace(**{"secure.clip-range": 2, "secure.quant-bits": 20, "lora.r": 8})
    assert secagg_config(AppConfig()) == SecAggConfig()
    assert secagg_config(tuned) == SecAggConfig(clip_range=2.0, quant_bits=20)


# -- input validation ----------------------------------------------------------------
def _good(manifest):
    tensors, _ = make_inputs([0], manifest=manifest)[0]
    return tensors


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: t.__setitem__("lora_A", np.full((4, 8), np.nan, np.float32)), "non-finite"),
        (lambda t: t["lora_B"].__setitem__((0, 0), np.inf), "non-finite"),
        (lambda t: t["lora_B"].__setitem__((1, 1), -np.inf), "non-finite"),
        (lambda t: t.__setitem__("lora_A", np.zeros((8, 4), np.float32)), "shape"),
        (lambda t: t.__setitem__("lora_A", np.zeros(32, np.float32)), "shape"),
        (lambda t: t.__setitem__("lora_A", np.zeros((4, 8), np.float64)), "dtype"),
        (lambda t: t.__setitem__("lora_A", np.zeros((4, 8), np.int32)), "dtype"),
        (lambda t: t.pop("lora_B"), "missing"),
        (lambda t: t.__setitem__("extra", np.zeros(1, np.float32)), "unexpected"),
        (lambda t: t.__setitem__("lora_A", [[0.0] * 8] * 4), "ndarray"),
    ],
)
def test_bad_inputs_refused_before_masking(cfg, manifest, mutate, match):
    tensors = _good(manifest)
    mutate(tensors)
    with pytest.raises(InputError, match=match):
        encode_input(tensors, 10, manifest, cfg)


def test_good_input_accepted(cfg, manifest):
    # Negative twin of the refusals above.
    words, report = encode_input(_good(manifest), 10, manifest, cfg)
    assert words.dtype == np.uint64 and words.shape == (HEADER_WORDS + manifest.size,)
    assert report.clipped_values == 0 and not report.norm_clipped and not report.weight_capped


@pytest.mark.parametrize("weight", [-1, 1.5, float("nan"), "3", None, True])
def test_bad_weight_refused(cfg, manifest, weight):
    with pytest.raises(InputError):
        encode_input(_good(manifest), weight, manifest, cfg)


@pytest.mark.parametrize("weight", [0, 7, 7.0, np.int64(7)])
def test_integral_weights_accepted(cfg, manifest, weight):
    words, _ = encode_input(_good(manifest), weight, manifest, cfg)
    assert int(words[0]) == int(weight)


# -- quantisation --------------------------------------------------------------------
def test_encoding_matches_simple_oracle(manifest):
    # Prepare
    cfg = SecAggConfig(clip_range=0.5, l2_clip=2.0, quant_bits=16, min_cohort=3)
    tensors = _good(manifest)
    x = flat(tensors)
    norm = np.linalg.norm(x)
    y = x * min(1.0, 2.0 / norm)
    over = int(np.count_nonzero(np.abs(y) > 0.5))
    q = np.rint(np.clip(y, -0.5, 0.5) * cfg.scale).astype(np.int64) * 9

    # Execute
    words, report = encode_input(tensors, 9, manifest, cfg, slots=(3, 0, 7))

    # Assert
    signed = words.view(np.int64)
    np.testing.assert_array_equal(signed[HEADER_WORDS:], q)
    assert _header(signed) == {0: 9, 1 + 3: over, 1 + REPORT_SLOTS: int(norm > 2.0)}
    assert report.norm_clipped == (norm > 2.0) and report.clipped_values == over
    assert report.l2_norm == pytest.approx(norm)


def test_clipping_and_capping_are_reported(caplog, manifest):
    cfg = SecAggConfig(clip_range=0.1, max_weight=50, min_cohort=3)
    tensors = {k: v * 0 + 1.0 for k, v in _good(manifest).items()}  # all values 1.0 > c
    words, report = encode_input(tensors, 80, manifest, cfg, slots=(0, 0, 5))
    assert report.clipped_values == manifest.size
    assert report.weight_capped and report.weight == 50
    assert _header(words.view(np.int64)) == {0: 50, 1: manifest.size, 1 + 2 * REPORT_SLOTS + 5: 1}
    assert "clipped" in caplog.text


def _header(signed: np.ndarray) -> dict[int, int]:
    """The non-zero header words (weight and clip reports) by position."""
    return {i: int(v) for i, v in enumerate(signed[:HEADER_WORDS]) if v}


def test_report_slots_are_checked(cfg, manifest):
    with pytest.raises(InputError, match="clip report slots"):
        encode_input(_good(manifest), 1, manifest, cfg, slots=(0, 0, REPORT_SLOTS))


def test_nothing_clipped_logs_nothing(caplog, cfg, manifest):
    encode_input(_good(manifest), 5, manifest, cfg)
    assert caplog.text == ""


@pytest.mark.parametrize("quant_bits", [8, 16, 24])
def test_weighted_mean_within_stated_bound(manifest, quant_bits):
    # Prepare: 6 platforms, values inside [-c, c] so only rounding contributes.
    cfg = SecAggConfig(quant_bits=quant_bits, clip_range=2.0, min_cohort=3)
    inputs = make_inputs(range(6), seed=quant_bits, scale=0.5)
    acc = np.zeros(HEADER_WORDS + manifest.size, dtype=np.uint64)
    for tensors, w in inputs.values():
        acc += encode_input(tensors, w, manifest, cfg)[0]
    xs = np.stack([np.clip(flat(t), -2, 2) for t, _ in inputs.values()])
    ws = np.array([w for _, w in inputs.values()])

    # Execute
    agg = decode_sum(acc, cfg, num_inputs=6)
    mean, bound = weighted_mean(agg.weighted_sum, agg.total_weight, cfg)

    # Assert
    assert agg.total_weight == ws.sum()
    exact = np.average(xs, axis=0, weights=ws)
    assert np.max(np.abs(mean - exact)) <= bound
    assert np.max(np.abs(agg.weighted_sum - (ws[:, None] * xs).sum(0))) <= agg.sum_error_bound
    assert bound == quantization_bound(cfg)
    # The bound is not vacuous: it is about one half grid step.
    assert bound <= 0.51 * cfg.clip_range / cfg.q_max


def test_bound_is_nearly_tight():
    # Negative twin: a value half a step off the grid errs by ~the bound.
    cfg = SecAggConfig(quant_bits=8, clip_range=1.0, min_cohort=3)
    x = (10.5 - 1e-9) / cfg.scale
    words, _ = encode_input({"vector": np.array([x])}, 1, Manifest.flat(1, "float64"), cfg)
    agg = decode_sum(words, cfg, 1)
    mean, bound = weighted_mean(agg.weighted_sum, agg.total_weight, cfg)
    assert abs(mean[0] - x) > 0.99 * 0.5 / cfg.scale
    assert abs(mean[0] - x) <= bound


def test_zero_total_weight_has_no_mean(cfg):
    with pytest.raises(InputError, match="total weight"):
        weighted_mean(np.zeros(3), 0, cfg)


def test_impossible_header_detected(cfg):
    words = np.zeros(HEADER_WORDS + 4, dtype=np.uint64)
    words[0] = np.uint64(2**63 + 5)  # negative total weight
    with pytest.raises(InputError):
        decode_sum(words, cfg, 3)


N_IN, D_SUM, TOTAL = 3, 4, 10  # 3 inputs of total weight 10, 4 values
_CFG = SecAggConfig(min_cohort=3)
_LIMIT = TOTAL * _CFG.q_max  # |sum_i n_i q_i| <= sum_i n_i * Q


@pytest.mark.parametrize(
    ("word", "value", "check"),
    [
        (0, N_IN, None), (0, N_IN - 1, "total-weight"),  # every input weighs >= 1
        (0, N_IN * _CFG.max_weight, None), (0, N_IN * _CFG.max_weight + 1, "total-weight"),
        (1, N_IN * D_SUM, None), (1, N_IN * D_SUM + 1, "clipped-count"), (1, -1, "clipped-count"),
        (REPORT_SLOTS, -1, "clipped-count"),  # every slot >= 0: lowering another's report shows
        (1 + REPORT_SLOTS, N_IN, None), (1 + REPORT_SLOTS, N_IN + 1, "clip-flags"),
        (1 + 2 * REPORT_SLOTS, -1, "clip-flags"), (HEADER_WORDS - 1, N_IN, None),
        (HEADER_WORDS, _LIMIT, None), (HEADER_WORDS, _LIMIT + 1, "clip-range"),
        (HEADER_WORDS + 3, -_LIMIT, None), (HEADER_WORDS + 3, -_LIMIT - 1, "clip-range"),
    ],
)  # fmt: skip
def test_unmasked_sum_bounds_are_exact(word: int, value: int, check: str | None) -> None:
    """Issue 13's output bounds at their edges: the largest honest sum passes, one more is refused."""
    signed = np.zeros(HEADER_WORDS + D_SUM, dtype=np.int64)
    signed[0] = TOTAL
    signed[word] = value
    words = signed.view(np.uint64)
    if check is None:
        assert decode_sum(words, _CFG, N_IN).total_weight == signed[0]
        return
    with pytest.raises(InputError, match=f"check `{check}`"):
        decode_sum(words, _CFG, N_IN)


def test_manifest_digest_and_unflatten():
    man = tiny_manifest()
    other = Manifest([TensorSpec("lora_A", (8, 4)), TensorSpec("lora_B", (8, 3))])
    assert man.digest() != other.digest()
    parts = man.unflatten(np.arange(man.size, dtype=np.float64))
    assert parts["lora_A"].shape == (4, 8) and parts["lora_B"][0, 0] == 32
    with pytest.raises(ConfigError):
        Manifest([TensorSpec("a", (2,)), TensorSpec("a", (3,))])
    with pytest.raises(ConfigError):
        Manifest([TensorSpec("a", (2,), "int8")])


def test_int_and_float_settings_hash_alike():
    from common.secagg.crypto import params_digest

    a = SecAggConfig(clip_range=1, threshold_fraction=1)
    b = SecAggConfig(clip_range=1.0, threshold_fraction=1.0)
    assert isinstance(a.clip_range, float)
    assert params_digest(a.to_params(), b"", b"") == params_digest(b.to_params(), b"", b"")
