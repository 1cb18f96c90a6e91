"""A platform's differentially private round: one clipped contribution per user, then its noise share.

Why per-user passes: the guarantee is about one user (``common.privacy``), so the platform's
contribution must change by at most ``privacy.clip`` when one user's interactions are added or
removed. Each user's update is local training on that user's rows alone, from the round's global
model, clipped, and summed. That training is plain SGD (``privacy.user-lr``, ``train.local-epochs``
steps), so a user's update is its gradient's direction and length: AdamW's first step is
``lr * sign(gradient)``, one length for every user (measured: every update of every user had norm
``train.lr * sqrt(shared values)``, all clipped alike, and the fused model did not move).

For the bound to be exact, nothing else in a user's pass may depend on another user's data:

- the private parameters (item and user biases and vectors) are trained on every user, so the
  per-user passes score with the shared model alone (private parts at zero), and the item
  statistics head features (train counts and like-rates, which mix users) are zero;
- the rows a pass uses, its batch order and its dropout masks come from a seed of the run, the
  round and that user's id only; at most ``train.batch-size`` rows per user are used; with
  ``privacy.user-rate`` < 1 whether a user is in the round at all is its own draw from the
  platform's secret randomness (:func:`sampled_users`);
- the item cache (``train.item-cache``) is filled from the global model (public) and each user's
  pass starts from that same fill; with ``train.encoder-every = E`` a pass runs the encoder at every
  E-th step counted from an offset drawn from that user's seed (:func:`encoder_steps`), so one pass
  in E encodes when a pass is one step, as one batch in E does without privacy. Encoding in every
  pass made a private round on the CPU recipe about ten times the cost of a plain one.

The platform's private parameters are then trained at home, on all its rows, with the shared model
frozen at the global one: they never leave the platform and never feed what is sent.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from clients.trainer import (
    EncodedSplit,
    PlatformBatches,
    batch_logits,
    batch_loss,
    fill_item_cache,
    train,
)
from common.config import TrainSpec
from common.modeling import PrivateParts, Scorer, get_trainable_state, shared_tensors
from common.privacy import COUNT, Mechanism, clip_l2, noisy_contribution


@dataclasses.dataclass(frozen=True)
class UserSums:
    """The sum of the clipped per-user contributions, before the noise (kept on the platform)."""

    vector: np.ndarray  # (D + 1,) float64: sum of clipped updates, then the count coordinate
    users: int
    clipped_users: int  # users whose update was longer than the clip (scaled down)
    rows: int  # train rows used
    loss: float  # mean training loss over the users' steps
    median_norm: float  # median L2 norm of the users' updates before clipping (to choose ``privacy.clip``)


def user_seed(seed: int, platform: str, user: str, rnd: int) -> int:
    """Depends on the run, the round and this user only: another user's presence changes nothing."""
    return zlib.crc32(f"dp/{seed}/{platform}/{user}/{rnd}".encode())


def encoder_steps(rng: np.random.Generator, steps: int, every: int, cached: bool) -> list[bool]:
    """Which of a user's ``steps`` run the encoder: all without the item cache, none with ``every = 0``
    (frozen base), else every ``every``-th from an offset drawn from ``rng`` (the user's own stream, so
    whether a user encodes depends on no other user). Draws only when ``every > 1``: other settings
    keep their random stream."""
    if not cached:
        return [True] * steps
    if every <= 1:
        return [every == 1] * steps
    offset = int(rng.integers(every))
    return [(step + offset) % every == 0 for step in range(steps)]


@torch.no_grad()
def _restore(live: Sequence[torch.Tensor], start: Sequence[torch.Tensor]) -> None:
    for tensor, value in zip(live, start, strict=True):
        tensor.copy_(value)


@torch.no_grad()
def _delta(live: Sequence[torch.Tensor], start: Sequence[torch.Tensor]) -> np.ndarray:
    """The user's update, flat in the wire order, in float64 (as the sum it is added to)."""
    return torch.cat([(t.double() - s.double()).ravel() for t, s in zip(live, start, strict=True)]).cpu().numpy()


def sampled_users(present: np.ndarray, n_users: int, rate: float, secret: np.random.Generator | None) -> np.ndarray:
    """The user rows of ``present`` taken into this round: each with probability ``rate``, independently.

    One draw per user row of the platform (``n_users``), so whether a user is in depends on no other
    user; from ``secret``, the platform's own randomness (the noise's), never from the run's seed:
    amplification by sampling holds only if the server cannot tell who was sampled.
    """
    if rate >= 1.0:
        return present
    if secret is None:
        raise ValueError("sampling users (`privacy.user-rate` < 1) needs the platform's secret random generator")
    return present[(secret.random(n_users) < rate)[present]]


def clipped_user_sums(
    scorer: Scorer, part: PlatformBatches, users: Sequence[str], spec: TrainSpec, mech: Mechanism,
    device: torch.device, seed: int, platform: str, rnd: int, secret: np.random.Generator | None = None,
    user_lr: float = 1.0,
) -> UserSums:  # fmt: skip
    """Sum over this round's users of ``[clip(delta_u, update_clip), count_clip]``; ``users[k]`` is the id of
    user row k; ``delta_u``: ``spec.local_epochs`` SGD steps at ``user_lr`` on that user's rows (no weight decay:
    it would pull every user toward zero alike, an update that carries no data). With ``mech.user_rate`` < 1
    the round's users are sampled from ``secret`` (:func:`sampled_users`)."""
    live = list(shared_tensors(scorer).values())  # what is sent, in its order (live views: restored in place)
    start = [t.detach().clone() for t in live]
    size = sum(t.numel() for t in live)
    data = dataclasses.replace(part.data, stats=None)  # no item statistics: they mix users
    alone = PlatformBatches(part.table, data, PrivateParts(len(part.table), len(users), 1, "none"))
    cache = None
    if spec.uses_item_cache:
        fill_item_cache(scorer, [alone], device)  # from the global model: the same for every user
        cache = alone.pooled
    total = np.zeros(size + 1, dtype=np.float64)
    shared = [p for p in scorer.parameters() if p.requires_grad]
    clipped = rows_used = steps = 0
    norms: list[float] = []
    loss_sum = 0.0
    present = sampled_users(np.unique(data.users), len(users), mech.user_rate, secret)
    scorer.to(device).train()
    for row in present:
        rng = np.random.default_rng(user_seed(seed, platform, users[row], rnd))
        rows = np.flatnonzero(data.users == row)
        if len(rows) > spec.batch_size:
            rows = np.sort(rng.choice(rows, spec.batch_size, replace=False))
        encodes = encoder_steps(rng, spec.local_epochs, spec.encoder_every, spec.uses_item_cache)
        _restore(live, start)
        alone.pooled = None if cache is None else cache.clone()
        torch.manual_seed(int(rng.integers(2**31)))
        opt = torch.optim.SGD(shared, lr=user_lr)
        for encode in encodes:
            batch = data.take(rng.permutation(rows))
            logits = batch_logits(scorer, alone, batch, device, spec.history_grad, encode)
            loss = batch_loss(logits, batch, spec, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            steps += 1
        raw = _delta(live, start)
        norms.append(float(np.linalg.norm(raw)))
        update, was_clipped = clip_l2(raw, mech.update_clip)
        total[:-1] += update
        total[-1] += mech.count_clip
        clipped += int(was_clipped)
        rows_used += len(rows)
    _restore(live, start)
    if not math.isfinite(loss_sum):
        raise FloatingPointError("training loss became NaN/Inf; lower `train.lr`")
    median = float(np.median(norms)) if norms else 0.0
    return UserSums(total, len(present), clipped, rows_used, loss_sum / max(steps, 1), median)


def private_round(
    scorer: Scorer, part: PlatformBatches, users: Sequence[str], spec: TrainSpec, mech: Mechanism,
    device: torch.device, seed: int, platform: str, rnd: int, rng: np.random.Generator,
    home_rows: EncodedSplit | None = None, user_lr: float = 1.0,
) -> tuple[OrderedDict[str, np.ndarray], dict[str, float]]:  # fmt: skip
    """(the noisy contribution in the layout of ``common.privacy.contribution_layout``, local metrics).

    ``rng`` is the platform's secret randomness: it samples the round's users (``privacy.user-rate`` < 1)
    and draws the noise; ``user_lr``: the users' SGD rate (``privacy.user-lr``).

    The private parameters are trained afterwards, on ``home_rows`` (default: every row; the round's
    ``train.max-examples`` subsample in :func:`clients.tasks.fit_private`), with the shared model frozen.
    """
    names = get_trainable_state(scorer)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        sums = clipped_user_sums(scorer, part, users, spec, mech, device, seed, platform, rnd, rng, user_lr)
    noisy = noisy_contribution(sums.vector, mech, rng)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    pos = 0
    for name, value in names.items():
        out[name] = noisy.values[pos : pos + value.size].reshape(value.shape)
        pos += value.size
    out[COUNT] = noisy.values[pos:]
    metrics = {"train-loss": sums.loss, "num-examples": float(sums.rows), "dp-users": float(sums.users),
               "dp-users-clipped": float(sums.clipped_users), "dp-box-clipped": float(noisy.box_clipped),
               "dp-median-norm": sums.median_norm, "dp-noise-multiplier": mech.noise_multiplier,
               "dp-user-rate": mech.user_rate}  # fmt: skip
    if any(True for _ in part.private.parameters()):
        frozen = [p for p in scorer.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            home_part = part if home_rows is None else dataclasses.replace(part, data=home_rows)
            home = train(scorer, [home_part], spec, device, seed=user_seed(seed, platform, "", rnd))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        metrics["private-train-loss"] = home["train-loss"]
    return out, metrics
