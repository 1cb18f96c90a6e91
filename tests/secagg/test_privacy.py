"""What the server sees: uniform masked vectors, input-independent transcripts, no plaintext."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scipy import stats

from common.secagg import (
    HEADER_WORDS,
    STAGE_MASKED_INPUT,
    Manifest,
    SecAggConfig,
    pack_record,
    record_nbytes,
    run_round,
)
from common.secagg.quantize import encode_input

D = 20_000
MAN = Manifest.flat(D)
IDS = [0, 1, 2]


def _masked_vectors(run):
    return {n: m["masked"] for d, s, n, m in run.transcript if d == "up" and s == STAGE_MASKED_INPUT}


def _uniform_pvalues(words: np.ndarray) -> tuple[float, float]:
    """(KS p-value of words / 2^64 vs U(0,1), chi-square p-value of the top byte)."""
    u = (words >> np.uint64(11)).astype(np.float64) / 2.0**53
    ks = stats.kstest(u, "uniform").pvalue
    top = np.bincount((words >> np.uint64(56)).astype(np.int64), minlength=256)
    return ks, stats.chisquare(top).pvalue


@pytest.mark.parametrize(
    ("value", "weight"),
    [(0.0, 1), (0.0, 0), (1.0, 1_000_000), (-1.0, 1_000_000), (7.0, 3)],  # zero and extreme
)
def test_masked_vectors_are_uniform(value, weight):
    # Prepare
    cfg = SecAggConfig()
    inputs = {n: ({"vector": np.full(D, value, np.float32)}, weight) for n in IDS}

    # Execute
    run = run_round(cfg, MAN, IDS, inputs, record=True)

    # Assert: every masked vector passes KS and chi-square uniformity tests
    for words in _masked_vectors(run).values():
        ks, chi = _uniform_pvalues(words)
        assert ks > 1e-4 and chi > 1e-4, (ks, chi)


def test_unmasked_encoding_is_not_uniform():
    # Negative twin: the same statistics flag the plain encoding immediately.
    cfg = SecAggConfig()
    words, _ = encode_input({"vector": np.full(D, 1.0, np.float32)}, 1_000_000, MAN, cfg)
    ks, chi = _uniform_pvalues(words)
    assert ks < 1e-10 and chi < 1e-10


def test_transcripts_for_same_sum_are_indistinguishable():
    """(x1, x2, x3) vs (x1 + d, x2 - d, x3): same sum, statistically alike server views."""
    # Prepare: values on the quantisation grid and equal weights, so the sums are equal
    cfg = SecAggConfig()
    rng = np.random.default_rng(0)
    grid = lambda a: np.rint(a * cfg.scale) / cfg.scale  # noqa: E731
    x1, x2, x3 = (grid(rng.uniform(-0.4, 0.4, D)) for _ in range(3))
    delta = grid(np.full(D, 0.5))
    a = {0: x1, 1: x2, 2: x3}
    b = {0: x1 + delta, 1: x2 - delta, 2: x3}
    man = Manifest.flat(D, "float64")

    # Execute
    runs = [run_round(cfg, man, IDS, {n: ({"vector": v[n]}, 7) for n in IDS}, record=True) for v in (a, b)]

    # Assert: identical outputs ...
    np.testing.assert_array_equal(runs[0].result.weighted_sum, runs[1].result.weighted_sum)
    # ... identical message shapes and sizes in both transcripts ...
    for (da, sa, na, ma), (db, sb, nb, mb) in zip(runs[0].transcript, runs[1].transcript, strict=True):
        assert (da, sa, na, sorted(ma)) == (db, sb, nb, sorted(mb))
        assert record_nbytes(ma) == record_nbytes(mb)
    # ... and each node's masked vector is distributed alike in the two worlds.
    va, vb = _masked_vectors(runs[0]), _masked_vectors(runs[1])
    for n in (0, 1):
        ua = (va[n] >> np.uint64(11)).astype(np.float64)
        ub = (vb[n] >> np.uint64(11)).astype(np.float64)
        assert stats.ks_2samp(ua, ub).pvalue > 1e-4


def test_unmasked_inputs_would_be_distinguishable():
    # Negative twin: without masks the two worlds differ obviously.
    cfg = SecAggConfig()
    x = np.full(D, 0.1)
    wa, _ = encode_input({"vector": x}, 7, Manifest.flat(D, "float64"), cfg)
    wb, _ = encode_input({"vector": x + 0.5}, 7, Manifest.flat(D, "float64"), cfg)
    assert stats.ks_2samp(wa.astype(np.float64), wb.astype(np.float64)).pvalue < 1e-10


def _needles(tensors, weight, cfg, man):
    """Byte encodings of the count and of values that must not appear in clear."""
    words, _ = encode_input(tensors, weight, man, cfg)
    vec = tensors["vector"]
    out = [struct.pack(f, weight) for f in ("<q", ">q", "<i", ">i")]
    out += [struct.pack(f, float(weight)) for f in ("<d", ">d", "<f")]
    out += [words[i].tobytes() for i in range(HEADER_WORDS + 64)]  # header + first values
    out += [vec[i].tobytes() for i in range(64)]  # float32 inputs
    out += [np.float64(vec[i]).tobytes() for i in range(64)]
    return out, words


def test_outgoing_messages_hold_no_plaintext_count_or_vector():
    # Prepare: distinctive values and a distinctive weight
    cfg = SecAggConfig()
    man = Manifest.flat(D)
    rng = np.random.default_rng(5)
    inputs = {n: ({"vector": rng.uniform(-0.9, 0.9, D).astype(np.float32)}, 123_457 + n) for n in IDS}

    # Execute
    run = run_round(cfg, man, IDS, inputs, record=True)

    # Assert
    assert run.result is not None
    for n in IDS:
        needles, _ = _needles(*inputs[n], cfg, man)
        sent = b"".join(pack_record(m) for d, _, node, m in run.transcript if d == "up" and node == n)
        hits = [i for i, needle in enumerate(needles) if needle in sent]
        assert hits == [], f"node {n} leaked encodings {hits}"


def test_plaintext_search_finds_unmasked_encoding():
    # Negative twin: the same search flags the plain (unmasked) encoded vector.
    cfg = SecAggConfig()
    man = Manifest.flat(D)
    tensors = {"vector": np.random.default_rng(5).uniform(-0.9, 0.9, D).astype(np.float32)}
    needles, words = _needles(tensors, 123_457, cfg, man)
    vec = tensors["vector"]
    blob = pack_record({"masked": words, "f32": vec, "f64": vec.astype(np.float64)})
    # '<q' count, the header/value words, and the float32/float64 inputs are all found.
    assert all(needle in blob for needle in needles[:1] + needles[7:])
