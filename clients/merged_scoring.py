"""Score with a merged crossfed export using plain transformers + torch (copied into the export).

This file is self-contained on purpose: ``crossfed export --merge`` copies it into the export as
``crossfed_scoring.py`` so the model runs where crossfed is not installed::

    import sys; sys.path.insert(0, "exports/shop")
    from crossfed_scoring import CrossfedScorer

    model = CrossfedScorer.from_pretrained("exports/shop")     # AutoModel + AutoTokenizer + head
    items = model.item_vectors(["Red Wool Hat", "Blue Silk Scarf. Soft and light"])   # once per catalogue
    probs = model.score(items[[0]], items[[]], items)           # liked, disliked, candidates -> (N,)
    ranks = model.score(items[[0]], items[[]], items, output="rank")   # p(pick) * p(like): for ranking

It is the shared (fused) model only: a platform's private biases and vectors are not part of an
export. The maths mirror ``common.modeling.Scorer``: an item is the masked mean of the merged
encoder's token states through ``tower``; a user is ``user([mean liked, mean disliked])``; the
logits are ``head([u * v, u, v, counts, stats])`` (like, and pick when the model has it);
``tests/integration/test_use.py`` checks they agree. ``stats`` are the candidates' statistics on the
platform that scores them (``common.item_stats``: log1p(train count), smoothed like-rate minus the
platform's like-rate); without them every candidate is scored as an item nobody has rated yet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

CONFIG_FILE = "crossfed.json"  # dim, max_length, num_counts, chars_per_token_cap
HEAD_FILE = "head.safetensors"


def item_text(title: str, text: str = "") -> str:
    """The text the model was trained on for an item: the title, plus ". " + description when there is one."""
    if title and text:
        return f"{title}. {text}"
    return title or text


class CrossfedScorer(nn.Module):
    """Merged encoder + tower, user and head layers of a crossfed export (eval mode, no dropout)."""

    def __init__(self, encoder: nn.Module, tokenizer: object, layers: dict[str, torch.Tensor], config: dict) -> None:
        super().__init__()
        dim, hidden = int(config["dim"]), int(encoder.config.hidden_size)
        self.encoder, self.tokenizer, self.config = encoder, tokenizer, config
        self.tower = nn.Linear(hidden, dim)
        self.user = nn.Linear(2 * dim, dim)
        inputs = 3 * dim + int(config["num_counts"]) + int(config.get("num_item_stats", 0))
        self.head = nn.Sequential(nn.Identity(), nn.Linear(inputs, dim), nn.GELU(),
                                  nn.Linear(dim, int(config.get("outputs", 1))))  # fmt: skip  # 0 = dropout in training
        result = self.load_state_dict(layers, strict=False)
        absent = [k for k in result.missing_keys if not k.startswith("encoder.")]
        if absent or result.unexpected_keys:
            raise ValueError(f"{HEAD_FILE}: missing {absent[:3]}, unexpected {result.unexpected_keys[:3]}")
        self.eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> CrossfedScorer:
        """A merged export, or an adapter export (then peft merges the adapter into its base on load;
        a relative ``base_model_name_or_path`` is relative to the export folder)."""
        folder = Path(folder)
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.get("merged", True):
            encoder, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        else:
            from peft import PeftModel

            name = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
            base = folder / name if (folder / name).is_dir() else name
            tokenizer = AutoTokenizer.from_pretrained(base)
            encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(base), str(folder)).merge_and_unload()
        return cls(encoder, tokenizer, load_file(str(folder / HEAD_FILE)), config)

    @torch.no_grad()
    def item_vectors(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(N, dim) vectors of item texts (see :func:`item_text`)."""
        max_length = int(self.config["max_length"])
        cap = max_length * int(self.config["chars_per_token_cap"])
        out = []
        for start in range(0, len(texts), batch_size):
            batch = [t[:cap] for t in texts[start : start + batch_size]]
            enc = self.tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            states = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
            out.append(self.tower((states * mask).sum(1) / mask.sum(1).clamp(min=1.0)))
        return torch.cat(out) if out else torch.zeros(0, self.tower.out_features)

    @torch.no_grad()
    def score(
        self, liked: torch.Tensor, disliked: torch.Tensor, candidates: torch.Tensor, stats: torch.Tensor | None = None,
        output: str = "like",
    ) -> torch.Tensor:  # fmt: skip
        """(N,) probabilities of ``candidates`` (N, dim) for a user with these liked / disliked item vectors:
        ``output`` "like" (p(like)) or "rank" (p(pick) * p(like) when the model has a pick output)."""
        dim = self.tower.out_features
        n_liked, n_disliked = len(liked), len(disliked)
        liked_mean = liked.mean(0) if n_liked else torch.zeros(dim)
        disliked_mean = disliked.mean(0) if n_disliked else torch.zeros(dim)
        user = self.user(torch.cat([liked_mean, disliked_mean]))  # (dim,)
        share = n_liked / (n_liked + n_disliked) if n_liked + n_disliked else 0.5
        counts = torch.tensor([share, math.log1p(n_liked), math.log1p(n_disliked)], dtype=user.dtype)
        n = len(candidates)
        users = user.expand(n, -1)
        parts = [users * candidates, users, candidates, counts.expand(n, -1)]
        width = int(self.config.get("num_item_stats", 0))
        if width:
            parts.append(torch.zeros(n, width, dtype=user.dtype) if stats is None else stats.to(user.dtype))
        logits = self.head(torch.cat(parts, dim=-1))
        if output == "like":
            logits = logits[:, :1]
        return torch.exp(torch.nn.functional.logsigmoid(logits).sum(-1))
