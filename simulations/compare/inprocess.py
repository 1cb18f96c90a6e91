"""The federation loop with every platform in this process, one after the other.

Same client code (:mod:`clients.tasks`), same fusion and server loop
(:func:`server.federation.run_federation`) as the Flower apps, minus the transport:
no Ray actors, one copy of the base model, one GPU kept busy. The comparison harness
uses it to run many arms x seeds quickly; the Flower path is covered by the
integration tests, which check that both reach the same kind of result.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from clients.platform import NodeSetup
from clients.private_state import PrivateStore, run_store
from clients.tasks import evaluate_state, fit
from common.config import AppConfig
from common.fusion import weighted_average
from common.privacy import PrivacyError, fuse_noisy_sum, min_shares
from server.federation import PerPlatform, Tensors


class InProcessTransport:
    """Train and evaluate each platform in turn, in this process.

    Each platform's private parameters live in its own :class:`PrivateStore` (``stores``) under
    ``<out-dir>/private/<platform>``, as a simulated ClientApp keeps them. ``states`` keeps the global
    state evaluated in each round (the comparison harness fine-tunes from the best one); ``scores`` the probabilities
    and labels of the latest test evaluation per platform (its paired bootstrap); ``train_time`` the
    seconds spent in local epochs and the examples trained, summed over rounds, per platform.
    """

    def __init__(self, setups: Sequence[NodeSetup]) -> None:
        self.setups = list(setups)
        self.stores: dict[str, PrivateStore] = {}
        self.states: dict[int, OrderedDict[str, np.ndarray]] = {}  # round -> evaluated global state
        self.scores: dict[str, dict[str, list[float]]] = {}
        self.train_time: dict[str, dict[str, float]] = {}  # platform -> seconds in local epochs, examples trained

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        if cfg.privacy.enabled:
            return self._private_round(state, cfg, rnd)
        states, weights, info = [], [], {}
        for setup in self.setups:
            new_state, metrics = fit(cfg, setup, state, rnd, self.store(cfg, setup.platform))
            self._count_time(setup.platform, metrics, cfg)
            states.append(new_state)
            weights.append(metrics["num-examples"])
            info[setup.platform] = metrics
        return weighted_average(states, weights), info, []

    def _private_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        """Every platform's noisy contribution, summed here as the secure sum would (``common.privacy``)."""
        shares = min_shares(cfg.secure)
        if len(self.setups) < shares:
            raise PrivacyError(f"{len(self.setups)} platforms add less than the full noise: each adds 1/{shares} "
                               "of it (`secure.min-cohort`); lower `secure.min-cohort`")  # fmt: skip
        summed: dict[str, np.ndarray] = {}
        info: PerPlatform = {}
        for setup in self.setups:
            update, metrics = fit(cfg, setup, state, rnd, self.store(cfg, setup.platform))
            self._count_time(setup.platform, metrics, cfg)
            summed = {k: summed[k] + v for k, v in update.items()} if summed else dict(update)
            info[setup.platform] = metrics
        fused, users = fuse_noisy_sum(state, summed, cfg.privacy.clip)
        info["differential-privacy"] = {"noisy-users": users}
        return fused, info, []

    def _count_time(self, platform: str, metrics: dict[str, float], cfg: AppConfig) -> None:
        spent = self.train_time.setdefault(platform, {"seconds": 0.0, "examples": 0.0})
        spent["seconds"] += metrics.pop("train-seconds", 0.0)  # timing: not in rounds.jsonl (reruns compare it)
        spent["examples"] += metrics["num-examples"] * cfg.train.local_epochs

    def evaluate_round(
        self, state: Tensors, cfg: AppConfig, rnd: int, splits: Sequence[str]
    ) -> tuple[PerPlatform, list[str]]:
        self.states.setdefault(rnd, OrderedDict((k, np.array(v, copy=True)) for k, v in state.items()))
        out: PerPlatform = {}
        for setup in sorted(self.setups, key=lambda s: s.platform):
            scores: dict[str, np.ndarray] = {}
            store = self.store(cfg, setup.platform)
            out[setup.platform] = evaluate_state(cfg, setup, state, rnd, store, splits, scores)
            if "test" in scores:
                self.scores[setup.platform] = {
                    "labels": scores["test.labels"].tolist(),
                    "probs": scores["test"].tolist(),
                }
        return out, []

    def store(self, cfg: AppConfig, platform: str) -> PrivateStore:
        """The platform's store, under the run folder (made on first use, when the run's config is known)."""
        if platform not in self.stores:
            self.stores[platform] = run_store(cfg, platform)
        return self.stores[platform]


def setups_for(
    cfg: AppConfig, platforms: Sequence[str], device: str = "auto", train_fraction: dict[str, float] | None = None
) -> list[NodeSetup]:
    fractions = train_fraction or {}
    return [NodeSetup(p, cfg.data.dir, device, fractions.get(p, 1.0)) for p in platforms]
