"""Benchmark of local training and inference: the project's trainer against a plain eager peft loop.

    python -m simulations.bench.train                        # default MiniLM, embedded synthetic shops
    python -m simulations.bench.train --data DATASET --platform P1_action_scifi --batch 32
    python -m simulations.bench.train --quick                # CI-sized: tiny-random base, a few steps
    crossfed bench train [...] [--json] [--out DIR]          # the same, from the CLI

Every loop runs in this one process on the same model (one base, one LoRA config), the same
examples, the same batch size and the same token lengths, on whatever device is present
(``--device``). Loops are timed in turn, ``--repeats`` times each, interleaved, and the
best-of-repeats rate is reported, so machine noise hits all of them alike; the ratios are the
result, absolute rates depend on the machine. CPU seconds of the process are reported too: on
a CPU shared with other jobs, wall time mostly measures the neighbours, and samples per
CPU-second (best with ``--threads 1``, no spinning threads) is the fairer ratio. On CUDA each
loop first runs one untimed batch (kernels, allocator); a CPU has nothing to warm up.

Train loops (samples/s = training examples per second, one optimiser step per batch):

* ``eager``: the loop a peft tutorial writes for this model. Per step: tensors built from the
  batch's token rows on the host and copied, every distinct item of the batch (candidates and
  history items) encoded with gradients in one batch padded to its longest item, plain AdamW,
  ``loss.item()`` every step; bf16 autocast on CUDA. Its gradients are those of the project's
  trainer with ``train.history-grad = true`` (the trainer before issue 12).
* ``trainer history-grad``: :func:`clients.trainer.train` with ``train.history-grad = true``
  (exact same gradients as ``eager``: the mechanics alone).
* ``reference`` (with ``--reference-trainer OTHER/clients/trainer.py``): another checkout's
  trainer, e.g. main's before this change, with all distinct items under gradient.
* ``trainer``: :func:`clients.trainer.train` as configured by default (history items encoded
  without gradient).
* ``cpu recipe`` (``--cpu-recipe-examples N``, default 8192; 0 leaves it out): :func:`clients.trainer.train`
  with the ``cpu`` size preset of ``crossfed compare`` (:data:`simulations.compare.arms.SIZES`): LoRA in the top
  layer only on cached lower-layer states, the item cache, the encoder on every 4th step, its own batch
  size and text length, on its own sample of N train examples (a batch of the recipe is 1,024 rows). Its
  samples/s next to ``trainer`` (today's default) is what a platform without a GPU gains.
* ``trainer compiled`` (``--compile MODE``, default ``default``; ``off`` leaves it out): the same
  with ``train.compile = MODE`` (:mod:`clients.encoder_compile`: the encoder through
  ``torch.compile`` over fixed chunk shapes). Its first call, which compiles every shape the
  run meets, is timed apart and reported as ``first call (compile)``; the rate comes from the
  repeats after it, so compile time never mixes into samples/s.

Inference loops (samples/s = scored examples per second): ``eager`` encodes each batch's
distinct items under ``no_grad`` and scores the batch; ``trainer`` is :func:`clients.trainer.predict`
(referenced catalogue encoded once, length-bucketed, then scored from vectors); ``trainer compiled``
the same with the compiled encoder.

MFU = executed encoder FLOPs / (seconds x the device's peak); encoder FLOPs per item are
``2 x non-embedding parameters x padded tokens + 4 x layers x tokens^2 x hidden`` for a
forward, three times that with gradients. The peak is known for a few CUDA devices (bf16 dense)
or given with ``--peak-tflops``; on a CPU MFU is left out.
"""

from __future__ import annotations

import argparse
import math
import os
import platform as host_platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clients.encoder_compile import ROWS, bucket_chunks, set_compile
from clients.platform import NodeSetup, prepare
from clients.trainer import EncodedSplit, PlatformBatches, predict, referenced_items, train
from common.config import COMPILE_MODES, AppConfig
from common.modeling import PrivateParts, Scorer, build_scorer, pick_device
from simulations.bench.scale import emit

COMPILED = "trainer compiled"
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


@dataclass(frozen=True)
class BenchSpec:
    base: str = "default"
    data_dir: str = ""  # "" = the embedded synthetic shops
    platform: str = ""  # "" = the dataset's first platform
    batch_size: int = 128  # train.batch-size default
    eval_batch_size: int = 128  # eval.batch-size default
    train_examples: int = 512  # per timed train run
    infer_examples: int = 2048  # per timed inference run
    repeats: int = 2
    device: str = "auto"
    peak_tflops: float = 0.0  # 0 = look up the device; unknown -> no MFU
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    reference_trainer: str = ""  # another checkout's clients/trainer.py, timed as "reference" (e.g. main's)
    compile: str = "default"  # train.compile of the "trainer compiled" rows; "off" = no such rows
    cpu_recipe_examples: int = 8192  # train examples of the "cpu recipe" rows; 0 = no such rows


QUICK = BenchSpec(base="tiny-random", batch_size=16, eval_batch_size=32, train_examples=64, infer_examples=128,
                  repeats=1, cpu_recipe_examples=256)  # fmt: skip
CPU_RECIPE = "cpu recipe"


def cpu_recipe_config(cfg: AppConfig) -> AppConfig:
    """``cfg`` with the model, LoRA and training settings of ``crossfed compare --size cpu``."""
    from simulations.compare.arms import SIZES

    return cfg.replace(**{k: v for k, v in SIZES["cpu"].items() if k.startswith(("model.", "lora.", "train."))})


# ---------------------------------------------------------------- FLOPs


def encoder_flops_per_token(scorer: Scorer, width: int) -> float:
    """Forward FLOPs per token of one item padded to ``width`` tokens (matmuls + attention)."""
    config = scorer.encoder.get_base_model().config
    params = sum(p.numel() for n, p in scorer.encoder.named_parameters() if "embeddings" not in n)
    return 2.0 * params + 4.0 * config.num_hidden_layers * width * config.hidden_size


def _items_flops(scorer: Scorer, widths: np.ndarray, grad: bool) -> float:
    """Encoder FLOPs of items padded to ``widths`` (one entry per item), x3 with gradients."""
    flops = sum(encoder_flops_per_token(scorer, int(w)) * int(w) for w in widths)
    return flops * (3.0 if grad else 1.0)


def peak_flops(device: torch.device, override_tflops: float) -> float | None:
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


# ---------------------------------------------------------------- the eager reference


def _autocast(device: torch.device):
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _eager_logits(scorer: Scorer, part: PlatformBatches, data: EncodedSplit, device: torch.device) -> torch.Tensor:
    """Score one batch: its distinct items in one padded batch, per-step tensors from host lists."""
    table = part.table
    needed = referenced_items(data)
    width = int(table.lengths[needed].max())
    ids = torch.tensor(table.tokens[needed, :width].tolist(), device=device)  # (U, T)
    with _autocast(device):
        vectors = scorer.item_vectors(ids, (ids != table.pad_id).long()).float()
    rows = torch.tensor(needed.tolist(), device=device)
    residual = part.private.item_vectors(rows)
    vectors = vectors if residual is None else vectors + residual
    remap = {int(r): i for i, r in enumerate(needed)}
    local = [[[remap[int(r)] if r >= 0 else -1 for r in row] for row in hist] for hist in (data.liked, data.disliked)]
    cands = torch.tensor([remap[int(r)] for r in data.items], device=device)
    users = torch.tensor(data.users.tolist(), device=device)
    items = torch.tensor(data.items.tolist(), device=device)
    liked, disliked = (torch.tensor(x, device=device) for x in local)
    stats = torch.tensor(np.asarray(data.stats).tolist(), device=device)
    logits = scorer(vectors, cands, liked, disliked, part.private.user_vectors(users), stats).float()
    return logits[:, 0] + part.private.bias(items, users)  # like output only (the pick loss adds a few flops)


def eager_train(scorer: Scorer, part: PlatformBatches, batch_size: int, lr: float, device: torch.device) -> float:
    """One epoch of the plain loop; returns the mean loss (read every step, as such loops do)."""
    scorer.to(device).train()
    part.private.to(device).train()
    params = [p for p in scorer.parameters() if p.requires_grad] + list(part.private.parameters())
    opt = torch.optim.AdamW(params, lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    total = 0.0
    for start in range(0, len(part.data), batch_size):
        data = part.data.take(np.arange(start, min(start + batch_size, len(part.data))))
        loss = loss_fn(_eager_logits(scorer, part, data, device), torch.tensor(data.labels.tolist(), device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(data)
    return total / max(len(part.data), 1)


@torch.no_grad()
def eager_predict(scorer: Scorer, part: PlatformBatches, data: EncodedSplit, batch_size: int,
                  device: torch.device) -> np.ndarray:  # fmt: skip
    scorer.to(device).eval()
    part.private.to(device).eval()
    out = [torch.sigmoid(_eager_logits(scorer, part, data.take(np.arange(s, min(s + batch_size, len(data)))), device))
           .cpu().numpy() for s in range(0, len(data), batch_size)]  # fmt: skip
    scorer.train()
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------- FLOPs each loop executes


def _batch_widths(part: PlatformBatches, data: EncodedSplit, batch_size: int, history_grad: bool | None,
                  bucketed: bool, compiled: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Padded widths of the items each step encodes: (with gradient, without gradient); ``compiled``:
    one entry per encoded row of the compiled encoder's fixed chunks (padding rows included)."""
    from clients.trainer import PAD_MULTIPLE, length_chunks

    lengths = part.table.lengths
    grad_w: list[np.ndarray] = []
    free_w: list[np.ndarray] = []

    def widths(rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros(0, np.int64)
        if compiled:
            return _compiled_widths(lengths[rows], part.table.tokens.shape[1])
        if not bucketed:
            return np.full(len(rows), lengths[rows].max())
        out = np.empty(len(rows), np.int64)
        for pos in length_chunks(lengths[rows]):
            out[pos] = -(-lengths[rows[pos]].max() // PAD_MULTIPLE) * PAD_MULTIPLE
        return out

    for start in range(0, len(data), batch_size):
        chunk = data.take(np.arange(start, min(start + batch_size, len(data))))
        needed = referenced_items(chunk)
        if history_grad is None:  # inference
            free_w.append(widths(needed))
        elif history_grad:
            grad_w.append(widths(needed))
        else:
            cands = np.unique(chunk.items)
            grad_w.append(widths(cands))
            free_w.append(widths(np.setdiff1d(needed, cands)))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(grad_w), cat(free_w)


# ---------------------------------------------------------------- running


@dataclass
class Row:
    phase: str  # "train" | "inference"
    loop: str
    samples: int
    seconds: float
    cpu_seconds: float  # CPU time of this process (all threads) during the best run
    flops: float

    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan

    def cpu_rate(self) -> float:
        return self.samples / self.cpu_seconds if self.cpu_seconds > 0 else math.nan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def load_part(spec: BenchSpec, cfg: AppConfig, tokenizer: Any) -> tuple[PlatformBatches, EncodedSplit]:
    """The platform's train rows (for training) and all its rows (train + valid + test, for inference)."""
    from clients.platform import platform_names

    name = spec.platform or platform_names(spec.data_dir, cfg.seed)[0]
    prepared = prepare(NodeSetup(name, spec.data_dir, spec.device), cfg.data, cfg.eval.max_rank_users, cfg.seed,
                       tokenizer, cfg.model.max_length)  # fmt: skip
    rng = np.random.default_rng(spec.seed)
    n = min(spec.train_examples, len(prepared.train))
    train_rows = prepared.train.take(np.sort(rng.choice(len(prepared.train), n, replace=False)))
    pool = [prepared.train, prepared.valid, prepared.test]
    infer = EncodedSplit(*(np.concatenate([getattr(p, f) for p in pool]) if f in ("users", "items", "labels")
                           else _stack([getattr(p, f) for p in pool]) for f in ("users", "items", "liked", "disliked",
                                                                                 "labels")))  # fmt: skip
    infer = infer.take(np.arange(min(spec.infer_examples, len(infer))))
    private = PrivateParts(len(prepared.table), len(prepared.users), cfg.model.dim, cfg.model.private)
    return PlatformBatches(prepared.table, train_rows, private), infer


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate (N_i, L_i) history matrices, padding narrower ones with -1."""
    width = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in arrays])


def run(spec: BenchSpec, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every loop; returns the JSON payload (rows, ratios, hardware)."""
    cfg = AppConfig().replace(**{"model.base": spec.base, "data.dir": spec.data_dir, "seed": spec.seed})
    device = pick_device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    scorer, tokenizer = build_scorer(cfg.model, cfg.lora, spec.seed)
    scorer.to(device)
    part, infer = load_part(spec, cfg, tokenizer)
    train_cfg = cfg.train
    exact = replace(train_cfg, batch_size=spec.batch_size, history_grad=True)
    fast = replace(train_cfg, batch_size=spec.batch_size, history_grad=False)
    n_train, n_infer = len(part.data), len(infer)
    flops = {
        ("train", "eager"): _items_flops(scorer, _batch_widths(part, part.data, spec.batch_size, True, False)[0], True),
        ("train", "trainer history-grad"): _items_flops(
            scorer, _batch_widths(part, part.data, spec.batch_size, True, True)[0], True),
        ("inference", "eager"): _items_flops(
            scorer, _batch_widths(part, infer, spec.eval_batch_size, None, False)[1], False),
    }  # fmt: skip
    g, f = _batch_widths(part, part.data, spec.batch_size, False, True)
    flops[("train", "trainer")] = _items_flops(scorer, g, True) + _items_flops(scorer, f, False)
    used = referenced_items(infer)
    lengths = part.table.lengths[used[np.argsort(part.table.lengths[used], kind="stable")]]
    flops[("inference", "trainer")] = sum(
        _items_flops(scorer, _batch_widths_flat(lengths[s : s + spec.eval_batch_size]), False)
        for s in range(0, len(lengths), spec.eval_batch_size)
    )

    def infer_with(mode: str) -> Callable[[], Any]:  # predict() runs the scorer's encoder as last set
        return lambda: (set_compile(scorer, mode), predict(scorer, part, infer, spec.eval_batch_size, device))

    loops: dict[tuple[str, str], Callable[[], Any]] = {
        ("train", "eager"): lambda: eager_train(scorer, part, spec.batch_size, train_cfg.lr, device),
        ("train", "trainer history-grad"): lambda: train(scorer, [part], exact, device, spec.seed),
        ("train", "trainer"): lambda: train(scorer, [part], fast, device, spec.seed),
        ("inference", "eager"): lambda: eager_predict(scorer, part, infer, spec.eval_batch_size, device),
        ("inference", "trainer"): infer_with("off"),
    }
    if spec.compile != "off":
        compiled = replace(fast, compile=spec.compile)
        loops[("train", COMPILED)] = lambda: train(scorer, [part], compiled, device, spec.seed)
        loops[("inference", COMPILED)] = infer_with(spec.compile)
        g, f = _batch_widths(part, part.data, spec.batch_size, False, True, compiled=True)
        flops[("train", COMPILED)] = _items_flops(scorer, g, True) + _items_flops(scorer, f, False)
        cap = part.table.tokens.shape[1]
        flops[("inference", COMPILED)] = sum(
            _items_flops(scorer, _compiled_widths(lengths[s : s + spec.eval_batch_size], cap), False)
            for s in range(0, len(lengths), spec.eval_batch_size)
        )
    recipe_samples: dict[str, int] = {}
    if spec.cpu_recipe_examples:
        rcfg = cpu_recipe_config(cfg)
        recipe, _ = build_scorer(rcfg.model, rcfg.lora, spec.seed)
        rpart, rinfer = load_part(replace(spec, train_examples=spec.cpu_recipe_examples), rcfg, tokenizer)
        loops[("train", CPU_RECIPE)] = lambda: train(recipe, [rpart], rcfg.train, device, spec.seed)
        loops[("inference", CPU_RECIPE)] = lambda: predict(recipe, rpart, rinfer, rcfg.eval.batch_size, device)
        flops[("train", CPU_RECIPE)] = flops[("inference", CPU_RECIPE)] = math.nan  # not the full encoder's count
        recipe_samples = {"train": len(rpart.data), "inference": len(rinfer)}
    if spec.reference_trainer:  # same gradients as "eager"/"history-grad": all distinct items with gradient
        ref = load_reference_trainer(spec.reference_trainer)
        loops[("train", "reference")] = lambda: ref.train(scorer, [part], exact, device, spec.seed)
        loops[("inference", "reference")] = lambda: ref.predict(scorer, part, infer, spec.eval_batch_size, device)
        flops[("train", "reference")] = flops[("train", "eager")]
        flops[("inference", "reference")] = flops[("inference", "trainer")]
    samples = {"train": n_train, "inference": n_infer}

    def count(key: tuple[str, str]) -> int:
        return recipe_samples[key[0]] if key[1] == CPU_RECIPE else samples[key[0]]

    best: dict[tuple[str, str], tuple[float, float]] = {}
    for key, fn in loops.items() if device.type == "cuda" else ():  # warm-up: allocator, kernels, token table
        if key[1] != COMPILED:
            progress(f"warm-up {key[0]} / {key[1]}")
            _warm(key, fn, part, spec)
    first_call: dict[tuple[str, str], float] = {}  # the compiled loops' first full call: every shape compiles
    for key, fn in loops.items():
        if key[1] == COMPILED:
            progress(f"first call (compile) {key[0]} / {key[1]} ({spec.compile})")
            first_call[key] = _timed(fn, device)[0]
    for rep in range(spec.repeats):
        for key, fn in loops.items():
            seconds, cpu_seconds = _timed(fn, device)
            best[key] = min(best.get(key, (math.inf, math.inf)), (seconds, cpu_seconds))
            rate = count(key) / seconds
            progress(f"repeat {rep + 1}/{spec.repeats} {key[0]:<9} {key[1]:<21} {rate:9.1f} samples/s")
    # the compiled encoder's numerics (inductor here, not the tests' aot_eager): same weights, both ways
    compiled_diff = None
    if spec.compile != "off":
        eager_p, compiled_p = (infer_with(mode)()[1] for mode in ("off", spec.compile))
        compiled_diff = float(np.max(np.abs(eager_p - compiled_p))) if len(eager_p) else 0.0
    peak = peak_flops(device, spec.peak_tflops)
    rows = [Row(phase, loop, count((phase, loop)), *best[(phase, loop)], flops[(phase, loop)]) for phase, loop in loops]
    rate = {(r.phase, r.loop): r.rate() for r in rows}
    cpu_rate = {(r.phase, r.loop): r.cpu_rate() for r in rows}
    return {
        "spec": spec.__dict__,
        "hardware": hardware(device),
        "examples": {"train": n_train, "inference": n_infer},
        "mean_item_tokens": float(part.table.lengths[referenced_items(part.data)].mean()),
        "rows": [
            {
                "phase": r.phase,
                "loop": r.loop,
                "samples": r.samples,
                "seconds": r.seconds,
                "cpu_seconds": r.cpu_seconds,
                "samples_per_s": r.rate(),
                "samples_per_cpu_s": r.cpu_rate(),
                "tflops_per_s": r.flops / r.seconds / 1e12 if math.isfinite(r.flops) else None,
                "mfu": (r.flops / r.seconds / peak) if peak and math.isfinite(r.flops) else None,
                "first_call_s": first_call.get((r.phase, r.loop)),  # compiled loops: compile + one run
            }  # fmt: skip
            for r in rows
        ],
        "ratios": ratios(rate),
        "cpu_time_ratios": ratios(cpu_rate),  # on a shared CPU, wall time measures the neighbours too
        "compiled_max_abs_prob_diff": compiled_diff,  # max |p(eager) - p(compiled)| over the inference rows
    }


def ratios(rate: dict[tuple[str, str], float]) -> dict[str, float]:
    """Each trainer loop's samples/s over the eager loop's (and over the reference's, when timed);
    the compiled trainer's also over the same trainer run eagerly."""
    out = {}
    for base in ("eager", "reference"):
        for phase, loop in rate:
            if loop not in ("eager", "reference") and (phase, base) in rate:
                out[f"{phase} {loop} / {base}"] = rate[(phase, loop)] / rate[(phase, base)]
    for phase, loop in rate:
        if loop in (COMPILED, CPU_RECIPE) and (phase, "trainer") in rate:
            out[f"{phase} {loop} / trainer"] = rate[(phase, loop)] / rate[(phase, "trainer")]
    return out


def load_reference_trainer(path: str) -> Any:
    """Import another checkout's ``clients/trainer.py`` under its own module name (this checkout's ``common``)."""
    import importlib.util

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"`--reference-trainer` {path}: no such file")
    module_spec = importlib.util.spec_from_file_location("reference_trainer", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["reference_trainer"] = module  # dataclasses look their module up
    module_spec.loader.exec_module(module)
    return module


def _compiled_widths(lengths: np.ndarray, cap: int) -> np.ndarray:
    """Widths of every row the compiled encoder runs for items of these lengths (``ROWS`` per chunk)."""
    chunks = bucket_chunks(lengths, cap)
    return np.repeat([width for _, width in chunks], ROWS).astype(np.int64)


def _batch_widths_flat(lengths: np.ndarray) -> np.ndarray:
    """Widths of one length-sorted inference batch as :func:`clients.trainer.text_vectors` pads it."""
    from clients.trainer import PAD_MULTIPLE, length_chunks

    out = np.empty(len(lengths), np.int64)
    for pos in length_chunks(lengths):
        out[pos] = -(-lengths[pos].max() // PAD_MULTIPLE) * PAD_MULTIPLE
    return out


def _warm(key: tuple[str, str], fn: Callable[[], Any], part: PlatformBatches, spec: BenchSpec) -> None:
    """Run a loop once on one batch (weights change; the timing needs none of them)."""
    full = part.data
    part.data = full.take(np.arange(min(len(full), spec.batch_size)))
    try:
        fn()
    finally:
        part.data = full


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "python": sys.version.split()[0],
        "cpu": host_platform.processor() or host_platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    return info


def format_table(payload: dict[str, Any]) -> str:
    lines = [
        f"device {payload['hardware']['device']} ({payload['hardware'].get('gpu', payload['hardware']['cpu'])}), "
        f"base {payload['spec']['base']}, batch {payload['spec']['batch_size']} (eval "
        f"{payload['spec']['eval_batch_size']}), mean item tokens {payload['mean_item_tokens']:.1f}",
        f"{'phase':<10} {'loop':<22} {'samples':>8} {'seconds':>8} {'CPU s':>8} {'samples/s':>10} "
        f"{'/CPU s':>8} {'TFLOP/s':>8} {'MFU':>6}",
    ]
    for r in payload["rows"]:
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
        tflops = f"{r['tflops_per_s']:>8.3f}" if r["tflops_per_s"] is not None else f"{'n/a':>8}"
        lines.append(f"{r['phase']:<10} {r['loop']:<22} {r['samples']:>8} {r['seconds']:>8.2f} "
                     f"{r['cpu_seconds']:>8.2f} {r['samples_per_s']:>10.1f} {r['samples_per_cpu_s']:>8.1f} "
                     f"{tflops} {mfu:>6}")  # fmt: skip
    lines += [f"{r['phase']:<10} {r['loop']:<22} first call (compile + one run) {r['first_call_s']:.2f} s"
              for r in payload["rows"] if r.get("first_call_s") is not None]  # fmt: skip
    if payload.get("compiled_max_abs_prob_diff") is not None:
        lines.append(f"compiled vs eager inference: max |probability difference| "
                     f"{payload['compiled_max_abs_prob_diff']:.2e}")  # fmt: skip
    cpu = payload["cpu_time_ratios"]
    lines += [f"{name}: {value:.2f}x samples/s, {cpu[name]:.2f}x samples/CPU-s" for name, value in
              payload["ratios"].items()]  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[BenchSpec, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="crossfed bench train", description=__doc__.split("\n\n")[0])
    d = BenchSpec()
    parser.add_argument("--quick", action="store_true", help="CI size: tiny-random base, a few batches")
    parser.add_argument("--base", help=f"base model (default {d.base!r}; 'tiny-random' or a local HF path)")
    parser.add_argument("--data", help="DATASET folder (default: the embedded synthetic shops)")
    parser.add_argument("--platform", help="platform to train on (default: the first)")
    parser.add_argument("--batch", type=int, help=f"train batch size (default {d.batch_size})")
    parser.add_argument("--eval-batch", type=int, help=f"inference batch size (default {d.eval_batch_size})")
    parser.add_argument("--train-examples", type=int, help=f"examples per timed train run ({d.train_examples})")
    parser.add_argument("--infer-examples", type=int, help=f"examples per timed inference run ({d.infer_examples})")
    parser.add_argument("--repeats", type=int, help=f"timed runs per loop, best kept ({d.repeats})")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known CUDA devices)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--reference-trainer", help="another checkout's clients/trainer.py, timed as 'reference'")
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help=f"train.compile of the '{COMPILED}' rows (default {d.compile!r}; 'off': no such rows)",
    )
    parser.add_argument(
        "--cpu-recipe-examples",
        type=int,
        help=f"train examples of the '{CPU_RECIPE}' rows (default {d.cpu_recipe_examples}; 0: none)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON payload instead of the table")
    parser.add_argument("--out", type=Path, help="also write bench_train.json and bench_train.txt here")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else d
    for flag, name in (("base", "base"), ("data", "data_dir"), ("platform", "platform"), ("batch", "batch_size"),
                       ("eval_batch", "eval_batch_size"), ("train_examples", "train_examples"),
                       ("infer_examples", "infer_examples"), ("repeats", "repeats"), ("device", "device"),
                       ("peak_tflops", "peak_tflops"), ("seed", "seed"), ("threads", "threads"),
                       ("reference_trainer", "reference_trainer"), ("compile", "compile"),
                       ("cpu_recipe_examples", "cpu_recipe_examples")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            spec = replace(spec, **{name: str(Path(value).resolve()) if flag == "data" else value})
    for name in ("batch_size", "eval_batch_size", "train_examples", "infer_examples", "repeats"):
        if getattr(spec, name) < 1:
            flag = name.replace("_size", "").replace("_", "-")
            parser.error(f"`--{flag}` must be positive, got {getattr(spec, name)}")
    return spec, args


def main(argv: Sequence[str] | None = None) -> int:
    spec, args = parse_args(argv)
    progress = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    payload = run(spec, progress)
    payload["command"] = " ".join(["crossfed bench train", *(argv if argv is not None else sys.argv[1:])])
    payload["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    emit(payload, format_table(payload), args.json, args.out, "bench_train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
