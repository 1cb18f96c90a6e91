"""Biased matrix factorisation: the collaborative baseline a trained arm has to beat.

``p(like | u, i) = sigmoid(mu + b_u + b_i + <p_u, q_i>)``, fitted on one train split by
full-batch Adam on the mean logistic loss plus a per-example L2 penalty
``wd * (b_u^2 + b_i^2 + |p_u|^2 + |q_i|^2)`` (so a user or item with many examples is held
as tightly per example as a rare one). Full batch keeps it deterministic (numpy, one seeded
initialisation, sparse scatter-adds in a fixed order) and fast: an ML-100K genre platform
(~33k examples) runs the whole default grid in seconds on two cores.

Hyper-parameters (factor dimension, weight decay) and the number of epochs are chosen on the
VALIDATION split only: each grid point trains until the validation AUC has not improved for
``PATIENCE`` checks, and the point and epoch with the best validation AUC win (validation
log-loss instead when the valid split holds one label only, as a tiny platform's can). Every trial
is kept on the model so a report can show what was chosen and from what. :func:`fit_mf`
never sees a test split.

A user or item unseen in training scores with bias 0 and a zero factor vector, i.e. the
global bias plus whatever part of the pair is known.

The central variant (:func:`fit_central_mf`) pools every platform's train split with user
ids LINKED across platforms (the same ``user_id`` string is the same person) and item ids
namespaced by platform: the upper bound a privacy law forbids.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from common.metrics import auc, log_loss
from common.splits import Example, PlatformSplits

log = logging.getLogger("crossfed.mf")


@dataclass(frozen=True)
class MFParams:
    """One grid point."""

    dim: int  # latent factors per user and item
    weight_decay: float  # per-example L2 strength on biases and factors


# The grid and the optimiser settings were set by looking at ML-100K genre platforms' VALIDATION AUC only.
DEFAULT_GRID: tuple[MFParams, ...] = tuple(MFParams(d, wd) for d in (8, 32) for wd in (0.01, 0.03, 0.1))
LEARNING_RATE = 0.02
MAX_EPOCHS = 300
CHECK_EVERY = 2  # epochs between validation checks
PATIENCE = 8  # checks without a better validation AUC before a trial stops
INIT_STD = 0.1


@dataclass(frozen=True)
class Trial:
    """A grid point's best validation score (higher is better) and the epoch it was reached at."""

    params: MFParams
    epochs: int
    valid_score: float  # AUC, or minus the log-loss when the valid split has one label (see ``criterion``)


@dataclass(frozen=True)
class MFWeights:
    """Trainable arrays; the last row of each per-user/per-item array is the unseen-id row (always 0)."""

    mu: np.ndarray  # (1,)
    user_bias: np.ndarray  # (U+1,)
    item_bias: np.ndarray  # (I+1,)
    user_factors: np.ndarray  # (U+1, d)
    item_factors: np.ndarray  # (I+1, d)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def copy(self) -> MFWeights:
        return MFWeights(*(a.copy() for a in self.arrays()))


@dataclass(frozen=True)
class MFModel:
    """A fitted MF plus the validation trials that chose it."""

    users: Mapping[str, int]
    items: Mapping[str, int]
    weights: MFWeights
    chosen: Trial
    trials: tuple[Trial, ...]
    criterion: str  # "auc" or "-logloss": what ``Trial.valid_score`` is

    def probs(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """p(like) per (user, item) pair; unseen ids map to the all-zero row."""
        u = _lookup(self.users, user_ids)
        i = _lookup(self.items, item_ids)
        return _sigmoid(_logits(self.weights, u, i))

    def prob(self, user_id: str, item_id: str) -> float:
        return float(self.probs([user_id], [item_id])[0])

    def hyperparameters(self) -> dict[str, float]:
        """What validation chose, for reports."""
        c = self.chosen
        return {"dim": c.params.dim, "weight_decay": c.params.weight_decay, "epochs": c.epochs,
                f"valid_{self.criterion}": c.valid_score}  # fmt: skip


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _index(ids: Sequence[str]) -> dict[str, int]:
    """Ids in sorted order, so the index (and the seeded init) does not depend on example order."""
    return {key: n for n, key in enumerate(sorted(set(ids)))}


def _lookup(index: Mapping[str, int], ids: Sequence[str]) -> np.ndarray:
    unseen = len(index)
    return np.fromiter((index.get(key, unseen) for key in ids), dtype=np.int64, count=len(ids))


def _logits(p: MFWeights, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    return p.mu[0] + p.user_bias[u] + p.item_bias[i] + np.einsum("nd,nd->n", p.user_factors[u], p.item_factors[i])


def _scatter(rows: np.ndarray, size: int) -> sparse.csr_matrix:
    """(size+1, N) 0/1 matrix: ``S @ x`` sums x's rows per id, in a fixed order (deterministic)."""
    n = len(rows)
    return sparse.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(size + 1, n))


def _init(num_users: int, num_items: int, dim: int, base_rate: float, seed: int) -> MFWeights:
    """Biases 0 except ``mu`` = logit of the train like-rate; factors N(0, INIT_STD^2); unseen rows 0."""
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(0.0, INIT_STD, (num_users + 1, dim))
    item_factors = rng.normal(0.0, INIT_STD, (num_items + 1, dim))
    user_factors[-1] = item_factors[-1] = 0.0
    rate = min(max(base_rate, 1e-3), 1 - 1e-3)
    mu = np.array([np.log(rate / (1 - rate))])
    return MFWeights(mu, np.zeros(num_users + 1), np.zeros(num_items + 1), user_factors, item_factors)


@dataclass(frozen=True)
class _Data:
    """Encoded train split plus what every gradient step reuses."""

    u: np.ndarray
    i: np.ndarray
    y: np.ndarray
    by_user: sparse.csr_matrix
    by_item: sparse.csr_matrix
    user_share: np.ndarray  # examples per user / N: the per-example L2 summed per user
    item_share: np.ndarray


def _encode(examples: Sequence[Example], users: Mapping[str, int], items: Mapping[str, int]) -> _Data:
    u = _lookup(users, [ex.user_id for ex in examples])
    i = _lookup(items, [ex.item_id for ex in examples])
    y = np.array([ex.label for ex in examples], np.float64)
    n = len(examples)
    user_share = np.bincount(u, minlength=len(users) + 1) / n
    item_share = np.bincount(i, minlength=len(items) + 1) / n
    return _Data(u, i, y, _scatter(u, len(users)), _scatter(i, len(items)), user_share, item_share)


def _gradients(p: MFWeights, d: _Data, wd: float) -> tuple[np.ndarray, ...]:
    """Gradients of mean log-loss + mean per-example L2, in ``MFWeights.arrays()`` order."""
    pu, qi = p.user_factors[d.u], p.item_factors[d.i]
    g = (_sigmoid(_logits(p, d.u, d.i)) - d.y) / len(d.y)  # (N,) dloss/dlogit
    return (
        np.array([g.sum()]),
        d.by_user @ g + 2 * wd * d.user_share * p.user_bias,
        d.by_item @ g + 2 * wd * d.item_share * p.item_bias,
        d.by_user @ (g[:, None] * qi) + 2 * wd * d.user_share[:, None] * p.user_factors,
        d.by_item @ (g[:, None] * pu) + 2 * wd * d.item_share[:, None] * p.item_factors,
    )


def _criterion(valid: _Data) -> str:
    return "auc" if len(np.unique(valid.y)) == 2 else "-logloss"


def _valid_score(p: MFWeights, valid: _Data, criterion: str) -> float:
    """Higher is better: validation AUC, or minus the validation log-loss."""
    logits = _logits(p, valid.u, valid.i)
    return auc(valid.y, logits) if criterion == "auc" else -log_loss(valid.y, _sigmoid(logits))


def _train_trial(
    params: MFWeights, data: _Data, valid: _Data, wd: float, criterion: str
) -> tuple[MFWeights, int, float]:
    """Full-batch Adam from ``params``, early stopping on the validation score: (best params, epoch, score).

    The unseen-id rows start at 0 and get zero gradient (no train example uses them), so they stay 0.
    """
    arrays = params.arrays()
    m = [np.zeros_like(a) for a in arrays]
    v = [np.zeros_like(a) for a in arrays]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    best, best_epoch, best_score, stale = params.copy(), 0, _valid_score(params, valid, criterion), 0
    for epoch in range(1, MAX_EPOCHS + 1):
        for a, g, m_, v_ in zip(arrays, _gradients(params, data, wd), m, v, strict=True):
            m_ += (1 - beta1) * (g - m_)
            v_ += (1 - beta2) * (g * g - v_)
            a -= LEARNING_RATE * (m_ / (1 - beta1**epoch)) / (np.sqrt(v_ / (1 - beta2**epoch)) + eps)
        if epoch % CHECK_EVERY:
            continue
        score = _valid_score(params, valid, criterion)
        if score > best_score:
            best, best_epoch, best_score, stale = params.copy(), epoch, score, 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    return best, best_epoch, best_score


def fit_mf(
    train: Sequence[Example], valid: Sequence[Example], seed: int, grid: Sequence[MFParams] = DEFAULT_GRID
) -> MFModel:
    """Fit every grid point on ``train``; keep the point and epoch with the best ``valid`` AUC (or log-loss).

    Only ``train`` and ``valid`` come in, so the choice cannot depend on test. Ties keep the
    earlier grid point. Deterministic for a given ``seed`` (every grid point starts from the
    same seeded draw for its dimension).
    """
    if not train:
        raise ValueError("no train examples to fit MF on")
    if not valid:
        raise ValueError("MF is tuned on validation: no valid examples")
    if not grid:
        raise ValueError("empty MF hyper-parameter grid")
    users, items = _index([ex.user_id for ex in train]), _index([ex.item_id for ex in train])
    data = _encode(train, users, items)
    valid_data = _encode(valid, users, items)
    criterion = _criterion(valid_data)
    base_rate = float(data.y.mean())
    best: tuple[MFWeights, Trial] | None = None
    trials = []
    for point in grid:
        start = _init(len(users), len(items), point.dim, base_rate, seed)
        params, epochs, score = _train_trial(start, data, valid_data, point.weight_decay, criterion)
        trials.append(Trial(point, epochs, score))
        if best is None or score > best[1].valid_score:
            best = (params, trials[-1])
    assert best is not None
    model = MFModel(users, items, best[0], best[1], tuple(trials), criterion)
    log.info("mf: %d examples, %d users, %d items; chose %s", len(train), len(users), len(items),
             model.hyperparameters())  # fmt: skip
    return model


def central_item_id(platform: str, item_id: str) -> str:
    """Items are platform-local ids: namespace them so two platforms' ``"42"`` stay two items."""
    return f"{platform}/{item_id}"


def _namespaced(platform: str, examples: Sequence[Example]) -> list[Example]:
    return [dataclasses.replace(ex, item_id=central_item_id(platform, ex.item_id)) for ex in examples]


def fit_central_mf(
    platforms: Mapping[str, PlatformSplits], seed: int, grid: Sequence[MFParams] = DEFAULT_GRID
) -> MFModel:
    """One MF on the union of every platform's train split (tuned on the union of their valid splits).

    User ids are LINKED: the same ``user_id`` on two platforms is one user vector, so a taste
    seen on one platform informs another. Items are namespaced with :func:`central_item_id`.
    """
    names = sorted(platforms)
    train = [ex for name in names for ex in _namespaced(name, platforms[name].train)]
    valid = [ex for name in names for ex in _namespaced(name, platforms[name].valid)]
    return fit_mf(train, valid, seed, grid)
