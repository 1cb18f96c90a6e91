"""What a platform does with a global (shared) model, as plain functions (no Flower types).

The ClientApp handlers wrap these; the comparison harness calls them directly, so
every arm trains and evaluates with exactly the code a deployed platform runs. The
platform's private parameters come from and go back to its :class:`PrivateStore`.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from clients.dp_train import private_round
from clients.encoder_compile import set_compile
from clients.platform import NodeSetup, PreparedPlatform, prepare, subsample
from clients.private_state import PrivateStore
from clients.trainer import PlatformBatches, evaluate, train
from common.config import AppConfig
from common.modeling import (
    PrivateParts,
    Scorer,
    get_private_layers,
    get_trainable_state,
    load_scorer,
    pick_device,
    set_private_layers,
    set_trainable_state,
)
from common.privacy import run_mechanism

ALL_SPLITS = ("valid", "test")


def platform_index(prepared: PreparedPlatform) -> dict[str, list[str]]:
    """The item and user id of each row of the platform's private parameters (saved beside them)."""
    return {"items": list(prepared.table.ids), "users": list(prepared.users)}


def align_rows(
    saved: Mapping[str, np.ndarray], saved_index: Mapping[str, Sequence[str]] | None, index: Mapping[str, Sequence[str]]
) -> dict[str, np.ndarray]:
    """Saved private tensors laid out for the current ids: rows matched by item/user id, new ids at zero.

    ``item_*`` tensors have one row per item, ``user_*`` one per user. Saved ids no longer present
    are dropped (a user who left). Without a saved index (an older run) the rows can only be
    taken as they are, which is sound only if the counts still match.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in saved.items():
        kind = "items" if name.startswith("item_") else "users" if name.startswith("user_") else None
        if kind is None:
            out[name] = np.asarray(value)
            continue
        rows = len(index[kind])
        if saved_index is None:
            if value.shape[0] != rows:
                raise ValueError(
                    f"private `{name}` was saved for {value.shape[0]} {kind} without their ids and this platform "
                    f"now has {rows}: its rows cannot be matched to ids; start from a run that saved them"
                )
            out[name] = np.asarray(value)
            continue
        if len(saved_index[kind]) != value.shape[0]:
            raise ValueError(f"private `{name}` has {value.shape[0]} rows but {len(saved_index[kind])} saved {kind} "
                             "ids: the saved private parameters are inconsistent")  # fmt: skip
        position = {key: i for i, key in enumerate(saved_index[kind])}
        pairs = [(i, position[key]) for i, key in enumerate(index[kind]) if key in position]
        aligned = np.zeros((rows, *value.shape[1:]), dtype=np.float32)
        if pairs:
            new_rows, old_rows = (np.asarray(x, dtype=np.int64) for x in zip(*pairs, strict=True))
            aligned[new_rows] = value[old_rows]
        out[name] = aligned
    return out


def private_parts(
    cfg: AppConfig,
    prepared: PreparedPlatform,
    saved: Mapping[str, np.ndarray] | None,
    saved_index: Mapping[str, Sequence[str]] | None = None,
) -> PrivateParts:
    """This platform's private parameters: zeros, or the saved ones lined up by id (saved private layers
    of the shared model, a head or LoRA B, are not part of them)."""
    parts = PrivateParts(len(prepared.table), len(prepared.users), cfg.model.dim, cfg.model.private,
                         pick=cfg.model.pick_head)  # fmt: skip
    if saved:
        names = set(parts.state_dict())
        own = {k: v for k, v in saved.items() if k in names}
        aligned = align_rows(own, saved_index, platform_index(prepared))
        parts.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in aligned.items()})
    return parts


def private_tensors(scorer: Scorer, parts: PrivateParts) -> OrderedDict[str, np.ndarray]:
    """What the platform keeps: its private parameters, plus the shared model's private layers (head, LoRA B)."""
    out = OrderedDict((k, v.detach().float().cpu().numpy()) for k, v in parts.state_dict().items())
    out.update(get_private_layers(scorer))
    return out


def load_platform(
    cfg: AppConfig, setup: NodeSetup, state: Mapping[str, np.ndarray], store: PrivateStore, rnd: int
) -> tuple[Scorer, PlatformBatches, PreparedPlatform]:
    """The shared model with ``state`` plus this platform's private parts (and private layers: head, LoRA B)
    of round ``rnd``."""
    scorer, tokenizer = load_scorer(cfg.model, cfg.lora, cfg.seed)
    prepared = prepare(setup, cfg.data, cfg.eval.max_rank_users, cfg.seed, tokenizer, cfg.model.max_length)
    set_trainable_state(scorer, dict(state))
    set_compile(scorer, cfg.train.compile)  # evaluation-only processes run the encoder as training does
    saved = store.load(rnd)
    if scorer.initial_private:
        layers = {k: v for k, v in (saved or {}).items() if scorer.is_private(k)}
        set_private_layers(scorer, layers or None)
    parts = private_parts(cfg, prepared, saved, store.index(rnd) if saved else None)
    return scorer, PlatformBatches(prepared.table, prepared.train, parts), prepared


def train_seed(cfg: AppConfig, platform: str, server_round: int) -> int:
    """Distinct per platform and round, the same in every process (``hash`` is salted)."""
    return zlib.crc32(f"{cfg.seed}/{platform}/{server_round}".encode())


def fit(
    cfg: AppConfig,
    setup: NodeSetup,
    state: Mapping[str, np.ndarray],
    server_round: int,
    store: PrivateStore,
    n_min: int | None = None,
) -> tuple[OrderedDict[str, np.ndarray], dict[str, float]]:
    """Local epochs from ``state``; returns the new shared tensors and ``num-examples``/``train-loss``/
    ``train-seconds``.

    With differential privacy (``privacy.target-epsilon`` > 0) it returns this platform's noisy sum of
    clipped per-user updates instead (:func:`fit_private`); ``n_min``: the fewest noise shares any sum
    holds (default: the run's ``secure.min-cohort`` threshold).
    The private parameters continue from the latest earlier round and are saved under this one.
    """
    if cfg.privacy.enabled:
        return fit_private(cfg, setup, state, server_round, store, n_min)
    return fit_together(cfg, [(setup, store)], state, server_round, train_seed(cfg, setup.platform, server_round))


def fit_private(
    cfg: AppConfig, setup: NodeSetup, state: Mapping[str, np.ndarray], server_round: int, store: PrivateStore,
    n_min: int | None = None, rng: np.random.Generator | None = None,
) -> tuple[OrderedDict[str, np.ndarray], dict[str, float]]:  # fmt: skip
    """One DP round (:mod:`clients.dp_train`): per-user clipped updates from ``state`` summed, boxed,
    put on the secure-aggregation grid with this platform's discrete Gaussian share (``rng``: fresh OS
    entropy unless a test pins it); the private parameters train at home and are saved under this round."""
    scorer, part, prepared = load_platform(cfg, setup, state, store, server_round - 1)
    mech = run_mechanism(cfg, sum(np.size(v) for v in state.values()) + 1, n_min)
    users = sorted(prepared.users, key=prepared.users.__getitem__)
    t0 = time.perf_counter()
    update, metrics = private_round(
        scorer, part, users, cfg.train, mech, pick_device(setup.device), cfg.seed, setup.platform, server_round,
        np.random.default_rng() if rng is None else rng,
        subsample(prepared.train, cfg.train.max_examples, cfg.seed + server_round), cfg.privacy.user_lr,
    )  # fmt: skip
    metrics["train-seconds"] = time.perf_counter() - t0
    store.save(server_round, private_tensors(scorer, part.private), platform_index(prepared))
    return update, metrics


def fit_together(
    cfg: AppConfig,
    platforms: Sequence[tuple[NodeSetup, PrivateStore]],
    state: Mapping[str, np.ndarray],
    server_round: int,
    seed: int,
) -> tuple[OrderedDict[str, np.ndarray], dict[str, float]]:
    """:func:`fit` over the round's train subsample of one or more platforms, batches interleaved.

    One platform is what a deployed platform runs; several is the comparison's pooled upper bound
    (one shared model, each batch with its own platform's private parameters). Each platform's
    private parameters continue from the latest earlier round and are saved under this one.
    """
    loaded = []
    for setup, store in platforms:
        scorer, part, prepared = load_platform(cfg, setup, state, store, server_round - 1)
        part.data = subsample(prepared.train, cfg.train.max_examples, cfg.seed + server_round)
        loaded.append((part, prepared))
    # every platform loaded the same shared ``state``: the last one's model trains (with its private layers)
    parts = [part for part, _ in loaded]
    t0 = time.perf_counter()
    metrics = train(scorer, parts, cfg.train, pick_device(platforms[0][0].device), seed=seed)
    # the local epochs alone (train() syncs the device at its end): data preparation and loading are not in it
    metrics["train-seconds"] = time.perf_counter() - t0
    for (_, store), (part, prepared) in zip(platforms, loaded, strict=True):
        store.save(server_round, private_tensors(scorer, part.private), platform_index(prepared))
    return get_trainable_state(scorer), metrics


def evaluate_state(
    cfg: AppConfig,
    setup: NodeSetup,
    state: Mapping[str, np.ndarray],
    server_round: int,
    store: PrivateStore,
    splits: Sequence[str] = ALL_SPLITS,
    scores: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """``valid.*`` / ``test.*`` metrics (AUC, log-loss, counts, HR@10, NDCG@10) of ``state``.

    With ``test``, every extra test split too (``test-k1.*``: new users seen through other history
    sizes, ``data.cold-start = "new-users"``). Uses this platform's private parameters of
    ``server_round`` (the latest at or before it).
    """
    scorer, part, prepared = load_platform(cfg, setup, state, store, server_round)
    data = {name: getattr(prepared, name) for name in splits}
    if "test" in splits:
        data.update(prepared.extra)
    rankings = prepared.rankings(splits)
    return evaluate(scorer, part, data, rankings, cfg.eval.batch_size, pick_device(setup.device), scores)
