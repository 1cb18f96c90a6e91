"""The arms and scenarios of ``crossfed compare`` (does federation pay?), and how one arm trains and scores.

Local-only vs federated vs pooled, on the same splits (the command itself: :mod:`simulations.compare.command`).
Every arm uses the same base model, the same splits (per seed) and the same training
budget per platform (rounds x local epochs x ``train.max-examples``):

- ``local``: each platform alone (:func:`run_federation` over an in-process transport of that one platform);
- ``federated``: all platforms; the shared model (adapter, tower, user, head) fused by example-weighted
  averaging, the private item/user parameters kept per platform (the deployed app, the recommended recipe);
- ``fed+personal``: as federated, with the head private too;
- ``fed+finetune``: the best fused model, then one local epoch per platform;
- ``fed+mix``: per platform, a mix of the fused and its own local model, the share picked on validation;
- ``pooled``: one shared model trained on the union of all platforms' train data (what a privacy law forbids);
- levers: federated (or local) with one setting changed (``fed-text-only``/``local-text-only``: no private
  parameters; ``fed-bias-only``; FedProx, FedAvgM, FedAdam, exact-LoRA ``freeze-a``, ...),
  built in (:data:`simulations.compare.arms.ARMS`) or given as ``--lever NAME:key=value,key=value``;
- no training: ``untrained`` (frozen base + untrained head), ``liked-share``, ``popularity``, ``like-rate``,
  ``content`` (the like-rate of the nearest known item by frozen base-model text vectors: what LoRA
  training adds over frozen text, on new items above all);
- collaborative baselines (no text model, seconds on a CPU): ``mf`` (biased matrix factorisation per
  platform, tuned on validation) and ``mf-central`` (one MF on all platforms, users linked: the upper
  bound a privacy law forbids).

Scenarios: ``full`` (the dataset as given), ``scarce`` (the large platform keeps everything, the
others a seeded ``--scarce-fraction`` of their train examples, validation and test whole; see
:func:`train_fractions`), and two cold-start ones, the dataset as given but split by
``data.cold-start`` (:data:`simulations.compare.arms.SCENARIO_OVERRIDES`): ``new-items`` (a seeded 20 % of each
catalogue never in train; valid and test are the interactions with those items) and ``new-users``
(users absent from train, tested with their first 3 interactions as history, and with 1 and 5:
metrics ``k1.*``, ``k5.*``). Each scenario's dataset is written under ``RUN/data/<scenario>`` and
every run under ``RUN/runs/``; ``report.json``, ``report.md``, ``report.png`` and ``rounds.png``
summarise them (see :mod:`simulations.compare.report`).
"""

from __future__ import annotations

import logging
import math
import os
import platform as pyplatform
import subprocess
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.mix import MIX_SHARES, mix_tensors
from clients.platform import NodeSetup, prepare
from clients.private_state import PrivateStore
from clients.tasks import fit, fit_together
from common.config import AppConfig, ConfigError
from common.data import PlatformData, load_dataset
from common.metrics import add_test_prefix, mean_metrics, strip_test_prefix
from common.modeling import build_scorer, frozen_item_vectors, get_trainable_state, load_base, load_scorer
from common.run_files import ROUNDS_FILE
from server.federation import PerPlatform, Tensors, run_federation
from server.privacy_budget import resolve_delta
from simulations.compare.arms import (
    DATA_SEED,
    DEFAULT_LARGE,
    SCENARIOS,
    Arm,
)
from simulations.compare.baselines import evaluate_baseline, platform_scorers
from simulations.compare.inprocess import InProcessTransport, setups_for

log = logging.getLogger("crossfed.compare")

# --- scenarios ----------------------------------------------------------------------------


def large_platform(source: Mapping[str, PlatformData], requested: str | None) -> str:
    if requested:
        if requested not in source:
            raise ConfigError(f"`--large-platform` {requested!r} is not a platform of the data: {sorted(source)}")
        return requested
    if DEFAULT_LARGE in source:
        return DEFAULT_LARGE
    return max(sorted(source), key=lambda name: source[name].num_users)


def scenario_data(
    source: Mapping[str, PlatformData], scenario: str, large: str, fraction: float, seed: int = DATA_SEED
) -> dict[str, PlatformData]:
    """The data of a scenario: the same for all (``scarce`` thins train examples, see :func:`train_fractions`;
    the cold-start scenarios split it their own way, by run-config overrides)."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"`--scenario`: unknown scenario {scenario!r}, expected one of {', '.join(SCENARIOS)}")
    return dict(source)


def train_fractions(platforms: Sequence[str], scenario: str, large: str, fraction: float) -> dict[str, float]:
    """``scarce``: every platform but ``large`` keeps a seeded ``fraction`` of its TRAIN examples.

    Validation and test stay whole, so each scarce platform is still judged on all its test
    users: a 0.03 AUC difference is resolvable there (a user subsample left ~90 test users).
    """
    if scenario != "scarce":
        return {}
    return {p: fraction for p in platforms if p != large}


def load_source(data: str | None) -> dict[str, PlatformData]:
    if data:
        return load_dataset(Path(data))
    from common.synthetic import make_synthetic

    return make_synthetic(seed=DATA_SEED)


# --- arms ---------------------------------------------------------------------------------


class PooledTransport:
    """The upper bound: one shared model trained on the union of every platform's train data.

    Each round takes the same per-platform subsample a platform would train on
    (``train.max-examples``, seeded by round) and trains once over all of them, batches
    interleaved; each batch uses its own platform's private parameters (item and user ids stay
    platform-local even here). Evaluation is per platform, with the same code as the other arms.
    """

    def __init__(self, setups: Sequence[NodeSetup]) -> None:
        self.setups = list(setups)
        self.scorers = InProcessTransport(setups)  # per-platform private stores and evaluation

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        platforms = [(setup, self.scorers.store(cfg, setup.platform)) for setup in self.setups]
        # its own seed, not clients.tasks.train_seed: kept so that pooled results match earlier runs
        new_state, metrics = fit_together(cfg, platforms, state, rnd, seed=cfg.seed * 1000 + rnd)
        return new_state, {"pooled": metrics}, []

    def evaluate_round(
        self, state: Tensors, cfg: AppConfig, rnd: int, splits: Sequence[str]
    ) -> tuple[PerPlatform, list[str]]:
        return self.scorers.evaluate_round(state, cfg, rnd, splits)


@dataclass
class Record:
    """One arm on one scenario and seed: test metrics per platform (+ ``mean``), wall time, round logs."""

    per_platform: dict[str, dict[str, float]]
    wall_s: float = 0.0
    rounds: list[str] = field(default_factory=list)  # rounds.jsonl paths relative to RUN
    best_round: dict[str, int] = field(default_factory=dict)
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # platform -> test labels, probs
    chosen: dict[str, dict[str, float]] = field(default_factory=dict)  # platform -> settings picked on validation
    train_time: dict[str, dict[str, float]] = field(default_factory=dict)  # platform -> local-epoch seconds, examples

    def with_mean(self) -> dict[str, dict[str, float]]:
        """Per platform plus ``mean``: example-weighted (AUC/log-loss by test n, HR/NDCG by ranked users)."""
        prefixed = {p: add_test_prefix(m) for p, m in self.per_platform.items()}
        return {**self.per_platform, "mean": strip_test_prefix(mean_metrics(prefixed))}


_test_metrics = strip_test_prefix  # test.X -> X, and new users' test-kN.X -> kN.X


def _mixed_eval(
    cfg: AppConfig, setup: NodeSetup, ends: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray] | None]],
    alpha: float, splits: Sequence[str],
) -> tuple[dict[str, float], InProcessTransport]:  # fmt: skip
    """Metrics of alpha * (fused shared, fused private) + (1 - alpha) * (local shared, local private)."""
    (fused, fused_private), (own, own_private) = ends
    transport = InProcessTransport([setup])
    state = mix_tensors(fused, own, alpha)
    transport.stores[setup.platform] = store = PrivateStore(None)
    if fused_private is not None and own_private is not None:
        store.save(0, mix_tensors(fused_private, own_private, alpha))
    out, _ = transport.evaluate_round(state, cfg, 0, splits)
    return out[setup.platform], transport


class ArmRunner:
    """Runs arms for one scenario and seed; remembers the federated arm's best state for fine-tuning."""

    def __init__(
        self, cfg: AppConfig, platforms: Sequence[str], run_root: Path, out: Path, implicit: set[str],
        train_fraction: Mapping[str, float] | None = None,
    ) -> None:  # fmt: skip
        self.cfg, self.platforms, self.run_root, self.out, self.implicit = cfg, list(platforms), run_root, out, implicit
        self.train_fraction = dict(train_fraction or {})
        self.federated: tuple[OrderedDict[str, np.ndarray], int, dict[str, PrivateStore]] | None = None
        self.local: dict[str, tuple[OrderedDict[str, np.ndarray], int, PrivateStore]] = {}  # platform -> best

    def setups(self, cfg: AppConfig, platforms: Sequence[str] | None = None) -> list[NodeSetup]:
        return setups_for(cfg, self.platforms if platforms is None else platforms, train_fraction=self.train_fraction)

    def run(self, arm: Arm) -> Record:
        t0 = time.time()
        record = getattr(self, f"_{arm.kind}")(arm)
        record.wall_s = time.time() - t0
        return record

    def _cfg(self, arm: Arm, *parts: str) -> AppConfig:
        # Every arm starts fresh: private heads and fine-tunes live in memory, not in a checkpoint.
        out = str(self.run_root.joinpath(arm.name, *parts))
        return resolve_delta(self.cfg.replace(**arm.overrides, **{"out-dir": out, "fed.resume": False}))

    def _federated(self, arm: Arm) -> Record:
        cfg = self._cfg(arm)
        transport = InProcessTransport(self.setups(cfg))
        summary = run_federation(transport, cfg)
        if arm.name == "federated":
            best = summary["best_round"]
            self.federated = (transport.states[best], best, {p: s.upto(best) for p, s in transport.stores.items()})
        return Record(summary["test"], rounds=[self._rel(cfg)], best_round={"all": summary["best_round"]},
                      scores=transport.scores, train_time=transport.train_time)  # fmt: skip

    def _local(self, arm: Arm) -> Record:
        per_platform, rounds, best, scores, train_time = {}, [], {}, {}, {}
        for name in self.platforms:
            cfg = self._cfg(arm, name)
            transport = InProcessTransport(self.setups(cfg, [name]))
            summary = run_federation(transport, cfg)
            per_platform[name] = summary["test"][name]
            if arm.name == "local":
                b = summary["best_round"]
                self.local[name] = (transport.states[b], b, transport.stores[name].upto(b))
            scores.update(transport.scores)
            train_time.update(transport.train_time)
            rounds.append(self._rel(cfg))
            best[name] = summary["best_round"]
        return Record(per_platform, rounds=rounds, best_round=best, scores=scores, train_time=train_time)

    def _pooled(self, arm: Arm) -> Record:
        cfg = self._cfg(arm)
        transport = PooledTransport(self.setups(cfg))
        summary = run_federation(transport, cfg)
        return Record(summary["test"], rounds=[self._rel(cfg)], best_round={"all": summary["best_round"]},
                      scores=transport.scorers.scores)  # fmt: skip

    def _finetune(self, arm: Arm) -> Record:
        if self.federated is None:
            raise ConfigError("fed+finetune needs the federated arm to run first")
        state, best, stores = self.federated
        cfg = self.cfg.replace(**{"train.local-epochs": 1, **arm.overrides})
        transport = InProcessTransport(self.setups(cfg))
        transport.stores = {p: s.upto(best) for p, s in stores.items()}
        per_platform = {}
        for setup in transport.setups:
            tuned, _ = fit(cfg, setup, state, best + 1, transport.stores[setup.platform])
            tested, _ = transport.evaluate_round(tuned, cfg, best + 1, ("test",))
            per_platform[setup.platform] = _test_metrics(tested[setup.platform])
        return Record(per_platform, scores=transport.scores)

    def _mix(self, arm: Arm) -> Record:
        """Per platform, the share of the fused model (vs its own local model) that validates best."""
        if self.federated is None or set(self.local) != set(self.platforms):
            raise ConfigError(f"{arm.name} needs the local and federated arms to run first")
        fused, fused_round, fused_stores = self.federated
        cfg = self.cfg.replace(**arm.overrides)
        per_platform, scores, chosen, metric = {}, {}, {}, f"valid.{cfg.fed.metric}"
        sign = -1.0 if cfg.fed.metric == "logloss" else 1.0
        for setup in self.setups(cfg):
            own, own_round, own_store = self.local[setup.platform]
            ends = ((fused, fused_stores[setup.platform].load(fused_round)), (own, own_store.load(own_round)))
            best: tuple[float, float] = (-math.inf, 1.0)
            for alpha in MIX_SHARES:
                valid, _ = _mixed_eval(cfg, setup, ends, alpha, ("valid",))
                best = max(best, (sign * valid.get(metric, -math.inf), alpha))
            tested, transport = _mixed_eval(cfg, setup, ends, best[1], ("test",))
            per_platform[setup.platform] = _test_metrics(tested)
            chosen[setup.platform] = {"fused-share": best[1]}
            scores.update(transport.scores)
        return Record(per_platform, scores=scores, chosen=chosen)

    def _untrained(self, arm: Arm) -> Record:
        scorer, _ = build_scorer(self.cfg.model, self.cfg.lora, self.cfg.seed)
        state = get_trainable_state(scorer)
        del scorer
        transport = InProcessTransport(self.setups(self.cfg))
        tested, _ = transport.evaluate_round(state, self.cfg, 0, ("test",))
        return Record({p: _test_metrics(m) for p, m in tested.items()}, scores=transport.scores)

    def _baseline(self, arm: Arm) -> Record:
        # every platform prepared first: mf-central fits on all of them at once
        _, tokenizer = load_scorer(self.cfg.model, self.cfg.lora, self.cfg.seed)
        cfg = self.cfg.replace(**{"data.train-unseen-negatives": 0})  # baselines fit on real ratings only
        prepared = {
            setup.platform: prepare(setup, cfg.data, cfg.eval.max_rank_users, cfg.seed, tokenizer, cfg.model.max_length)
            for setup in self.setups(cfg)
        }

        def item_vectors(platform: str) -> tuple[list[str], np.ndarray]:  # content: the frozen base, no LoRA
            table = prepared[platform].table
            encoder, _ = load_base(cfg.model.base, cfg.seed)
            return table.ids, frozen_item_vectors(encoder, table.tokens, table.lengths, cfg.eval.batch_size)

        splits = {n: p.splits for n, p in prepared.items()}
        scorers = platform_scorers(arm.name, splits, self.implicit, cfg.seed, item_vectors)
        per_platform, scores = {}, {}
        for name, p in prepared.items():
            per_platform[name] = _test_metrics(evaluate_baseline(scorers[name], p.splits, p.cases))
            probs = [scorers[name](ex, ex.item_id) for ex in p.splits.test]  # the trained arms' test order
            scores[name] = {"labels": [float(ex.label) for ex in p.splits.test], "probs": probs}
        return Record(per_platform, scores=scores)

    def _rel(self, cfg: AppConfig) -> str:
        return str((Path(cfg.out_dir) / ROUNDS_FILE).relative_to(self.out))


# --- the host, for reports ----------------------------------------------------------------


REPO_ROOT = Path(__file__).resolve().parents[2]


def code_version(root: Path = REPO_ROOT) -> dict[str, Any] | None:
    """The commit the comparison ran from, for a report's ``meta`` (``dirty``: tracked files changed since
    that commit, so the commit alone does not reproduce it); None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()  # fmt: skip

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict[str, Any]:
    """The host, for a report's ``meta``: CPU model and cores, GPU, torch and Python versions."""
    import torch

    cpu = pyplatform.processor() or pyplatform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": pyplatform.python_version()}  # fmt: skip
