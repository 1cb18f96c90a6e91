"""A platform's own privacy budget: what it refuses whatever run config the server sends.

The run config (``privacy.*``, ``num-server-rounds``) comes from the server, which may lie: a
higher target epsilon, a larger delta, or more rounds than it calibrated for all mean less noise
per round. A platform that pins ``privacy-max-epsilon`` (and ``privacy-max-delta``) in its
node_config keeps its own ledger of the noise multiplier of every DP round it trained for in this
run, with the user sampling rate it applied (beside its private parameters; in ``context.state``
when simulated), and refuses a round that would take its users past that budget by its own
accounting (``common.privacy.epsilon_spent``), or a run whose delta exceeds its maximum, or a run
without differential privacy at all. A round
is written into the ledger before the platform trains, so an aborted or retried round still counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context

from common.config import AppConfig, ConfigError
from common.files import atomic_write_text
from common.privacy import TAIL_SHARE, epsilon_spent, saved_rates

MAX_EPSILON_KEY = "privacy-max-epsilon"  # node_config: this platform's budget for one run (unset: the run's)
MAX_DELTA_KEY = "privacy-max-delta"  # node_config: the largest delta it accepts
LEDGER_FILE = "privacy-ledger.json"
MEMORY_LEDGER = "privacy-ledger"  # context.state ConfigRecord {"rounds": [...], "multipliers": [...], "rates": [...]}


def _limit(node_config: Mapping[str, object], key: str) -> float | None:
    if key not in node_config:
        return None
    try:
        value = float(node_config[key])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"node_config `{key}` must be a number, got {node_config[key]!r}") from None
    if not value > 0:
        raise ConfigError(f"node_config `{key}` must be positive, got {value}")
    return value


Ledger = tuple[list[int], list[float], list[float]]  # rounds, noise multipliers, user sampling rates


def _parse(data: Mapping[str, object]) -> Ledger:
    """A ledger written before user sampling existed has no ``rates``: its rounds took every user."""
    rounds = [int(r) for r in data["rounds"]]  # type: ignore[attr-defined]
    multipliers = [float(z) for z in data["multipliers"]]  # type: ignore[attr-defined]
    if len(rounds) != len(multipliers):
        raise ValueError(f"{len(rounds)} rounds, {len(multipliers)} multipliers")
    return rounds, multipliers, saved_rates(len(multipliers), data.get("rates"))  # type: ignore[arg-type]


def _read(context: Context, folder: Path | None) -> Ledger:
    if folder is None:
        saved = context.state.get(MEMORY_LEDGER)
        return _parse(saved) if isinstance(saved, ConfigRecord) else ([], [], [])
    path = folder / LEDGER_FILE
    if not path.exists():
        return [], [], []
    try:
        return _parse(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: unreadable privacy ledger ({exc}); refusing to train") from None


def require_privacy(node_config: Mapping[str, object], cfg: AppConfig) -> None:
    """ConfigError when the platform pins a budget and the run has no differential privacy."""
    pinned = [key for key in (MAX_EPSILON_KEY, MAX_DELTA_KEY) if _limit(node_config, key) is not None]
    if pinned and not cfg.privacy.enabled:
        raise ConfigError(f"this platform trains only with differential privacy (node_config `{pinned[0]}`)")


def spend_round(
    context: Context, folder: Path | None, cfg: AppConfig, rnd: int, multiplier: float, user_rate: float = 1.0
) -> float:
    """Check this DP round (noise ``multiplier``, users sampled at ``user_rate``: what this platform itself will
    do) against the platform's own budget, then write it into the ledger; epsilon after it.

    ConfigError, naming the node_config key, when the platform's limits refuse the round.
    """
    max_eps = _limit(context.node_config, MAX_EPSILON_KEY)
    max_delta = _limit(context.node_config, MAX_DELTA_KEY)
    if max_delta is not None and cfg.privacy.delta > max_delta:
        raise ConfigError(f"the run's privacy.delta {cfg.privacy.delta:g} exceeds this platform's `{MAX_DELTA_KEY}` "
                          f"{max_delta:g}")  # fmt: skip
    rounds, multipliers, rates = _read(context, folder)  # a round number seen before (a retried round) counts again
    multipliers, rates = [*multipliers, multiplier], [*rates, user_rate]
    after = epsilon_spent(multipliers, (1.0 - TAIL_SHARE) * cfg.privacy.delta, user_rates=rates)
    if max_eps is not None and after > max_eps:
        raise ConfigError(f"round {rnd} would take this platform's users to epsilon {after:.4g}, past its "
                          f"`{MAX_EPSILON_KEY}` {max_eps:g} ({len(rounds)} rounds spent)")  # fmt: skip
    ledger = {"rounds": [*rounds, rnd], "multipliers": multipliers, "rates": rates}
    if folder is None:
        context.state[MEMORY_LEDGER] = ConfigRecord(ledger)
    else:
        atomic_write_text(folder / LEDGER_FILE, json.dumps(ledger), fsync=True)
    return after
