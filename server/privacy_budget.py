"""The coordinator's privacy ledger: epsilon spent per round, and no round past the budget.

Every round that was started counts, aborted ones too: a platform may have sent its masked input
before the abort, and the server cannot prove it did not unmask it. The ledger keeps the noise
multiplier and user sampling rate each round used (it is checkpointed), so a resumed run with more ``num-server-rounds``
is accounted with what its earlier rounds really added; a round that would take epsilon past
``privacy.target-epsilon`` is not run.

The numbers are the guarantee every sum carries at least (its noise comes from at least n_min
platforms); the platforms add their noise themselves, so this report is not what protects them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import AppConfig
from common.data import load_dataset
from common.privacy import TAIL_SHARE, Mechanism, epsilon_spent, run_mechanism, saved_rates

log = logging.getLogger("crossfed.server")


def count_users(cfg: AppConfig) -> int:
    """N: the users of every platform of a simulated federation's data, a user of two platforms counted twice
    (the unit is one user of one platform); ``data.max-users`` caps each platform as the split does."""
    if cfg.data.dir:
        platforms = load_dataset(Path(cfg.data.dir), rating_scale=cfg.data.scale)
    else:
        from common.synthetic import make_synthetic

        platforms = make_synthetic(seed=cfg.seed)
    total = 0
    for data in platforms.values():
        users = len({row.user_id for row in data.interactions})
        total += min(users, cfg.data.max_users) if cfg.data.max_users else users
    return total


def resolve_delta(cfg: AppConfig, users: int | None = None) -> AppConfig:
    """``cfg`` with ``privacy.delta`` = 1/N when it is 0 (N = :func:`count_users` unless given)."""
    if not cfg.privacy.enabled or cfg.privacy.delta > 0:
        return cfg
    n = count_users(cfg) if users is None else users
    if n < 2:
        raise ValueError(f"privacy.delta = 1/N needs N >= 2 users, the data has {n}")
    return cfg.replace(**{"privacy.delta": 1.0 / n})


@dataclass
class PrivacyLedger:
    """The noise multiplier of every round started so far, and the run's mechanism."""

    mech: Mechanism
    target: float
    multipliers: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # each round's user sampling rate (1: every user)

    @classmethod
    def start(
        cls, cfg: AppConfig, state: Mapping[str, np.ndarray], spent: Sequence[float] = (),
        rates: Sequence[float] | None = None,
    ) -> PrivacyLedger:  # fmt: skip
        """The run's ledger; ``spent``/``rates``: a resumed run's earlier rounds (``rates`` None: saved before
        sampling existed, every user; :func:`common.privacy.saved_rates`)."""
        mech = run_mechanism(cfg, int(sum(np.size(v) for v in state.values())) + 1)
        return cls(mech, cfg.privacy.target_epsilon, list(spent), saved_rates(len(spent), rates))

    def epsilon(self, multipliers: Sequence[float] | None = None, rates: Sequence[float] | None = None) -> float:
        """epsilon at the run's delta (the share of delta the tail bound takes is set aside)."""
        spent = self.multipliers if multipliers is None else multipliers
        sampled = self.rates if rates is None else rates
        return epsilon_spent(spent, (1.0 - TAIL_SHARE) * self.mech.delta, user_rates=sampled)

    def allows_next(self) -> bool:
        """Whether one more round stays within ``privacy.target-epsilon``."""
        after = self.epsilon([*self.multipliers, self.mech.noise_multiplier], [*self.rates, self.mech.user_rate])
        return after <= self.target

    def spend(self) -> dict[str, float]:
        """Count one round; its record for rounds.jsonl."""
        self.multipliers.append(self.mech.noise_multiplier)
        self.rates.append(self.mech.user_rate)
        return self.report()

    def report(self) -> dict[str, float]:
        return {
            "epsilon": self.epsilon(), "delta": self.mech.delta, "target-epsilon": self.target,
            "rounds": float(len(self.multipliers)), "noise-multiplier": self.mech.noise_multiplier,
            "clip": self.mech.clip, "noise-std": self.mech.sigma, "min-noise-shares": float(self.mech.n_min),
            "user-rate": self.mech.user_rate,
        }  # fmt: skip
