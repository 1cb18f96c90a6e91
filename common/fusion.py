"""Fusion maths: numpy in, numpy out.

A "state" is an ordered mapping tensor-name -> float array (adapter + head). The server
never needs torch for fusion, and these functions are checked against
``np.average(..., weights=...)`` in the tests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

State = Mapping[str, np.ndarray]


class FusionError(ValueError):
    """Updates that cannot be fused (no updates, mismatched tensors, bad weights)."""


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> OrderedDict[str, np.ndarray]:
    """Example-weighted mean of every tensor: sum_i w_i x_i / sum_i w_i (float64 accumulation)."""
    if not states:
        raise FusionError("no updates to fuse")
    if len(states) != len(weights):
        raise FusionError(f"{len(states)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise FusionError(f"weights must be finite, >= 0 and not all zero, got {w.tolist()}")
    names = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != names:
            raise FusionError(f"update {i} has tensors {sorted(state)[:3]}..., expected {names[:3]}...")
    fused: OrderedDict[str, np.ndarray] = OrderedDict()
    for name in names:
        stack = np.stack([np.asarray(s[name], dtype=np.float64) for s in states])  # (K, *shape)
        if stack.shape[1:] != np.shape(states[0][name]):
            raise FusionError(f"tensor `{name}` has different shapes across updates")
        fused[name] = (np.tensordot(w, stack, axes=1) / w.sum()).astype(np.float32)
    return fused


def server_step(
    current: State,
    fused: State,
    velocity: State | None,
    lr: float = 1.0,
    momentum: float = 0.0,
) -> tuple[OrderedDict[str, np.ndarray], OrderedDict[str, np.ndarray]]:
    """Apply the fused update with a server learning rate and momentum (FedAvgM).

    delta = fused - current;  v <- momentum * v + delta;  new = current + lr * v.
    With lr = 1 and momentum = 0 this returns ``fused`` exactly (plain FedAvg).
    """
    if lr == 1.0 and momentum == 0.0:  # plain FedAvg: bit-exact, no float round trip
        return OrderedDict((k, np.asarray(v, np.float32).copy()) for k, v in fused.items()), OrderedDict()
    new: OrderedDict[str, np.ndarray] = OrderedDict()
    vel: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, cur in current.items():
        delta = np.asarray(fused[name], np.float64) - np.asarray(cur, np.float64)
        v = momentum * np.asarray(velocity[name], np.float64) + delta if velocity else delta
        vel[name] = v.astype(np.float32)
        new[name] = (np.asarray(cur, np.float64) + lr * v).astype(np.float32)
    return new, vel


def server_adam_step(
    current: State,
    fused: State,
    moments: State | None,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> tuple[OrderedDict[str, np.ndarray], OrderedDict[str, np.ndarray]]:
    """FedAdam (Reddi et al. 2021) on the fused update, the pseudo-gradient ``delta = fused - current``.

    m <- b1 m + (1 - b1) delta;  v <- b2 v + (1 - b2) delta^2;  new = current + lr * m / (sqrt(v) + tau).
    ``moments`` holds ``m:<name>`` and ``v:<name>`` (zeros when None); no bias correction, as in the paper.
    """
    new: OrderedDict[str, np.ndarray] = OrderedDict()
    state: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, cur in current.items():
        cur64 = np.asarray(cur, np.float64)
        delta = np.asarray(fused[name], np.float64) - cur64
        m = (1.0 - beta1) * delta + (beta1 * np.asarray(moments[f"m:{name}"], np.float64) if moments else 0.0)
        v = (1.0 - beta2) * delta**2 + (beta2 * np.asarray(moments[f"v:{name}"], np.float64) if moments else 0.0)
        state[f"m:{name}"], state[f"v:{name}"] = m, v
        new[name] = (cur64 + lr * m / (np.sqrt(v) + tau)).astype(np.float32)
    return new, state


def server_update(
    current: State,
    fused: State,
    opt_state: State | None,
    optimizer: str = "avg",
    lr: float = 1.0,
    momentum: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.99),
    tau: float = 1e-3,
) -> tuple[OrderedDict[str, np.ndarray], OrderedDict[str, np.ndarray]]:
    """The server optimiser (``fed.optimizer``): ``avg`` = :func:`server_step`, ``adam`` = :func:`server_adam_step`."""
    if optimizer == "avg":
        return server_step(current, fused, opt_state, lr, momentum)
    if optimizer == "adam":
        return server_adam_step(current, fused, opt_state, lr, betas[0], betas[1], tau)
    raise FusionError(f"unknown server optimizer {optimizer!r}, expected 'avg' or 'adam'")


def lora_deltas(state: State, scaling: float = 1.0) -> OrderedDict[str, np.ndarray]:
    """``scaling * B @ A`` per LoRA module of a state (``...lora_A.weight`` (r, in), ``...lora_B.weight`` (out, r)).

    This is the change the adapter makes to each frozen weight matrix, (out, in).
    """
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, a in state.items():
        if ".lora_A." not in name:
            continue
        b = state[name.replace(".lora_A.", ".lora_B.")]
        out[name.replace(".lora_A.", ".")] = scaling * np.asarray(b, np.float64) @ np.asarray(a, np.float64)
    return out
