"""Opt-in ``torch.compile`` of the text encoder over a few fixed shapes (``train.compile``).

The trainer encodes items in length-sorted chunks of any row count and any width that is a
multiple of 8 (:func:`clients.trainer.length_chunks`). A compiled graph is specialised to its
input shapes (``dynamic=False``: static shapes give inductor its best kernels, and CUDA graphs,
``reduce-overhead``, need them anyway), so those chunks would compile again for almost every
batch. A compiled encoder therefore only ever sees

- chunks of exactly :data:`ROWS` items: the length-sorted items are cut every ``ROWS`` and the
  last chunk is topped up with copies of its first item, whose vectors are dropped (copies, not
  fully masked rows: an all-padding row can turn into NaN in SDPA attention, and a NaN poisons
  the backward pass even when the row's output is unused);
- widths rounded up to one of :data:`WIDTHS` (capped at the token table's width, fixed per
  process).

Masked padding leaves every real item's vector unchanged (within float rounding), so without
dropout results equal the eager trainer's; with dropout they differ by seed noise only (a
topped-up chunk draws its masks for more rows). :func:`clients.trainer.train` sets the mode from
``train.compile`` on its scorer, and inference on that scorer (``predict``, ``evaluate``,
``catalogue_vectors``) follows it; :func:`set_compile` sets it without training.

The graphs a process can compile are bounded: one per width bucket times the three ways the
trainer calls the encoder (training with gradient, training without gradient for history items,
evaluation); a second scorer of the same architecture reuses them (parameters are graph inputs).
:data:`RECOMPILE_LIMIT` lifts dynamo's per-function limit (8 by default, after which it silently
falls back to eager) to that bound, so every bucket compiles once and nothing past the bound can
compile forever.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch

from common.config import COMPILE_MODES
from common.modeling import Scorer

ROWS = 64  # items per compiled call (the eager trainer's chunks are at least this many, too)
WIDTHS = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # padded token widths a compiled call sees
RECOMPILE_LIMIT = 2 * 3 * (len(WIDTHS) + 1)  # x2: a different architecture in the same process
BACKEND = "inductor"  # tests swap in "aot_eager" (same graphs, no code generation: seconds on a CPU)

Encode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (U, T) ids, (U, T) mask -> (U, dim)

_modes: weakref.WeakKeyDictionary[Scorer, str] = weakref.WeakKeyDictionary()  # scorer -> its mode
_compiled: dict[tuple[str, str], Callable[..., torch.Tensor]] = {}  # (backend, mode) -> compiled function


def set_compile(scorer: Scorer, mode: str) -> None:
    """Run ``scorer``'s text encoder compiled in ``mode`` from now on (training and inference); "off" = eager.

    The scorer's modules are left as they are (no ``_orig_mod.`` wrapper), so its state dict
    and the adapter on the wire do not change.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"`train.compile` must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    _modes[scorer] = mode


def compile_mode(scorer: Scorer) -> str:
    return _modes.get(scorer, "off")


def _encode(scorer: Scorer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return scorer.item_vectors(input_ids, attention_mask)


def compiled_encoder(scorer: Scorer) -> Encode | None:
    """The compiled ``scorer.item_vectors`` (one compiled function per mode and process), or None when off."""
    mode = compile_mode(scorer)
    if mode == "off":
        return None
    key = (BACKEND, mode)
    if key not in _compiled:
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
        options = {"dynamic": False, "backend": BACKEND}
        if BACKEND == "inductor" and mode != "default":
            options["mode"] = mode
        _compiled[key] = torch.compile(_encode, **options)
    fn = _compiled[key]
    if mode != "default":  # both other modes use CUDA graphs on a GPU: a replay reuses the output memory
        return lambda ids, mask: fn(scorer, ids, mask).clone()
    return lambda ids, mask: fn(scorer, ids, mask)


def bucket_width(width: int, cap: int) -> int:
    """The smallest of :data:`WIDTHS` that holds ``width`` tokens, at most ``cap`` (the table's width)."""
    return min(next((w for w in WIDTHS if w >= width), width), cap)


def bucket_chunks(lengths: np.ndarray, cap: int) -> list[tuple[np.ndarray, int]]:
    """(positions into ``lengths``, padded width) per compiled call: length-sorted, :data:`ROWS` at a time.

    A chunk may hold fewer than ``ROWS`` positions (the last); :func:`pad_rows` tops it up.
    """
    if not len(lengths):
        return []
    order = np.argsort(lengths, kind="stable")
    return [(pos, bucket_width(int(lengths[pos].max()), cap)) for pos in np.split(order, range(ROWS, len(order), ROWS))]


def pad_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` topped up to :data:`ROWS` entries with copies of its first (their outputs are dropped)."""
    return np.concatenate([rows, np.full(ROWS - len(rows), rows[0], dtype=rows.dtype)]) if len(rows) < ROWS else rows
