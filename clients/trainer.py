"""Local training and evaluation on one platform's splits (or several, for the pooled bound).

A short loop in the nanoGPT spirit. Everything a step needs is built once per process:
the catalogue's item texts as one padded token matrix (:class:`ItemTable`) and every
example as integer rows (:class:`EncodedSplit`: user, candidate, liked and disliked history
items). A step gathers the batch's distinct items, encodes each once with the LoRA tower,
and scores the batch from those vectors; index work is numpy on the host, so the step never
waits on the device. Evaluation encodes the whole catalogue once and scores every row from it.
The optimiser is rebuilt every round because the fused adapter replaces the weights.

Where the time goes, and what this loop does about it (``crossfed bench train`` measures it):

- A batch of 128 examples with 10-item histories references ~400-1,700 distinct items, but
  only its ~128 candidates need gradients through the encoder: with ``train.history-grad =
  false`` (the default) the history-only items are encoded under ``no_grad`` (a forward is a
  third of forward + backward, and keeps no activations). Their private residuals, the ``user``
  layer and the head still train; only the encoder's gradient through items that are not a
  candidate of the batch is cut (a candidate that is also in a history keeps both paths).
- The distinct items are sorted by length and encoded in chunks of similar width, padded to a
  multiple of 8 (a few fixed shapes; attention and matmuls run on padding too otherwise).
- The token table lives on the device once per process (no per-step host->device copy of
  tokens); CUDA steps use fused AdamW, bf16 autocast and PyTorch SDPA attention (the default
  ``attn_implementation`` of BERT-family encoders in transformers 5); the loss is summed on
  the device, synchronised once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from clients.encoder_compile import bucket_chunks, compiled_encoder, pad_rows, set_compile
from common.config import NEW_USER_KS, TrainSpec
from common.data import Item
from common.item_stats import NUM_ITEM_STATS, ItemStats
from common.metrics import classification_metrics, ranking_metrics
from common.modeling import PrivateParts, Scorer
from common.splits import Example, RankingCase
from common.text import item_text

CHARS_PER_TOKEN_CAP = 16  # texts are cut to max_length * this many characters before tokenising (a 1 MB title)
PAD_MULTIPLE = 8  # token widths are rounded up to this: few distinct shapes, tensor-core friendly
CHUNK_ITEMS = 64  # items are encoded in length-sorted chunks of at least this many (less padding)
LOWER_CACHE_SCORERS = 2  # lower-layer states kept per catalogue: one per scorer (a comparison switches arms)


@dataclass
class ItemTable:
    """A platform's catalogue: item id -> row, and every item's text as token ids (padded, truncated)."""

    ids: list[str]
    index: dict[str, int]
    tokens: np.ndarray  # (I, T) int64, padded with the tokenizer's pad id
    lengths: np.ndarray  # (I,) tokens per item (>= 2: [CLS] ... [SEP])
    pad_id: int
    on_device: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)  # device -> tokens
    # (scorer key, device) -> (I, T, H) token states after a scorer's frozen lower layers (``lora.top-layers``)
    lower: OrderedDict[tuple[str, str], torch.Tensor] = field(default_factory=OrderedDict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def lower_states(self, scorer: Scorer, device: torch.device) -> torch.Tensor:
        """(I, T, H) every item's token states below the scorer's LoRA layers: computed once per process
        (they never change), for the last :data:`LOWER_CACHE_SCORERS` scorers used on this catalogue."""
        key = (scorer.cache_key, str(device))
        if key not in self.lower:
            tokens = self.device_tokens(device)
            states = None
            for pos in length_chunks(self.lengths) if len(self) else []:
                width = min(_width(self.lengths[pos]), tokens.shape[1])
                ids = tokens[_to(pos, device), :width]
                with _autocast(device):
                    out = scorer.lower_states(ids, (ids != self.pad_id).long()).float()
                if states is None:
                    states = torch.zeros((len(self), tokens.shape[1], out.shape[-1]), device=device)
                states[_to(pos, device), :width] = out
            self.lower[key] = states if states is not None else torch.zeros((0, tokens.shape[1], 1), device=device)
            while len(self.lower) > LOWER_CACHE_SCORERS:
                self.lower.popitem(last=False)
        self.lower.move_to_end(key)
        return self.lower[key]

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.index[i] for i in item_ids), dtype=np.int64, count=len(item_ids))

    def device_tokens(self, device: torch.device) -> torch.Tensor:
        """The token matrix on ``device``, copied there once per process (it never changes)."""
        key = str(device)
        if key not in self.on_device:
            self.on_device[key] = _to(self.tokens, device)
        return self.on_device[key]


def encode_items(tokenizer: PreTrainedTokenizerBase, items: Mapping[str, Item], max_length: int) -> ItemTable:
    """Tokenise every item's text once; long, empty and non-ASCII texts all fit ``max_length``."""
    ids = sorted(items)
    texts = [item_text(items[i])[: max_length * CHARS_PER_TOKEN_CAP] for i in ids]
    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if ids else []
    pad_id = int(tokenizer.pad_token_id)
    width = max((len(row) for row in enc), default=1)
    tokens = np.full((len(ids), width), pad_id, dtype=np.int64)
    for i, row in enumerate(enc):
        tokens[i, : len(row)] = row
    lengths = np.array([len(row) for row in enc], dtype=np.int64)
    return ItemTable(ids, {item: i for i, item in enumerate(ids)}, tokens, lengths, pad_id)


@dataclass
class EncodedSplit:
    """Examples as integer rows into the item table and the platform's user list."""

    users: np.ndarray  # (N,) int64
    items: np.ndarray  # (N,) int64 candidate rows
    liked: np.ndarray  # (N, L) int64 history rows, most recent first, -1 = padding
    disliked: np.ndarray  # (N, L)
    labels: np.ndarray  # (N,) float32 in {0, 1}: liked
    rated: np.ndarray | None = None  # (N,) float32 in {0, 1}: a real interaction (0 = sampled unrated item)
    implicit: bool = False  # implicit feedback: liked == interacted, so unrated rows are dislikes too
    stats: np.ndarray | None = None  # (N, NUM_ITEM_STATS) float32 candidate statistics (zeros: none known)

    def __post_init__(self) -> None:
        if self.rated is None:
            self.rated = np.ones(len(self.labels), dtype=np.float32)
        if self.stats is None:
            self.stats = np.zeros((len(self.labels), NUM_ITEM_STATS), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> EncodedSplit:
        assert self.rated is not None and self.stats is not None
        return EncodedSplit(
            self.users[rows], self.items[rows], self.liked[rows], self.disliked[rows], self.labels[rows],
            self.rated[rows], self.implicit, self.stats[rows],
        )  # fmt: skip

    def like_rows(self, pick: bool) -> np.ndarray:
        """(N,) 1 where the like loss applies: every row, except unrated rows of explicit data when
        a pick output learns those (nobody knows whether the user would have liked them)."""
        assert self.rated is not None
        return self.rated if pick and not self.implicit else np.ones_like(self.rated)


def _history(table: ItemTable, item_ids: Sequence[tuple[str, ...]], width: int) -> np.ndarray:
    out = np.full((len(item_ids), max(width, 1)), -1, dtype=np.int64)
    for r, ids in enumerate(item_ids):
        out[r, : len(ids)] = table.rows(ids)
    return out


def encode_rows(
    table: ItemTable,
    users: Mapping[str, int],
    histories: Sequence[Example | RankingCase],
    candidates: Sequence[str],
    labels: Sequence[int],
    history_len: int,
    rated: Sequence[bool] | None = None,
    implicit: bool = False,
) -> EncodedSplit:
    """Rows for (history, candidate, label) triples; histories are padded to at least ``history_len``."""
    liked = [h.liked for h in histories]
    disliked = [h.disliked for h in histories]
    width = max([history_len, *(len(x) for x in liked), *(len(x) for x in disliked)]) if histories else history_len
    return EncodedSplit(
        users=np.fromiter((users[h.user_id] for h in histories), dtype=np.int64, count=len(histories)),
        items=table.rows(candidates),
        liked=_history(table, liked, width),
        disliked=_history(table, disliked, width),
        labels=np.asarray(labels, dtype=np.float32),
        rated=None if rated is None else np.asarray(rated, dtype=np.float32),
        implicit=implicit,
    )


def with_item_stats(stats: ItemStats, data: EncodedSplit, train: bool = False) -> EncodedSplit:
    """``data`` with its candidates' statistics set; ``train``: each row without its own interaction."""
    own = (data.labels, data.rated) if train else (None, None)
    return dataclasses.replace(data, stats=stats.features(data.items, *own))


def encode_examples(
    table: ItemTable, users: Mapping[str, int], examples: Sequence[Example], history_len: int, implicit: bool = False
) -> EncodedSplit:
    return encode_rows(table, users, examples, [ex.item_id for ex in examples], [ex.label for ex in examples],
                       history_len, [ex.rated for ex in examples], implicit)  # fmt: skip


def encode_ranking(
    table: ItemTable, users: Mapping[str, int], cases: Sequence[RankingCase], history_len: int
) -> tuple[EncodedSplit, int]:
    """All candidates of all cases, case-major: row c*(1+N) is case c's positive."""
    width = 1 + (len(cases[0].negatives) if cases else 0)
    histories: list[RankingCase] = []
    candidates: list[str] = []
    labels: list[int] = []
    for case in cases:
        if 1 + len(case.negatives) != width:
            raise ValueError("every ranking case must have the same number of negatives")
        for j, cand in enumerate((case.positive, *case.negatives)):
            histories.append(case)
            candidates.append(cand)
            labels.append(int(j == 0))
    return encode_rows(table, users, histories, candidates, labels, 1), width


@dataclass
class PlatformBatches:
    """What training needs of one platform: its catalogue, its examples and its private parameters."""

    table: ItemTable
    data: EncodedSplit
    private: PrivateParts
    # ``train.item-cache``: (I, H) pooled text state of every catalogue row the local training uses, filled
    # when it starts and refreshed whenever a step encodes an item again (None: every step encodes)
    pooled: torch.Tensor | None = None


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _width(lengths: np.ndarray) -> int:
    """Padded token width of items with these lengths: the longest, rounded up to ``PAD_MULTIPLE``."""
    return -(-int(lengths.max()) // PAD_MULTIPLE) * PAD_MULTIPLE


def length_chunks(lengths: np.ndarray, min_items: int = CHUNK_ITEMS) -> list[np.ndarray]:
    """Positions into ``lengths``, sorted by length and cut into chunks of >= ``min_items`` whose width changes.

    Encoding a chunk costs rows x padded width, so cutting where the width steps up saves the
    padding of the short items without making chunks too small for the device to fill.
    """
    order = np.argsort(lengths, kind="stable")
    widths = -(-lengths[order] // PAD_MULTIPLE)
    chunks, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end - start >= min_items and widths[end] != widths[end - 1]):
            chunks.append(order[start:end])
            start = end
    return chunks


def text_vectors(scorer: Scorer, table: ItemTable, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """(len(rows), dim) tower vectors of these catalogue rows' texts, in ``rows`` order (length-bucketed).

    With ``train.compile`` on (:mod:`clients.encoder_compile`) the chunks are the compiled encoder's
    fixed shapes instead; with ``lora.top-layers`` only the top layers run, on cached lower states.
    """
    compiled = compiled_encoder(scorer) if not scorer.top_layers else None
    if compiled is None:
        return scorer.tower(text_pooled(scorer, table, rows, device))
    tokens = table.device_tokens(device)
    plan = [(pos, width, pad_rows(rows[pos])) for pos, width in bucket_chunks(table.lengths[rows], tokens.shape[1])]
    outs = []
    for pos, width, chunk in plan:
        ids = tokens[_to(chunk, device), : min(width, tokens.shape[1])]  # (U, T)
        with _autocast(device):
            outs.append(compiled(ids, (ids != table.pad_id).long())[: len(pos)].float())
    return _in_order(outs, [pos for pos, _, _ in plan], scorer.tower.out_features, device)


def text_pooled(scorer: Scorer, table: ItemTable, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """(len(rows), H) pooled encoder states of these rows' texts (before the tower), in ``rows`` order.

    Items are encoded in length-sorted chunks; with ``lora.top-layers`` only the top layers run, on the
    catalogue's cached lower-layer states (:meth:`ItemTable.lower_states`).
    """
    tokens = table.device_tokens(device)
    lower = table.lower_states(scorer, device) if scorer.top_layers and len(rows) else None
    chunks = length_chunks(table.lengths[rows]) if len(rows) else []
    outs = []
    for pos in chunks:
        chunk = _to(rows[pos], device)
        width = min(_width(table.lengths[rows[pos]]), tokens.shape[1])
        ids = tokens[chunk, :width]  # (U, T)
        mask = (ids != table.pad_id).long()
        with _autocast(device):
            out = scorer.pooled(ids, mask) if lower is None else scorer.pooled_from_lower(lower[chunk, :width], mask)
        outs.append(out.float())
    return _in_order(outs, chunks, scorer.tower.in_features, device)


def _in_order(
    outs: list[torch.Tensor], positions: Sequence[np.ndarray], width: int, device: torch.device
) -> torch.Tensor:
    """Chunk outputs (chunk k holds the rows at ``positions[k]``) back in row order."""
    if not outs:
        return torch.zeros((0, width), device=device)
    order = np.concatenate(positions)  # outs' rows are rows[order]
    vectors = torch.cat(outs) if len(outs) > 1 else outs[0]
    return vectors if np.all(order[1:] > order[:-1]) else vectors[_to(np.argsort(order), device)]


def item_vectors(
    scorer: Scorer, part: PlatformBatches, rows: np.ndarray, device: torch.device, grad_rows: int | None = None,
    encode: bool = True,
) -> torch.Tensor:  # fmt: skip
    """(len(rows), dim) vectors of these catalogue rows: their text through the shared tower + private residual.

    With ``grad_rows`` = k, only the first k rows' texts carry the encoder's gradient; the rest are
    encoded under ``no_grad``, or read from ``part.pooled`` when training keeps an item cache (their
    private residuals still train). With the cache and ``encode=False`` no row is encoded: all are read
    from it (a step without the encoder, ``train.encoder-every``); the tower above it still trains.
    """
    k = len(rows) if grad_rows is None else grad_rows
    if part.pooled is not None:
        pooled = part.pooled[_to(rows, device)]
        if encode:
            fresh = text_pooled(scorer, part.table, rows[:k], device)
            part.pooled[_to(rows[:k], device)] = fresh.detach()  # the cache follows the encoder as it trains
            pooled = torch.cat([fresh, pooled[k:]])
        vectors = scorer.tower(pooled)
    else:
        vectors = text_vectors(scorer, part.table, rows[:k], device)
        if k < len(rows):
            with torch.no_grad():
                history = text_vectors(scorer, part.table, rows[k:], device)
            vectors = torch.cat([vectors, history])  # outside no_grad: the candidates keep their graph
    residual = part.private.item_vectors(_to(rows, device))
    return vectors if residual is None else vectors + residual


def _logits(
    scorer: Scorer, part: PlatformBatches, vectors: torch.Tensor, rows: Sequence[np.ndarray], data: EncodedSplit,
    device: torch.device, cold: np.ndarray | None = None, new_users: np.ndarray | None = None,
) -> torch.Tensor:  # fmt: skip
    """(B, K) logits: the shared model over ``vectors`` (``rows`` = candidate, liked, disliked rows into
    them) plus the private parts; column 0 like, column 1 pick (when the model has it).

    ``cold`` (B,) bool marks rows whose candidate is scored as a new item: without its private residual
    and biases, with the statistics of an item never seen in training (zeros). ``new_users`` (B,) bool
    marks rows whose user is scored as a new user: without the user's private vector and bias (the
    history cut is the caller's: :func:`as_new_users`).
    """
    users, items = _to(data.users, device), _to(data.items, device)
    cands, liked, disliked = (_to(r, device) for r in rows)
    assert data.stats is not None
    stats = _to(data.stats, device)
    residual_u = part.private.user_vectors(users)
    hide: torch.Tensor | float = 0.0  # 1 on new-user rows: what the user's private parts add is taken out
    if new_users is not None and new_users.any():
        hide = _to(new_users.astype(np.float32), device)
        residual_u = None if residual_u is None else residual_u * (1.0 - hide)[:, None]
    user, counts = scorer.users(vectors, liked, disliked, residual_u)
    item = vectors[cands]
    drop: torch.Tensor | float = 0.0  # 1 on cold rows: what the candidate's private parts add is taken out
    if cold is not None and cold.any():
        drop = _to(cold.astype(np.float32), device)
        residual = part.private.item_vectors(items)
        item = item if residual is None else item - drop[:, None] * residual  # the text vector alone
        stats = stats * (1.0 - drop)[:, None]
    logits = scorer.score(user, counts, item, stats if scorer.item_stats else None).float()
    bias, item_bias = part.private.bias(items, users), part.private.bias(items, None)
    like = logits[:, 0] + bias - drop * item_bias
    if new_users is not None:  # the user bias alone: with users minus without
        like = like - hide * (bias - item_bias)
    if logits.shape[1] == 1:
        return like.unsqueeze(1)
    return torch.stack([like, logits[:, 1] + (1.0 - drop) * part.private.pick_bias(items)], dim=1)


def batch_logits(
    scorer: Scorer, part: PlatformBatches, data: EncodedSplit, device: torch.device, history_grad: bool = True,
    encode: bool = True, cold: np.ndarray | None = None, new_users: np.ndarray | None = None,
) -> torch.Tensor:  # fmt: skip
    """(B, K) logits of ``data`` (one batch): encode its distinct items once, then score from their vectors.

    ``history_grad=False`` encodes the items that appear only in histories without gradient (or reads
    them from the item cache); ``encode=False`` reads every item from the cache; ``cold``, ``new_users``:
    see :func:`_logits`.
    """
    if history_grad:
        needed, grad_rows = referenced_items(data), None  # (U,) sorted catalogue rows
    else:
        candidates = np.unique(data.items)
        history = np.setdiff1d(referenced_items(data), candidates, assume_unique=True)
        needed, grad_rows = np.concatenate([candidates, history]), len(candidates)
    remap = np.full(len(part.table), -1, dtype=np.int64)
    remap[needed] = np.arange(len(needed))
    local = [remap[data.items], np.where(data.liked >= 0, remap[data.liked], -1),
             np.where(data.disliked >= 0, remap[data.disliked], -1)]  # fmt: skip
    vectors = item_vectors(scorer, part, needed, device, grad_rows, encode)
    return _logits(scorer, part, vectors, local, data, device, cold, new_users)


def as_new_users(data: EncodedSplit, rows: np.ndarray, ks: np.ndarray) -> EncodedSplit:
    """``data`` with the history of each marked row cut to its user's oldest ``k`` interactions.

    ``rows`` (B,) bool marks the rows, ``ks`` (B,) the k of each (read on marked rows only). Histories
    are most recent first and kept apart by label, so the k oldest are taken from each list in
    proportion to its length: ``round(k * n_liked / n)`` liked (half to even, as ``round``; the rest
    disliked, then liked again while k is not reached), each list keeping its order. A history of
    ``n <= k`` stays whole. Vectorised: it runs on every training step that draws new users.
    """
    n_liked, n_disliked = (data.liked >= 0).sum(axis=1), (data.disliked >= 0).sum(axis=1)
    n = n_liked + n_disliked
    k = np.where(rows & (n > ks), ks, n)  # rows left alone keep all n
    keep_liked = np.minimum(n_liked, np.rint(k * n_liked / np.maximum(n, 1)).astype(np.int64))
    keep_disliked = np.minimum(n_disliked, k - keep_liked)
    keep_liked = np.minimum(n_liked, k - keep_disliked)
    return dataclasses.replace(data, liked=_oldest(data.liked, n_liked, keep_liked),
                               disliked=_oldest(data.disliked, n_disliked, keep_disliked))  # fmt: skip


def _oldest(history: np.ndarray, n: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(B, L) most-recent-first histories of ``n`` entries per row cut to their ``keep`` oldest (still
    most recent first), padded with -1: position j takes entry ``n - keep + j`` while j < keep."""
    j = np.arange(history.shape[1])[None, :]
    src = np.clip(n[:, None] - keep[:, None] + j, 0, history.shape[1] - 1)
    return np.where(j < keep[:, None], np.take_along_axis(history, src, axis=1), -1)


def train(
    scorer: Scorer,
    parts: Sequence[PlatformBatches],
    spec: TrainSpec,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """E epochs of AdamW on BCE (+ optional FedProx term); returns mean loss and example count.

    The like output learns from the rows :meth:`EncodedSplit.like_rows` selects; the pick output
    (when the model has one) from every row, rated vs unrated, weighted by ``spec.pick_weight``.

    Several ``parts`` (the pooled bound) interleave their batches; each batch comes from one
    platform, scored with that platform's private parameters. Batch order and dropout masks
    come from ``seed`` alone (torch's global RNG is forked and seeded), so a platform's update
    does not depend on which process or actor ran it.
    """
    if sum(len(p.data) for p in parts) == 0:
        raise ValueError("no training examples on this platform")
    set_compile(scorer, spec.compile)  # later inference on this scorer runs compiled too
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(scorer, parts, spec, device, seed)


def _train(
    scorer: Scorer, parts: Sequence[PlatformBatches], spec: TrainSpec, device: torch.device, seed: int
) -> dict[str, float]:
    scorer.to(device).train()
    for part in parts:
        part.private.to(device).train()
    shared = [p for p in scorer.parameters() if p.requires_grad]
    private = [p for part in parts for p in part.private.parameters()]
    anchor = [p.detach().clone() for p in shared] if spec.proximal_mu > 0 else None
    groups = [{"params": shared, "lr": spec.lr, "weight_decay": spec.weight_decay}]
    if private:
        groups.append({"params": private, "lr": spec.private_lr, "weight_decay": spec.private_weight_decay})
    opt = make_optimizer(groups, device)
    rng = np.random.default_rng(seed)
    total, seen = torch.zeros((), dtype=torch.float64, device=device), 0  # summed on device: no sync per step
    if spec.uses_item_cache:
        fill_item_cache(scorer, parts, device)
    step = 0
    for _ in range(spec.local_epochs):
        batches = [(k, b) for k, part in enumerate(parts)
                   for b in _batches(rng.permutation(len(part.data)), spec.batch_size)]  # fmt: skip
        for j in rng.permutation(len(batches)):
            k, idx = batches[j]
            data = parts[k].data.take(idx)
            encode = not spec.uses_item_cache or (spec.encoder_every > 0 and step % spec.encoder_every == 0)
            cold = rng.random(len(idx)) < spec.cold_dropout if spec.cold_dropout > 0 else None
            new_users = None
            if spec.new_user_dropout > 0:  # drawn only when asked: runs without it keep their random stream
                new_users = rng.random(len(idx)) < spec.new_user_dropout
                data = as_new_users(data, new_users, rng.integers(1, max(NEW_USER_KS) + 1, size=len(idx)))
            step += 1
            logits = batch_logits(scorer, parts[k], data, device, spec.history_grad, encode, cold, new_users)
            loss = batch_loss(logits, data, spec, device)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(shared, anchor, strict=True))
                loss = loss + 0.5 * spec.proximal_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * len(idx)
            seen += len(idx)
        if not math.isfinite(total.item()):  # one device sync per epoch, not per step
            raise FloatingPointError("training loss became NaN/Inf; lower `train.lr`")
    for part in parts:
        part.pooled = None  # the cache lives for one local training: the next starts from the fused adapter
    return {"train-loss": total.item() / max(seen, 1), "num-examples": float(sum(len(p.data) for p in parts))}


@torch.no_grad()
def fill_item_cache(scorer: Scorer, parts: Sequence[PlatformBatches], device: torch.device) -> None:
    """``train.item-cache``: each part's pooled text state of every row its data references, from the
    adapter training starts with (other rows stay zero: no step reads them)."""
    for part in parts:
        rows = referenced_items(part.data)
        part.pooled = torch.zeros((len(part.table), scorer.tower.in_features), device=device)
        part.pooled[_to(rows, device)] = text_pooled(scorer, part.table, rows, device)


def batch_loss(logits: torch.Tensor, data: EncodedSplit, spec: TrainSpec, device: torch.device) -> torch.Tensor:
    """Masked BCE of the like output, plus the pick output's BCE on rated-vs-unrated when present."""
    pick = logits.shape[1] > 1
    mask = _to(data.like_rows(pick), device)
    like = F.binary_cross_entropy_with_logits(logits[:, 0], _to(data.labels, device), reduction="none")
    loss = (like * mask).sum() / mask.sum().clamp(min=1.0)
    if pick:
        assert data.rated is not None
        loss = loss + spec.pick_weight * F.binary_cross_entropy_with_logits(logits[:, 1], _to(data.rated, device))
    return loss


def make_optimizer(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """AdamW: one fused kernel per step on CUDA, multi-tensor (foreach) elsewhere."""
    if device.type == "cuda":
        return torch.optim.AdamW(groups, fused=True)
    return torch.optim.AdamW(groups, foreach=True)


def referenced_items(*splits: EncodedSplit) -> np.ndarray:
    """Sorted catalogue rows that ``splits`` use as candidates or in histories."""
    parts = [np.concatenate([d.items, d.liked.ravel(), d.disliked.ravel()]) for d in splits]
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.unique(rows[rows >= 0])


@torch.no_grad()
def catalogue_vectors(
    scorer: Scorer, part: PlatformBatches, batch_size: int, device: torch.device, rows: np.ndarray | None = None
) -> torch.Tensor:
    """(I, dim) item vectors, private residuals included, for ``rows`` (default: the whole catalogue).

    Items outside ``rows`` are left at zero: evaluating a few users need not encode a whole catalogue.
    """
    table = part.table
    rows = np.arange(len(table)) if rows is None else rows
    order = rows[np.argsort(table.lengths[rows], kind="stable")]  # similar lengths per batch: little padding
    out = torch.zeros((len(table), scorer.tower.out_features), device=device)
    for idx in _batches(order, batch_size):
        out[_to(idx, device)] = item_vectors(scorer, part, idx, device)
    return out


@torch.no_grad()
def predict(
    scorer: Scorer, part: PlatformBatches, data: EncodedSplit, batch_size: int, device: torch.device,
    vectors: torch.Tensor | None = None, score: str = "like",
) -> np.ndarray:  # fmt: skip
    """Probabilities of ``data``'s rows, in order, from one pass over the catalogue.

    ``score``: ``"like"`` (p(like): AUC over rated items) or ``"rank"`` (p(pick) * p(like) when the
    model has a pick output, else p(like): ranking against unrated items).
    """
    scorer.to(device).eval()
    part.private.to(device).eval()
    if vectors is None:
        vectors = catalogue_vectors(scorer, part, batch_size, device, referenced_items(data))
    probs = np.empty(len(data), dtype=np.float64)
    rows = max(batch_size, 1) * 16  # scoring from vectors is cheap: bigger chunks
    for idx in _batches(np.arange(len(data)), rows):
        chunk = data.take(idx)  # vectors cover the whole catalogue: rows are catalogue rows
        logits = _logits(scorer, part, vectors, [chunk.items, chunk.liked, chunk.disliked], chunk, device)
        logp = F.logsigmoid(logits[:, 0] if score == "like" else logits).reshape(len(idx), -1).sum(1)
        probs[idx] = torch.exp(logp).cpu().numpy()
    scorer.train()
    return probs


def evaluate(
    scorer: Scorer,
    part: PlatformBatches,
    splits: Mapping[str, EncodedSplit],
    rankings: Mapping[str, tuple[EncodedSplit, int]],
    batch_size: int,
    device: torch.device,
    scores: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """``{split}.auc / .logloss / .n ...`` for every split, ``{split}.hr@10 / .ndcg@10`` for every ranking.

    ``scores``, when given, receives each split's probabilities (the comparison's paired bootstrap).
    """
    out: dict[str, float] = {}
    used = referenced_items(*splits.values(), *(data for data, _ in rankings.values()))
    vectors = catalogue_vectors(scorer.to(device).eval(), part, batch_size, device, used)
    for name, data in splits.items():
        if len(data) == 0:
            continue
        probs = predict(scorer, part, data, batch_size, device, vectors)
        if scores is not None:
            scores[name], scores[f"{name}.labels"] = probs, data.labels
        for key, value in classification_metrics(data.labels, probs).items():
            out[f"{name}.{key}"] = float(value)
    for name, (data, width) in rankings.items():
        if len(data) == 0:
            continue
        ranked = predict(scorer, part, data, batch_size, device, vectors, "rank").reshape(-1, width)  # (U, 1+N)
        for key, value in ranking_metrics(ranked[:, 0], ranked[:, 1:]).items():
            out[f"{name}.{key}"] = float(value)
        out[f"{name}.rank-users"] = float(ranked.shape[0])
    scorer.train()
    return out
