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
from common.modeling import HEAD_PREFIX
from server.federation import PerPlatform, Tensors


class InProcessTransport:
    """Train and evaluate each platform in turn, in this process.

    ``personal_head``: every platform keeps a private head that never leaves it. The fused
    adapter arrives with the global head, the platform swaps in its own head, trains both
    locally, keeps the new head and sends back only the adapter (the head it received goes
    back unchanged, so the fused head stays the initial one). Evaluation uses the platform's
    own head on top of the fused adapter.

    ``states`` keeps the global state evaluated in each round (the comparison harness
    fine-tunes from the best one).
    """

    def __init__(self, setups: Sequence[NodeSetup], personal_head: bool = False) -> None:
        self.setups = list(setups)
        self.personal_head = personal_head
        self.heads: dict[str, dict[str, np.ndarray]] = {}  # platform -> its private head tensors
        self.states: dict[int, OrderedDict[str, np.ndarray]] = {}  # round -> evaluated global state
        self.heads_at: dict[int, dict[str, dict[str, np.ndarray]]] = {}  # round -> private heads then

    def local_state(
        self, state: Tensors, platform: str, heads: dict[str, dict[str, np.ndarray]] | None = None
    ) -> OrderedDict[str, np.ndarray]:
        """``state`` as this platform uses it: with its private head when it has one."""
        own = (self.heads if heads is None else heads).get(platform, {}) if self.personal_head else {}
        return OrderedDict((k, own.get(k, v)) for k, v in state.items())

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        states, weights, info = [], [], {}
        for setup in self.setups:
            new_state, metrics = fit(cfg, setup, self.local_state(state, setup.platform), rnd)
            if self.personal_head:  # keep the trained head here; the adapter alone travels
                self.heads[setup.platform] = {k: v for k, v in new_state.items() if k.startswith(HEAD_PREFIX)}
                new_state = OrderedDict((k, state[k] if k.startswith(HEAD_PREFIX) else v) for k, v in new_state.items())
            states.append(new_state)
            weights.append(metrics["num-examples"])
            info[setup.platform] = metrics
        return weighted_average(states, weights), info, []

    def evaluate_round(
        self, state: Tensors, cfg: AppConfig, rnd: int, splits: Sequence[str]
    ) -> tuple[PerPlatform, list[str]]:
        if rnd not in self.states:  # first evaluation of this round: remember its state and the heads of then
            self.states[rnd] = OrderedDict((k, np.array(v, copy=True)) for k, v in state.items())
            self.heads_at[rnd] = dict(self.heads)
        heads = self.heads_at[rnd]  # the final test of the best round uses that round's private heads
        setups = sorted(self.setups, key=lambda s: s.platform)
        return {
            s.platform: evaluate_state(cfg, s, self.local_state(state, s.platform, heads), splits) for s in setups
        }, []


def setups_for(cfg: AppConfig, platforms: Sequence[str], device: str = "auto") -> list[NodeSetup]:
    return [NodeSetup(platform=p, data_dir=cfg.data.dir, device=device) for p in platforms]
