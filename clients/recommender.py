"""Recommend from a finished run: a platform's fused model + its private parameters + its catalogue.

    from clients.recommender import Recommender

    rec = Recommender.from_run("runs/demo", "web_shop")       # loads once: adapter, private parts, data
    rec.top_k("u17", k=10)                                     # [Scored(item_id, title, score), ...]
    rec.score("u17", ["i3", "i9"])                             # like-probabilities, in order

The model is a two-tower one (``common.modeling``), so nothing is paid per (user, item) pair but a
small MLP: every catalogue item is read by the LoRA encoder once (:meth:`Recommender.item_vectors`,
cached in memory and, keyed by the adapter, private parameters and catalogue, on disk), a user's
vector is built once from their history, and the head scores the whole catalogue in one batched
pass whose item-side share is precomputed too (:meth:`Scorer.item_head_part`). Items the user
already interacted with are left out of a top-K. A top-K ranks by p(pick) * p(like), as the
model's HR/NDCG do; ``score`` gives p(like). The head also reads each item's count and like-rate
over the platform's current interactions (``common.item_stats``).

What is loaded, and from where:
- the shared model: ``<run>/adapter`` (PEFT folder + ``head.safetensors``), with the run's config
  from ``<run>/summary.json``;
- the platform's private parameters of the best round: ``<run>/private/<platform>/`` in simulation,
  ``<state-dir>/<platform>/<hash of out-dir>/`` on a deployed platform (``state_dir``), lined up
  with today's catalogue and users by id (new items and users get zeros: the shared model alone);
- the catalogue and the histories: the platform's data (the run's ``data.dir`` unless given), so
  interactions added since training count as history and are not recommended again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clients.platform import NodeSetup, platform_data, split_config, user_index
from clients.private_state import PrivateStore, private_folder
from clients.tasks import align_rows
from clients.trainer import EncodedSplit, ItemTable, PlatformBatches, catalogue_vectors, encode_items
from common.config import AppConfig
from common.data import PlatformData
from common.item_stats import ItemStats
from common.modeling import PrivateParts, Scorer, load_adapter, pick_device, set_private_layers
from common.run_files import ADAPTER_DIR, RunFileError, read_finished_summary
from common.splits import UserHistory, current_histories, interaction_labels, split_platform

log = logging.getLogger("crossfed.recommend")

CACHE_DIR = "cache"  # under the run folder: item vectors per platform, keyed by what produced them


class RecommendError(ValueError):
    """A request the model cannot answer: unknown user or item, no such platform, no run there."""


@dataclass(frozen=True)
class Scored:
    item_id: str
    title: str
    score: float  # the ranking score: p(pick) * p(like) (p(like) for a model without a pick output)

    def to_dict(self) -> dict[str, object]:
        return {"item_id": self.item_id, "title": self.title, "score": self.score}


def read_run(run_dir: Path) -> tuple[AppConfig, dict]:
    """The run's config and summary; RecommendError naming the missing file otherwise."""
    try:
        summary = read_finished_summary(run_dir)
    except RunFileError as exc:
        raise RecommendError(str(exc)) from None
    return AppConfig.from_flat(summary["config"]), summary


def training_index(cfg: AppConfig, platform: str, data: PlatformData) -> dict[str, list[str]]:
    """The ids of the private rows as training laid them out, for runs that did not save them (older
    runs): right only while the platform's data is what the run trained on; other row counts are refused."""
    splits = split_platform(data, split_config(cfg.data, cfg.seed))
    return {"items": sorted(splits.items), "users": list(user_index(splits))}


class Recommender:
    """One platform's model, ready to answer: scores and top-K over its whole catalogue."""

    def __init__(
        self,
        scorer: Scorer,
        table: ItemTable,
        private: PrivateParts,
        users: Mapping[str, int],
        histories: Mapping[str, UserHistory],
        titles: Mapping[str, str],
        device: torch.device,
        batch_size: int = 256,
        cache_key: str | None = None,
        cache_dir: Path | None = None,
        stats: ItemStats | None = None,
    ) -> None:
        self.scorer = scorer.to(device).eval()
        self.part = PlatformBatches(table, _empty_split(), private.to(device).eval())
        self.users = dict(users)
        self.histories = dict(histories)
        self.titles = dict(titles)
        self.device = device
        self.batch_size = batch_size
        self.cache_key = cache_key
        self.cache_dir = cache_dir
        self._vectors: torch.Tensor | None = None
        self._item_part: torch.Tensor | None = None  # item side of the head's first layer (Scorer.item_head_part)
        stats = stats or ItemStats(np.zeros(len(table)), np.zeros(len(table)), 0.5)  # none known: unrated items
        self.item_stats = torch.from_numpy(stats.features(np.arange(len(table)))).to(device)  # (I, 2)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        platform: str,
        data_dir: str | None = None,
        state_dir: str | None = None,
        device: str = "auto",
        cache: bool = True,
    ) -> Recommender:
        """Load a platform's recommender from a finished run folder (see the module docstring)."""
        run = Path(run_dir).expanduser().resolve()
        cfg, summary = read_run(run)
        best = int(summary["best_round"])
        folder = private_folder(str(run), platform) if state_dir is None else private_folder(
            cfg.out_dir, platform, state_dir)  # fmt: skip
        data = platform_data(NodeSetup(platform, cfg.data.dir if data_dir is None else data_dir, device), cfg.seed)
        store = PrivateStore(folder)
        saved = store.load(best)
        if saved is None:
            where = "pass the platform's --state-dir" if state_dir is None else "is this the platform's state-dir?"
            raise RecommendError(f"no private parameters of platform {platform!r} at or before round {best} "
                                 f"in {folder} ({where})")  # fmt: skip
        scorer, tokenizer = load_adapter(cfg.model, cfg.lora, run / ADAPTER_DIR, seed=cfg.seed)
        if scorer.initial_private:  # a private head or LoRA B: the platform's own
            set_private_layers(scorer, {k: v for k, v in saved.items() if scorer.is_private(k)} or None)
        histories = current_histories(data, cfg.data.like_threshold, cfg.data.history_len)
        table = encode_items(tokenizer, data.items, cfg.model.max_length)
        users = {user: i for i, user in enumerate(sorted(histories))}
        index = {"items": list(table.ids), "users": list(users)}
        private = PrivateParts(len(table), len(users), cfg.model.dim, cfg.model.private, cfg.model.pick_head)
        names = set(private.state_dict())  # once, not per saved tensor
        own = {k: v for k, v in saved.items() if k in names}
        aligned = align_rows(own, store.index(best) or training_index(cfg, platform, data), index)
        private.load_state_dict({k: torch.from_numpy(v) for k, v in aligned.items()})
        key = _cache_key(run / ADAPTER_DIR, aligned, table, cfg) if cache else None
        titles = {i: item.title for i, item in data.items.items()}
        labelled = interaction_labels(data, cfg.data.like_threshold)  # the served model sees all of them
        stats = ItemStats.from_train(
            len(table),
            table.rows([i for i, _ in labelled]),
            np.array([y for _, y in labelled], np.float32),
            np.ones(len(labelled), np.float32),
        )
        return cls(scorer, table, private, users, histories, titles, pick_device(device), cfg.eval.batch_size, key,
                   run / CACHE_DIR / platform if cache else None, stats)  # fmt: skip

    # ------------------------------------------------------------------ item side, once

    def item_vectors(self) -> torch.Tensor:
        """(I, dim) catalogue vectors (text tower + private residual): computed once, then cached."""
        if self._vectors is None:
            self.scorer.eval()  # no dropout in the encoder
            self._item_part = None
            cached = self.cache_dir is not None and self.cache_key is not None
            path = self.cache_dir / f"{self.cache_key}.npy" if cached else None
            if path is not None and path.is_file():
                self._vectors = torch.from_numpy(np.load(path)).to(self.device)
            else:
                log.info("encoding %d catalogue items once (%s)", len(self.part.table),
                         "then cached in " + str(self.cache_dir) if path is not None else "not cached")  # fmt: skip
                self._vectors = catalogue_vectors(self.scorer, self.part, self.batch_size, self.device)
                if path is not None:
                    _save_npy(path, self._vectors.cpu().numpy())
        return self._vectors

    # ------------------------------------------------------------------ per user

    def history(self, user_id: str, cold_start: bool = False) -> UserHistory:
        if user_id in self.histories:
            return self.histories[user_id]
        if not cold_start:
            raise RecommendError(
                f"unknown user {user_id!r} on this platform (cold start: score a new user by the "
                "shared model alone with --cold-start / cold_start=True)"
            )
        return UserHistory((), (), frozenset())

    @torch.no_grad()
    def _user(self, user_id: str, history: UserHistory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """(1, dim) user vector, (1, 3) counts and the user's private bias (0 for a user without one)."""
        vectors = self.item_vectors()
        rows = [torch.as_tensor(self.part.table.rows(h), dtype=torch.long, device=self.device).reshape(1, -1)
                for h in (history.liked, history.disliked)]  # fmt: skip
        row = self.users.get(user_id)
        private = self.part.private
        residual = None if row is None else private.user_vectors(torch.tensor([row], device=self.device))
        user, counts = self.scorer.users(vectors, rows[0], rows[1], residual)
        bias = 0.0 if row is None or private.user_bias is None else private.user_bias[row]
        return user, counts, bias

    @torch.no_grad()
    def _logits(self, user_id: str, history: UserHistory, items: torch.Tensor | None, output: str) -> torch.Tensor:
        """Log-probabilities of ``items`` (catalogue rows; None = the whole catalogue, in order) for one user:
        ``output`` "like" = log p(like), "rank" = log p(pick) + log p(like) (the model's ranking score)."""
        vectors = self.item_vectors()
        if self._item_part is None:
            self._item_part = self.scorer.item_head_part(vectors, self.item_stats)
        user, counts, user_bias = self._user(user_id, history)
        item_part = self._item_part if items is None else self._item_part[items]
        picked = vectors if items is None else vectors[items]
        logits = self.scorer.score_items(user[0], counts[0], picked, item_part)  # (I, K)
        private = self.part.private
        like = logits[:, 0]
        if private.item_bias is not None:
            like = like + (private.item_bias if items is None else private.item_bias[items]) + user_bias
        out = torch.nn.functional.logsigmoid(like)
        if output == "rank" and logits.shape[1] > 1:
            pick = logits[:, 1]
            if private.item_pick_bias is not None:
                pick = pick + (private.item_pick_bias if items is None else private.item_pick_bias[items])
            out = out + torch.nn.functional.logsigmoid(pick)
        return out

    def score(
        self, user_id: str, item_ids: Sequence[str], cold_start: bool = False, output: str = "like"
    ) -> np.ndarray:
        """Probabilities of ``item_ids`` for ``user_id``, in order: ``output`` "like" = p(like), "rank" =
        p(pick) * p(like), the score :meth:`top_k` ranks by."""
        if output not in ("like", "rank"):
            raise RecommendError(f"`output` must be 'like' or 'rank', got {output!r}")
        unknown = [i for i in item_ids if i not in self.part.table.index]
        if unknown:
            raise RecommendError(f"unknown item ids {unknown[:5]} (not in this platform's catalogue)")
        rows = torch.as_tensor(self.part.table.rows(item_ids), dtype=torch.long, device=self.device)
        logp = self._logits(user_id, self.history(user_id, cold_start), rows, output)
        return torch.exp(logp).cpu().double().numpy()

    def top_k(self, user_id: str, k: int = 10, exclude_seen: bool = True, cold_start: bool = False) -> list[Scored]:
        """The ``k`` best-scored catalogue items for ``user_id``, best first, without what they already have."""
        if k <= 0:
            raise RecommendError(f"`k` must be positive, got {k}")
        history = self.history(user_id, cold_start)
        table = self.part.table
        logits = self._logits(user_id, history, None, "rank")
        if exclude_seen and history.seen:
            logits[torch.as_tensor(table.rows(sorted(history.seen)), device=self.device)] = -torch.inf
        best = torch.topk(logits, min(k, len(table))).indices
        best = best[torch.isfinite(logits[best])]  # fewer unseen items than k: only those
        probs = torch.exp(logits[best]).cpu().double().numpy()  # p(pick) * p(like): the ranking score
        return [Scored(table.ids[r], self.titles[table.ids[r]], float(p))
                for r, p in zip(best.tolist(), probs, strict=True)]  # fmt: skip

    def top_k_many(self, user_ids: Iterable[str], k: int = 10, **kwargs: bool) -> dict[str, list[Scored]]:
        return {user: self.top_k(user, k, **kwargs) for user in user_ids}


def _empty_split() -> EncodedSplit:
    zero = np.zeros(0, dtype=np.int64)
    return EncodedSplit(zero, zero, np.zeros((0, 1), np.int64), np.zeros((0, 1), np.int64), zero.astype(np.float32))


def _cache_key(adapter: Path, private: Mapping[str, np.ndarray], table: ItemTable, cfg: AppConfig) -> str:
    """SHA-256 of everything the item vectors depend on: adapter files, private item rows, item tokens, model."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in cfg.to_flat().items() if k.startswith(("model.", "lora.",
                                        "seed"))}, sort_keys=True).encode())  # fmt: skip
    for path in sorted(adapter.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    for name in sorted(private):
        if name.startswith("item_"):
            digest.update(name.encode() + np.ascontiguousarray(private[name]).tobytes())
    digest.update(table.tokens.tobytes() + "\n".join(table.ids).encode())
    return digest.hexdigest()[:32]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Atomic: a crash leaves the cache without this entry, never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
