"""Shamir sharing: every t-subset reconstructs; t-1 shares are independent of the secret."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from scipy import stats

from common.secagg import shamir
from common.secagg.errors import ProtocolError


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3), (6, 6), (7, 5)])
def test_every_t_subset_reconstructs(n, t):
    # Prepare
    secret = os.urandom(32)
    ids = [3, 10, 11, 2**64 - 1, 7, 0, 99][:n]
    points = [shamir.eval_point(i) for i in ids]

    # Execute
    shares = shamir.split(secret, t, points)

    # Assert: every subset of size >= t gives the secret back
    for k in range(t, n + 1):
        for subset in itertools.combinations(range(n), k):
            got = shamir.combine([points[i] for i in subset], [shares[i] for i in subset])
            assert got == secret


@pytest.mark.parametrize(("n", "t"), [(5, 3), (7, 5)])
def test_t_minus_one_shares_do_not_reconstruct(n, t):
    # Negative twin: t - 1 shares interpolate to something else.
    secret = os.urandom(32)
    points = list(range(1, n + 1))
    shares = shamir.split(secret, t, points)
    for subset in itertools.combinations(range(n), t - 1):
        try:
            got = shamir.combine([points[i] for i in subset], [shares[i] for i in subset])
        except ProtocolError:
            continue  # out of range: also not the secret
        assert got != secret


def test_t_minus_one_shares_same_distribution_small_field():
    """Exact check in GF(257), t = 3: shares at two points are uniform for any secret.

    Chi-square homogeneity test of the (y1 + 257*y2 mod 64) histogram for secret 0
    vs secret 200 (p must not be tiny), plus uniformity of each.
    """
    prime, runs = 257, 12000
    hists = []
    for secret in (b"\x00", b"\xc8"):
        ys = np.array([shamir.split(secret, 3, [1, 2, 3], prime=prime)[:2] for _ in range(runs)])
        cell = (ys[:, 0] + prime * ys[:, 1]) % 64
        hists.append(np.bincount(cell, minlength=64))
    _, p_same, _, _ = stats.chi2_contingency(np.array(hists))
    assert p_same > 1e-4
    for h in hists:
        assert stats.chisquare(h).pvalue > 1e-4


def test_t_shares_do_depend_on_secret_small_field():
    # Negative twin: with t = 2 and two shares the pair determines the secret, so the
    # (y1, y2) histograms for two secrets are disjoint in the "y2 - 2*y1" statistic.
    prime = 257
    a = [shamir.split(b"\x00", 2, [1, 2], prime=prime) for _ in range(300)]
    b = [shamir.split(b"\xc8", 2, [1, 2], prime=prime) for _ in range(300)]
    # f(0) = 2*y1 - y2 mod p
    assert {(2 * y1 - y2) % prime for y1, y2 in a} == {0}
    assert {(2 * y1 - y2) % prime for y1, y2 in b} == {200}


def test_t_minus_one_shares_look_alike_full_field():
    # Top byte of one share (t = 2) for an all-zero vs all-one secret: two-sample KS.
    runs = 3000
    top = {}
    for secret in (bytes(32), b"\xff" * 32):
        ys = [shamir.split(secret, 2, [5, 9])[0] for _ in range(runs)]
        top[secret] = np.array([y >> 489 for y in ys])  # top 32 of 521 bits
    assert stats.ks_2samp(top[bytes(32)], top[b"\xff" * 32]).pvalue > 1e-4


def test_share_encoding_roundtrip_and_rejections():
    y = shamir.split(os.urandom(32), 2, [1, 2])[0]
    assert shamir.share_from_bytes(shamir.share_to_bytes(y)) == y
    with pytest.raises(ProtocolError):
        shamir.share_from_bytes(b"\x00" * (shamir.SHARE_BYTES - 1))
    with pytest.raises(ProtocolError):
        shamir.share_from_bytes(b"\xff" * shamir.SHARE_BYTES)  # >= p


@pytest.mark.parametrize(
    ("t", "points"),
    [(0, [1, 2]), (3, [1, 2]), (2, [1, 1]), (2, [0, 1]), (2, [1, shamir.PRIME])],
)
def test_split_rejects_bad_arguments(t, points):
    with pytest.raises(ProtocolError):
        shamir.split(os.urandom(32), t, points)
