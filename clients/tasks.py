"""What a platform does with a global adapter, as plain functions (no Flower types).

The ClientApp handlers wrap these; the comparison harness calls them directly, so
every arm trains and evaluates with exactly the code a deployed platform runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from clients.platform import NodeSetup, PreparedPlatform, prepare, subsample
from clients.trainer import evaluate, train
from common.config import AppConfig
from common.modeling import Scorer, get_trainable_state, load_scorer, pick_device, set_trainable_state


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
    metrics = train(scorer, data, cfg.train, pad_id, pick_device(setup.device), seed=cfg.seed * 1000 + server_round)
    return get_trainable_state(scorer), metrics


def evaluate_state(cfg: AppConfig, setup: NodeSetup, state: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``valid.*`` and ``test.*`` metrics (AUC, log-loss, HR@10, NDCG@10, counts) of ``state``."""
    scorer, pad_id, prepared = _load(cfg, setup, state)
    splits = {"valid": prepared.valid, "test": prepared.test}
    return evaluate(scorer, splits, prepared.ranking, cfg.eval.batch_size, pad_id, pick_device(setup.device))
