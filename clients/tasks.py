"""What a platform does with a global adapter, as plain functions (no Flower types).

The ClientApp handlers wrap these; the comparison harness calls them directly, so
every arm trains and evaluates with exactly the code a deployed platform runs.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from clients.platform import NodeSetup, PreparedPlatform, prepare, subsample
from clients.trainer import evaluate, train
from common.config import AppConfig
from common.modeling import Scorer, get_trainable_state, load_scorer, pick_device, set_trainable_state

ALL_SPLITS = ("valid", "test")


def _load(cfg: AppConfig, setup: NodeSetup, state: Mapping[str, np.ndarray]) -> tuple[Scorer, int, PreparedPlatform]:
    scorer, tokenizer = load_scorer(cfg.model, cfg.lora, cfg.seed)
    prepared = prepare(setup, cfg.data, cfg.eval.max_rank_users, cfg.seed, tokenizer, cfg.model.max_length)
    set_trainable_state(scorer, dict(state))
    return scorer, int(tokenizer.pad_token_id), prepared


def fit(
    cfg: AppConfig, setup: NodeSetup, state: Mapping[str, np.ndarray], server_round: int
) -> tuple[OrderedDict[str, np.ndarray], dict[str, float]]:
    """Local epochs from ``state``; returns the new adapter + head and ``num-examples``/``train-loss``."""
    scorer, pad_id, prepared = _load(cfg, setup, state)
    data = subsample(prepared.train, cfg.train.max_examples, cfg.seed + server_round)
    seed = zlib.crc32(f"{cfg.seed}/{setup.platform}/{server_round}".encode())  # distinct per platform and round
    metrics = train(scorer, data, cfg.train, pad_id, pick_device(setup.device), seed=seed)
    return get_trainable_state(scorer), metrics


def evaluate_state(
    cfg: AppConfig, setup: NodeSetup, state: Mapping[str, np.ndarray], splits: Sequence[str] = ALL_SPLITS
) -> dict[str, float]:
    """``valid.*`` / ``test.*`` metrics (AUC, log-loss, counts; HR@10, NDCG@10 with test) of ``state``."""
    scorer, pad_id, prepared = _load(cfg, setup, state)
    data = {name: getattr(prepared, name) for name in splits}
    ranking = prepared.ranking if "test" in splits else None
    return evaluate(scorer, data, ranking, cfg.eval.batch_size, pad_id, pick_device(setup.device))
