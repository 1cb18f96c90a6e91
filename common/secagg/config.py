"""Configuration of the secure-aggregation protocol.

Both sides build the same ``SecAggConfig`` (from ``run_config``); the server
sends the values in the setup request and each client refuses a request whose
values differ from its own local policy.

Fixed-point encoding (see ``quantize.py`` for the maths)::

    Q     = 2**(quant_bits - 1) - 1          largest quantised magnitude
    scale = Q / clip_range                   x in [-c, c]  ->  q = rint(x * scale) in [-Q, Q]
    each client masks  [n_i, stats..., n_i * q(x_i)]   modulo 2**modulus_bits

Overflow rule (checked here, up front): every coordinate of the cohort sum must
fit in a signed ``modulus_bits`` integer, i.e.
``max_cohort * max_weight * Q < 2**(modulus_bits - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from common.config import SecureSpec, grid_scale, quant_max, shamir_threshold
from common.secagg.errors import ConfigError

# Each platform writes its clip report (clipped-value count, norm-clipped flag, weight-capped flag)
# into one of REPORT_SLOTS slots per statistic, chosen secretly at random per round, so a platform
# that lowers another's report must guess where it is (``quantize.decode_sum``: no slot may be < 0).
REPORT_SLOTS = 128
REPORTS = ("clipped-count", "norm-clipped", "weight-capped")
# Number of uint words in front of the adapter values in every masked vector:
# [weight n_i, REPORT_SLOTS words per statistic of REPORTS].
HEADER_WORDS = 1 + len(REPORTS) * REPORT_SLOTS


@dataclass(frozen=True)
class SecAggConfig:
    """Protocol parameters shared by the server and every platform.

    The settings a run configures are declared once, in ``common.config.SecureSpec`` (``secure.*``):
    their defaults here are those. ``modulus_bits`` and ``max_cohort`` are the protocol's own.
    """

    clip_range: float = field(
        default=SecureSpec.clip_range,
        metadata={"help": "c: each adapter value is clipped to [-c, c] (counted, reported)."},
    )
    l2_clip: float = field(
        default=SecureSpec.l2_clip,
        metadata={"help": "L2-norm bound applied before the per-value clip; 0 disables it."},
    )
    quant_bits: int = field(
        default=SecureSpec.quant_bits,
        metadata={"help": "Signed bits per quantised value: q in [-(2^(b-1)-1), 2^(b-1)-1]."},
    )
    modulus_bits: int = field(
        default=64,
        metadata={"help": "Masked arithmetic is modulo 2^modulus_bits (32 or 64; uint words)."},
    )
    max_weight: int = field(
        default=SecureSpec.max_weight,
        metadata={"help": "Cap on a platform's example count n_i (capping is reported)."},
    )
    max_cohort: int = field(
        default=1024,
        metadata={"help": "Largest cohort the overflow check must cover."},
    )
    min_cohort: int = field(
        default=SecureSpec.min_cohort,
        metadata={"help": "Fewest platforms that must finish key setup for a round to run."},
    )
    threshold_fraction: float = field(
        default=SecureSpec.threshold_fraction,
        metadata={
            "help": "Shamir threshold t = max(ceil(f*n), floor(2n/3)+1): always more than 2n/3, "
            "so with fewer than 2t - n colluding platforms no two signed survivor sets both reach t. "
            "A larger f only raises t. Tolerates n - t dropouts."
        },
    )

    def __post_init__(self) -> None:
        _check_number("clip_range", self.clip_range, float)
        _check_number("l2_clip", self.l2_clip, float)
        for name in ("quant_bits", "modulus_bits", "max_weight", "max_cohort", "min_cohort"):
            _check_number(name, getattr(self, name), int)
        _check_number("threshold_fraction", self.threshold_fraction, float)
        # Ints given for float fields become floats, so every party hashes the same params.
        for name in ("clip_range", "l2_clip", "threshold_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not self.clip_range > 0:
            raise ConfigError(f"`clip_range` must be positive, got {self.clip_range}")
        if self.l2_clip < 0:
            raise ConfigError(f"`l2_clip` must be >= 0 (0 disables it), got {self.l2_clip}")
        if self.modulus_bits not in (32, 64):
            raise ConfigError(f"`modulus_bits` must be 32 or 64, got {self.modulus_bits}")
        top = min(self.modulus_bits - 1, 52)  # float64 holds integers exactly up to 2^53
        if not 2 <= self.quant_bits <= top:
            raise ConfigError(
                f"`quant_bits` must be in [2, {top}] for `modulus_bits`={self.modulus_bits}, got {self.quant_bits}"
            )
        if self.max_weight < 1:
            raise ConfigError(f"`max_weight` must be >= 1, got {self.max_weight}")
        if self.min_cohort < 2:
            raise ConfigError(f"`min_cohort` must be >= 2, got {self.min_cohort}")
        if self.max_cohort < self.min_cohort:
            raise ConfigError(f"`max_cohort` ({self.max_cohort}) must be >= `min_cohort` ({self.min_cohort})")
        if not 0.5 < self.threshold_fraction <= 1.0:
            raise ConfigError(f"`threshold_fraction` must be in (0.5, 1], got {self.threshold_fraction}")
        # Overflow: the cohort sum of n_i * q_i must stay a valid signed residue.
        worst = self.max_cohort * self.max_weight * self.q_max
        limit = 1 << (self.modulus_bits - 1)
        if worst >= limit:
            raise ConfigError(
                "overflow: `max_cohort` * `max_weight` * (2^(`quant_bits`-1)-1) = "
                f"{self.max_cohort} * {self.max_weight} * {self.q_max} = {worst} "
                f">= 2^{self.modulus_bits - 1}; lower `quant_bits` (needs <= "
                f"{_max_quant_bits(self)}), `max_weight` or `max_cohort`, "
                "or raise `modulus_bits`"
            )

    # -- derived values ---------------------------------------------------------------
    @property
    def q_max(self) -> int:
        """Largest quantised magnitude Q = 2^(quant_bits-1) - 1."""
        return quant_max(self.quant_bits)

    @property
    def scale(self) -> float:
        """Quantisation scale: q = rint(x * scale); one step is 1/scale = c/Q."""
        return grid_scale(self.quant_bits, self.clip_range)

    @property
    def uint_dtype(self) -> np.dtype[Any]:
        """Dtype of masked vectors (uint32 or uint64; numpy wraps mod 2^bits)."""
        return np.dtype(np.uint64 if self.modulus_bits == 64 else np.uint32)

    @property
    def int_dtype(self) -> np.dtype[Any]:
        """Signed view of ``uint_dtype`` used to read the unmasked sum."""
        return np.dtype(np.int64 if self.modulus_bits == 64 else np.int32)

    def threshold(self, cohort_size: int) -> int:
        """Shamir threshold for a roster of ``cohort_size`` nodes (those that sent signed keys).

        ``t = max(ceil(f * n), floor(2n / 3) + 1)``: strictly more than 2n/3 (Bonawitz et al.,
        malicious setting), so two different survivor sets each signed by t platforms share
        more than n/3 signers; the round survives n - t drops.
        """
        if cohort_size < 1:
            raise ConfigError(f"cohort size must be >= 1, got {cohort_size}")
        return shamir_threshold(cohort_size, self.threshold_fraction)

    def check_cohort(self, cohort_size: int) -> None:
        """Refuse a cohort the overflow check does not cover or that is too small."""
        if cohort_size > self.max_cohort:
            raise ConfigError(
                f"cohort of {cohort_size} nodes exceeds `max_cohort`={self.max_cohort}; "
                "raise `max_cohort` (the overflow check must cover the cohort)"
            )
        if cohort_size < self.min_cohort:
            raise ConfigError(f"cohort of {cohort_size} nodes is below `min_cohort`={self.min_cohort}")

    def check_vector_length(self, length: int) -> None:
        """Refuse a vector whose clipped-value count could overflow the header word."""
        limit = 1 << (self.modulus_bits - 1)
        if length < 1:
            raise ConfigError(f"the manifest must hold at least one value, got {length}")
        if self.max_cohort * length >= limit:
            raise ConfigError(
                f"overflow: `max_cohort` * vector length = {self.max_cohort} * {length} "
                f">= 2^{self.modulus_bits - 1}; lower `max_cohort` or raise `modulus_bits`"
            )

    # -- wire form --------------------------------------------------------------------
    def to_params(self) -> dict[str, int | float]:
        """Plain dict of every field (sent in the setup request)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SecAggConfig:
        """Build from ``to_params`` output; unknown or missing keys raise ConfigError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"unknown secagg setting(s): {', '.join(unknown)}")
        return cls(**dict(params))


@dataclass(frozen=True)
class PlatformPolicy:
    """What a platform requires of every secure round, from its own node_config (never the server's).

    The server's request can only make a round stricter: the platform applies the larger
    ``min_cohort`` and ``threshold_fraction`` of the two, and refuses to send a masked input
    for more than ``max_rounds`` rounds of one run.
    """

    min_cohort: int = field(default=3, metadata={"help": "Fewest platforms in a round's signed key roster."})
    threshold_fraction: float = field(default=2 / 3, metadata={"help": "As `SecAggConfig.threshold_fraction`."})
    max_rounds: int = field(default=1000, metadata={"help": "Most rounds of one run this platform contributes to."})

    KEYS = {"min_cohort": "secagg-min-cohort", "threshold_fraction": "secagg-threshold-fraction",
            "max_rounds": "secagg-max-rounds"}  # fmt: skip

    def __post_init__(self) -> None:
        _check_number("min_cohort", self.min_cohort, int)
        _check_number("max_rounds", self.max_rounds, int)
        _check_number("threshold_fraction", self.threshold_fraction, float)
        object.__setattr__(self, "threshold_fraction", float(self.threshold_fraction))
        if self.min_cohort < 2:
            raise ConfigError(f"`{self.KEYS['min_cohort']}` must be >= 2, got {self.min_cohort}")
        if self.max_rounds < 1:
            raise ConfigError(f"`{self.KEYS['max_rounds']}` must be >= 1, got {self.max_rounds}")
        if not 0.5 < self.threshold_fraction <= 1.0:
            raise ConfigError(f"`{self.KEYS['threshold_fraction']}` must be in (0.5, 1], got {self.threshold_fraction}")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> PlatformPolicy:
        """Read ``secagg-min-cohort`` etc.; absent keys keep their (safe) defaults."""
        kwargs: dict[str, Any] = {}
        for name, key in cls.KEYS.items():
            if key in node_config:
                value = node_config[key]
                if name == "threshold_fraction" and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                kwargs[name] = value
        return cls(**kwargs)

    def apply(self, requested: SecAggConfig) -> SecAggConfig:
        """The server's protocol settings, made at least as strict as this policy."""
        return replace(
            requested,
            min_cohort=max(requested.min_cohort, self.min_cohort),
            threshold_fraction=max(requested.threshold_fraction, self.threshold_fraction),
        )


def _check_number(name: str, value: object, kind: type) -> None:
    if kind is float:
        ok = isinstance(value, (float, int)) and not isinstance(value, bool)
        if ok and not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise ConfigError(f"`{name}` must be finite, got {value}")
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"`{name}` must be {kind.__name__}, got {type(value).__name__}")


def _max_quant_bits(cfg: SecAggConfig) -> int:
    """Largest quant_bits that passes the overflow check (0 if none does)."""
    limit = 1 << (cfg.modulus_bits - 1)
    for bits in range(min(cfg.modulus_bits - 1, 52), 1, -1):
        if cfg.max_cohort * cfg.max_weight * ((1 << (bits - 1)) - 1) < limit:
            return bits
    return 0
