"""Shamir t-of-n secret sharing over GF(p), p = 2^521 - 1 (a Mersenne prime).

A secret s (32 bytes, so s < 2^256 < p) is the constant term of a random
polynomial f of degree t - 1 with coefficients drawn uniformly from GF(p) by
``secrets.randbelow``. The holder with evaluation point x gets y = f(x); any t
points give s back by Lagrange interpolation at 0, and any t - 1 of them are
uniform and independent of s (for every s, each (t-1)-tuple of y's is hit by
exactly p coefficient choices out of p^(t-1) * p).

Evaluation points are node ids + 1 (node ids are unsigned 64-bit, so x is in
[1, 2^64] and never 0). A share is y as a fixed 66-byte big-endian string.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from common.secagg.errors import ProtocolError

PRIME = (1 << 521) - 1
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66


def eval_point(node_id: int) -> int:
    """Evaluation point of a node: its id + 1 (never 0)."""
    return node_id + 1


def split(secret: bytes, threshold: int, points: Sequence[int], prime: int = PRIME) -> list[int]:
    """Shares ``f(x)`` for each x in ``points`` of a fresh degree-(t-1) polynomial."""
    s = int.from_bytes(secret, "big")
    if s >= prime:
        raise ProtocolError("secret does not fit in the field")
    if not 1 <= threshold <= len(points):
        raise ProtocolError(f"threshold {threshold} must be in [1, {len(points)}]")
    if len(set(points)) != len(points) or any(not 0 < x < prime for x in points):
        raise ProtocolError("evaluation points must be distinct and in [1, p)")
    coeffs = [s] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % prime
        shares.append(y)
    return shares


def lagrange_at_zero(points: Sequence[int], prime: int = PRIME) -> list[int]:
    """Coefficients l_i with f(0) = sum(l_i * f(x_i)) for any f of degree < len(points).

    Depends only on the points, so the server computes them once per set of
    responders and reuses them for every secret.
    """
    if len(set(points)) != len(points) or any(not 0 < x < prime for x in points):
        raise ProtocolError("interpolation points must be distinct and in [1, p)")
    coeffs = []
    for i, xi in enumerate(points):
        num, den = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                num = num * xj % prime
                den = den * (xj - xi) % prime
        coeffs.append(num * pow(den, -1, prime) % prime)
    return coeffs


def combine(
    points: Sequence[int],
    shares: Sequence[int],
    coeffs: Sequence[int] | None = None,
    prime: int = PRIME,
    nbytes: int = 32,
) -> bytes:
    """Secret from exactly t (point, share) pairs, as ``nbytes`` big-endian bytes.

    Raises ProtocolError if the value does not fit in ``nbytes`` (wrong shares).
    """
    if len(points) != len(shares):
        raise ProtocolError("points and shares differ in length")
    lam = lagrange_at_zero(points, prime) if coeffs is None else coeffs
    s = sum(c * y for c, y in zip(lam, shares, strict=True)) % prime
    if s.bit_length() > 8 * nbytes:
        raise ProtocolError("reconstructed value is out of range (inconsistent shares)")
    return s.to_bytes(nbytes, "big")


def share_to_bytes(y: int) -> bytes:
    """Fixed-width encoding of a share value."""
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Inverse of ``share_to_bytes``; rejects wrong lengths and values >= p."""
    if not isinstance(data, bytes) or len(data) != SHARE_BYTES:
        raise ProtocolError(f"a share must be {SHARE_BYTES} bytes")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ProtocolError("share value is not a field element")
    return y
