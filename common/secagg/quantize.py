"""Input validation, clipping and fixed-point quantisation (numpy in, numpy out).

Encoding of one platform's input, in this order:

1. validate the named tensors against the ``Manifest`` (a ``common.tensor_layout``
   layout: names, shapes, dtypes; all finite) -- ``InputError`` otherwise, before
   anything is masked;
2. flatten to float64 ``x`` in manifest order;
3. if ``l2_clip`` > 0 and ``||x||_2 > l2_clip``: ``x *= l2_clip / ||x||_2`` (reported);
4. clip every value to ``[-c, c]`` (count reported);
5. ``q = rint(x * scale)`` with ``scale = Q / c``, ``Q = 2^(quant_bits-1) - 1``,
   so ``q`` is in ``[-Q, Q]`` and ``|q / scale - x| <= 1 / (2 * scale)``;
6. weight ``n = min(n_i, max_weight)`` (capping reported);
7. masked vector ``[n, clip reports, n * q]`` as uint words (two's complement, mod
   2^modulus_bits). The clip reports are ``REPORT_SLOTS`` words for each of the clipped-value
   count, the norm-clipped 0/1 and the weight-capped 0/1; the platform writes each into a slot it
   draws secretly at random (``report_slots``) and leaves the others 0.

Why slots: a masked sum lets any platform add any residue, so one shared count word lets a
platform subtract the others' counts and hide them. With slots, lowering a count it cannot see
drives some slot below 0 (refused by ``decode_sum``) unless an honest platform that clipped
happened to draw that slot: at most ``k - 1`` of the ``REPORT_SLOTS`` slots for k platforms. The
server learns the counts of the cohort's platforms as an unordered set (one per slot, not whose),
instead of only their total.

Error bound of the decoded weighted mean (``weighted_mean``): for every
coordinate j, with x_ij the *clipped* values and n_i the *capped* weights,

    | mean_j - sum_i n_i x_ij / sum_i n_i |  <=  1 / (2 * scale) + 4 * c * 2^-52

The first term is rounding to the grid (each |q_ij - scale * x_ij| <= 1/2, and a
weighted average of errors <= 1/2 is <= 1/2); the second covers float64
rounding in ``x * scale``, the int -> float conversion of the exact integer sum
(|sum| <= W * Q < 2^63) and the two divisions, each relative 2^-53 of a value
<= c in magnitude. The sum ``sum_i n_i x_ij`` itself is within
``sum_i n_i / (2 * scale)`` + the same relative float slack times ``W * c``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.secagg.config import HEADER_WORDS, REPORT_SLOTS, REPORTS, SecAggConfig
from common.secagg.errors import ConfigError, InputError
from common.tensor_layout import LayoutError, TensorLayout, TensorSpec

log = logging.getLogger(__name__)

_ALLOWED_DTYPES = ("float16", "float32", "float64")
# 8192 float64 = 64 KiB per scratch buffer: stays in L2 and below malloc's mmap threshold.
_CHUNK = 8192


class Manifest(TensorLayout):
    """The layout of the vector a platform contributes (e.g. a LoRA state dict), checked for the protocol.

    At least one value, unique non-empty names, float dtypes; its ``digest`` binds the layout
    into every round, so platforms with different adapters cannot be aggregated together.
    """

    def __init__(self, specs: Iterable[TensorSpec]) -> None:
        specs = tuple(specs)
        if not specs:
            raise ConfigError("the manifest must list at least one tensor")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError("the manifest has duplicate tensor names")
        for s in specs:
            if not isinstance(s.name, str) or not s.name:
                raise ConfigError("manifest tensor names must be non-empty strings")
            if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in s.shape):
                raise ConfigError(f"tensor `{s.name}` has an invalid shape {s.shape}")
            if s.dtype not in _ALLOWED_DTYPES:
                raise ConfigError(f"tensor `{s.name}` dtype must be one of {_ALLOWED_DTYPES}, got {s.dtype}")
        super().__init__(specs)
        if self.size < 1:
            raise ConfigError("the manifest holds no values")

    def digest(self) -> bytes:
        """SHA-256 of a canonical text form; equal digests mean the same layout."""
        text = ";".join(f"{s.name}:{','.join(map(str, s.shape))}:{s.dtype}" for s in self.specs)
        return hashlib.sha256(b"crossfed-secagg/1|manifest|" + text.encode()).digest()

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat vector (e.g. the aggregate) into named tensors (views); InputError on a wrong length."""
        try:
            return super().unflatten(vector)
        except LayoutError as exc:
            raise InputError(str(exc)) from None


@dataclass(frozen=True)
class InputReport:
    """What encoding did to one platform's input (kept locally, never sent in clear)."""

    weight: int
    weight_capped: bool
    l2_norm: float
    norm_clipped: bool
    clipped_values: int
    num_values: int


def validate_tensors(tensors: Mapping[str, Any], manifest: Manifest) -> None:
    """Raise InputError unless ``tensors`` matches the manifest exactly and is finite."""
    if not isinstance(tensors, Mapping):
        raise InputError(f"input must be a mapping name -> ndarray, got {type(tensors).__name__}")
    expected = [s.name for s in manifest.specs]
    missing = [n for n in expected if n not in tensors]
    extra = [str(n) for n in tensors if n not in expected]
    if missing or extra:
        raise InputError(f"tensor names differ from the manifest: missing {missing}, unexpected {extra}")
    for s in manifest.specs:
        arr = tensors[s.name]
        if not isinstance(arr, np.ndarray):
            raise InputError(f"tensor `{s.name}` must be a numpy ndarray, got {type(arr).__name__}")
        if arr.shape != s.shape:
            raise InputError(f"tensor `{s.name}` shape: expected {s.shape}, got {arr.shape}")
        if str(arr.dtype) != s.dtype:
            raise InputError(f"tensor `{s.name}` dtype: expected {s.dtype}, got {arr.dtype}")
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise InputError(f"tensor `{s.name}` has {bad} non-finite value(s) (NaN/Inf)")


def check_weight(weight: Any) -> int:
    """Example count as a Python int >= 0 (integral floats accepted)."""
    if isinstance(weight, bool):
        raise InputError("weight must be an integer example count, got bool")
    if (
        isinstance(weight, (int, np.integer))
        or isinstance(weight, (float, np.floating))
        and math.isfinite(weight)
        and float(weight).is_integer()
    ):
        value = int(weight)
    else:
        raise InputError(f"weight must be an integer example count, got {weight!r}")
    if value < 0:
        raise InputError(f"weight must be >= 0, got {value}")
    return value


def report_slots() -> tuple[int, ...]:
    """One secret, uniformly random slot per clip statistic (``REPORTS``), drawn afresh every round."""
    return tuple(secrets.randbelow(REPORT_SLOTS) for _ in REPORTS)


def encode_input(
    tensors: Mapping[str, Any],
    weight: Any,
    manifest: Manifest,
    cfg: SecAggConfig,
    slots: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, InputReport]:
    """Validate, clip, quantise and weight one input; returns (uint words, report).

    The returned array has ``HEADER_WORDS + manifest.size`` words of
    ``cfg.uint_dtype`` and is meant to be masked in place. ``slots`` (tests only) fixes the clip
    report slots; by default they are ``report_slots()``.
    """
    validate_tensors(tensors, manifest)
    n = check_weight(weight)
    slots = report_slots() if slots is None else slots
    if len(slots) != len(REPORTS) or not all(0 <= s < REPORT_SLOTS for s in slots):
        raise InputError(f"clip report slots must be {len(REPORTS)} values in [0, {REPORT_SLOTS}), got {slots}")
    capped = n > cfg.max_weight
    n = min(n, cfg.max_weight)

    flats = manifest.raveled(tensors)
    sq = 0.0
    buf = np.empty(_CHUNK, dtype=np.float64)  # all temporaries preallocated: no page faults
    absbuf = np.empty(_CHUNK, dtype=np.float64)
    over = np.empty(_CHUNK, dtype=bool)
    for flat in flats:  # pass 1: L2 norm in float64
        for i in range(0, flat.size, _CHUNK):
            v = buf[: min(_CHUNK, flat.size - i)]
            v[:] = flat[i : i + v.size]
            sq += float(np.dot(v, v))
    norm = math.sqrt(sq)
    norm_clipped = cfg.l2_clip > 0 and norm > cfg.l2_clip
    factor = cfg.l2_clip / norm if norm_clipped else 1.0

    words = np.empty(HEADER_WORDS + manifest.size, dtype=cfg.int_dtype)  # (H + D,)
    clipped, pos = 0, HEADER_WORDS
    c, scale, q = cfg.clip_range, cfg.scale, float(cfg.q_max)
    for flat in flats:  # pass 2: clip, quantise, weight -- chunk by chunk, in cache
        for i in range(0, flat.size, _CHUNK):
            m = min(_CHUNK, flat.size - i)
            v = buf[:m]
            v[:] = flat[i : i + m]
            if norm_clipped:
                v *= factor
            clipped += int(np.count_nonzero(np.greater(np.abs(v, out=absbuf[:m]), c, out=over[:m])))
            np.clip(v, -c, c, out=v)
            v *= scale
            np.rint(v, out=v)
            np.clip(v, -q, q, out=v)  # guards a 1-ulp excess at +-c only; never data clipping
            out = words[pos : pos + m]
            np.copyto(out, v, casting="unsafe")  # exact: integers below 2^52
            out *= n  # |n * q| <= max_weight * Q < 2^(bits-1) by the config check
            pos += m
    words[:HEADER_WORDS] = 0
    words[0] = n
    for i, (slot, value) in enumerate(zip(slots, (clipped, int(norm_clipped), int(capped)), strict=True)):
        words[1 + i * REPORT_SLOTS + slot] = value

    report = InputReport(
        weight=n,
        weight_capped=capped,
        l2_norm=norm,
        norm_clipped=bool(norm_clipped),
        clipped_values=clipped,
        num_values=manifest.size,
    )
    if capped or norm_clipped or clipped:
        log.warning(
            "secagg input: weight capped=%s (max_weight=%d), L2 norm %.4g clipped=%s "
            "(l2_clip=%g), %d of %d values clipped to +-%g",
            capped,
            cfg.max_weight,
            norm,
            norm_clipped,
            cfg.l2_clip,
            clipped,
            manifest.size,
            cfg.clip_range,
        )
    return words.view(cfg.uint_dtype), report


@dataclass(frozen=True)
class Aggregate:
    """Decoded cohort aggregate (what the server learns, and nothing more)."""

    weighted_sum: np.ndarray  # (D,) float64: sum_i n_i * x_i (clipped x, capped n)
    total_weight: int  # sum_i n_i
    clipped_values: int  # sum over platforms of clipped-value counts
    norm_clipped: int  # number of platforms whose L2 norm was clipped
    weight_capped: int  # number of platforms whose weight was capped
    sum_error_bound: float  # per-coordinate bound on |weighted_sum - exact|


def decode_sum(words: np.ndarray, cfg: SecAggConfig, num_inputs: int) -> Aggregate:
    """Read the unmasked word vector (mod 2^bits) as the signed cohort sum.

    Raises InputError, naming the check, when the sum is impossible for ``num_inputs``
    honest inputs: total weight outside [num_inputs, num_inputs * max_weight] (every input
    weighs at least 1), a clip report slot below 0 or totals above their maximum
    (``clipped-count``, ``clip-flags``), a coordinate whose weighted mean leaves [-c, c]
    (``clip-range``), or, with ``l2_clip`` > 0, a weighted sum outside total weight x the
    honest inputs' L2 ball (``l2-norm``). Together these accept exactly the sums some honest
    cohort could send. A malicious platform can still move the sum *within* them -- its body is
    not checked against its own weight (README, threat model: the remaining bound).
    """
    signed = words.view(cfg.int_dtype)
    total = int(signed[0])
    body_len = signed.size - HEADER_WORDS
    if not num_inputs <= total <= num_inputs * cfg.max_weight:
        raise InputError(
            f"check `total-weight`: aggregate total weight {total} is outside [{num_inputs}, "
            f"{num_inputs * cfg.max_weight}] for {num_inputs} inputs (every platform weighs 1..max_weight)"
        )
    reports = [[int(v) for v in row] for row in signed[1:HEADER_WORDS].reshape(len(REPORTS), REPORT_SLOTS)]
    low = [(name, slot, v) for name, row in zip(REPORTS, reports, strict=True) for slot, v in enumerate(row) if v < 0]
    if low:
        name, slot, value = low[0]
        check = "clipped-count" if name == "clipped-count" else "clip-flags"
        raise InputError(
            f"check `{check}`: {name} report slot {slot} holds {value} < 0 (a platform lowered a report "
            "it cannot see: another platform's)"
        )
    clipped, norm_clipped, capped = (sum(row) for row in reports)
    if clipped > num_inputs * body_len:
        raise InputError(f"check `clipped-count`: aggregate clipped count {clipped} is impossible")
    if not (norm_clipped <= num_inputs and capped <= num_inputs):
        raise InputError("check `clip-flags`: aggregate clip/cap flags are impossible")
    body = signed[HEADER_WORDS:]
    limit = total * cfg.q_max  # |sum_i n_i q_i| <= sum_i n_i * Q: the fused mean lies in [-c, c]
    outside = int(np.count_nonzero((body > limit) | (body < -limit)))
    if outside:
        raise InputError(
            f"check `clip-range`: {outside} coordinate(s) of the fused mean lie outside "
            f"[-{cfg.clip_range}, {cfg.clip_range}] (a platform masked an out-of-range input)"
        )
    weighted_sum = body.astype(np.float64)
    if cfg.l2_clip > 0:
        # Honest q_i = rint(scale * x_i) with ||x_i|| <= l2_clip: ||q_i|| <= scale * l2_clip + sqrt(D) / 2,
        # so ||sum_i n_i q_i|| <= W * that (+ float slack for the norm's own rounding).
        radius = total * (cfg.l2_clip * cfg.scale + math.sqrt(body_len) / 2) * (1 + body_len * 2.0**-52)
        norm = math.sqrt(float(np.dot(weighted_sum, weighted_sum)))
        if norm > radius:
            raise InputError(
                f"check `l2-norm`: the fused mean's L2 norm {norm / total / cfg.scale:.6g} exceeds "
                f"`l2_clip`={cfg.l2_clip} (+ half a grid step per value): no honest cohort sends this sum"
            )
    weighted_sum /= cfg.scale
    bound = total / (2 * cfg.scale) + 4 * cfg.clip_range * max(total, 1) * 2.0**-52
    return Aggregate(weighted_sum, total, clipped, norm_clipped, capped, bound)


def quantization_bound(cfg: SecAggConfig) -> float:
    """Per-coordinate bound on |weighted mean - exact weighted mean of clipped inputs|."""
    return 1.0 / (2 * cfg.scale) + 4 * cfg.clip_range * 2.0**-52


def weighted_mean(weighted_sum: np.ndarray, total_weight: float, cfg: SecAggConfig) -> tuple[np.ndarray, float]:
    """(sum_i n_i x_i / sum_i n_i, error bound) -- see the module docstring for the bound."""
    if total_weight <= 0:
        raise InputError("total weight is 0: no examples were aggregated, no mean exists")
    return weighted_sum / float(total_weight), quantization_bound(cfg)
