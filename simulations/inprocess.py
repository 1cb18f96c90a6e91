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
from clients.tasks import evaluate_state, fit
from common.config import AppConfig
from common.fusion import weighted_average
from server.federation import PerPlatform, Tensors


class InProcessTransport:
    """Train and evaluate each platform in turn, in this process."""

    def __init__(self, setups: Sequence[NodeSetup]) -> None:
        self.setups = list(setups)

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        states, weights, info = [], [], {}
        for setup in self.setups:
            new_state, metrics = fit(cfg, setup, state, rnd)
            states.append(new_state)
            weights.append(metrics["num-examples"])
            info[setup.platform] = metrics
        return weighted_average(states, weights), info, []

    def evaluate_round(self, state: Tensors, cfg: AppConfig, rnd: int) -> tuple[PerPlatform, list[str]]:
        return {s.platform: evaluate_state(cfg, s, state) for s in sorted(self.setups, key=lambda s: s.platform)}, []


def setups_for(cfg: AppConfig, platforms: Sequence[str], device: str = "auto") -> list[NodeSetup]:
    return [NodeSetup(platform=p, data_dir=cfg.data.dir, device=device) for p in platforms]
