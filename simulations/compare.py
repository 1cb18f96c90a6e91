"""The arms and scenarios of ``crossfed compare`` (does federation pay?), and how one arm trains and scores.

Local-only vs federated vs pooled, on the same splits (the command itself: :mod:`simulations.compare_run`).
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
  built in (see ``ARMS``) or given as ``--lever NAME:key=value,key=value``;
- no training: ``untrained`` (frozen base + untrained head), ``liked-share``, ``popularity``, ``like-rate``;
- collaborative baselines (no text model, seconds on a CPU): ``mf`` (biased matrix factorisation per
  platform, tuned on validation) and ``mf-central`` (one MF on all platforms, users linked: the upper
  bound a privacy law forbids).

Scenarios: ``full`` (the dataset as given) and ``scarce`` (the large platform keeps everything, the
others a seeded ``--scarce-fraction`` of their train examples, validation and test whole; see
:func:`train_fractions`). Each
scenario's dataset is written under ``RUN/data/<scenario>`` and every run under ``RUN/runs/``;
``report.json``, ``report.md``, ``report.png`` and ``rounds.png`` summarise them (see
:mod:`simulations.report`).
"""

from __future__ import annotations

import logging
import math
import os
import platform as pyplatform
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.platform import NodeSetup, prepare
from clients.private_state import PrivateStore
from clients.tasks import fit, fit_together
from common.config import AppConfig, ConfigError, parse_overrides
from common.data import PlatformData, load_dataset
from common.fusion import weighted_average
from common.metrics import mean_metrics
from common.modeling import build_scorer, get_trainable_state, load_scorer
from common.run_files import ROUNDS_FILE
from server.federation import PerPlatform, Tensors, run_federation
from simulations.baselines import evaluate_baseline, platform_scorers
from simulations.inprocess import InProcessTransport, setups_for

log = logging.getLogger("crossfed.compare")

METRICS = ("auc", "logloss", "hr@10", "ndcg@10")
SCENARIOS = ("full", "scarce")
REPLOT_S = 60.0  # during a run, report.json/md follow every unit, the plots at most this often
KINDS = ("cross", "same")  # cross-domain genre platforms (ML-100K genres) | same-domain shops (users split)
DATA_SEED = 0  # the scarce subsample is one fixed dataset; seeds vary the model, sampling and training order
DEFAULT_LARGE = "P1_action_scifi"  # ML-100K genre platforms: the one that stays large in the scarce scenario

# Size presets: flat run-config overrides (``--set`` wins over them).
SIZES: dict[str, dict[str, Any]] = {
    # CI smoke test: minutes on 2 CPUs with --base-model tiny-random; no quality claim.
    "ci": {
        "num-server-rounds": 2, "data.max-users": 20, "data.history-len": 3, "model.max-length": 16,
        "model.dim": 16, "lora.r": 4, "train.max-examples": 64, "train.batch-size": 16, "eval.max-rank-users": 4,
        "eval.batch-size": 64,
    },
    # GPU (one H100/H200): every train example every round (5 passes in all), every test user ranked.
    "full": {
        "num-server-rounds": 5, "train.max-examples": 0, "train.batch-size": 256, "eval.max-rank-users": 0,
        "eval.batch-size": 1024, "fed.patience": 2,
    },
}  # fmt: skip
SCARCE_FRACTION = {"ci": 0.4, "full": 0.1}  # share of train examples a scarce platform keeps (ci: tiny shops)


@dataclass(frozen=True)
class Arm:
    """One way to train (or not) and score every platform."""

    name: str
    kind: str  # local | federated | finetune | mix | pooled | untrained | baseline
    overrides: Mapping[str, Any] = field(default_factory=dict)
    about: str = ""

    @property
    def trained(self) -> bool:
        return self.kind not in ("untrained", "baseline")


MIX_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fed+mix: share of the fused model, picked per platform on validation
ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("local", "local", about="each platform trains alone on its own data (same rounds/epochs)"),
    Arm("federated", "federated", about="all platforms: shared adapter + tower + head fused by example-weighted "
        "averaging; private item/user biases and vectors stay on each platform (the recommended recipe)"),
    Arm("fed+personal", "federated", {"model.private-head": True},
        about="as federated, and the head is private too (FedPer)"),
    Arm("fed+finetune", "finetune", about="best fused model, then 1 local epoch per platform"),
    Arm("fed+mix", "mix", about="personalised mixing: per platform, a * fused + (1 - a) * its local model over every "
        f"shared and private tensor, a in {{{', '.join(map(str, MIX_ALPHAS))}}} picked on validation"),
    Arm("pooled", "pooled", about="one shared model on the union of all platforms' train data (upper bound)"),
    Arm("fed+private-b", "federated", {"lora.private-b": True},
        about="a private share of the adapter: every LoRA B stays on its platform, only A is fused (FedSA-LoRA)"),
    Arm("fed-text-only", "federated", {"model.private": "none"},
        about="federated without private parameters: the fused text model alone"),
    Arm("local-text-only", "local", {"model.private": "none"}, about="local without private parameters"),
    Arm("fed-bias-only", "federated", {"model.private": "bias"}, about="private item/user biases, no private vectors"),
    Arm("fedprox", "federated", {"train.proximal-mu": 0.01}, about="FedProx, mu = 0.01"),
    Arm("fedavgm", "federated", {"fed.server-momentum": 0.9}, about="FedAvgM, server momentum 0.9, server lr 1"),
    Arm("fedadam", "federated", {"fed.optimizer": "adam", "fed.server-lr": 0.01},
        about="FedAdam, server lr 0.01, betas (0.9, 0.99), tau 1e-3"),
    Arm("freeze-a", "federated", {"lora.freeze-a": True},
        about="exact LoRA fusion: A frozen at its seeded init, fused B.A = mean of the platforms' B.A"),
    Arm("no-item-stats", "federated", {"model.item-stats": False},
        about="federated without the item statistics (train count, like-rate) as head features"),
    Arm("history-grad", "federated", {"train.history-grad": True},
        about="encoder gradients through history-only items too (the default encodes them without gradient)"),
    Arm("like-only", "federated", {"model.pick-head": False, "data.train-unseen-negatives": 0},
        about="federated with the like output only, trained on real ratings (no pick output, no unrated rows)"),
    Arm("no-dropout", "federated", {"lora.dropout": 0.0, "model.head-dropout": 0.0}, about="no dropout"),
    Arm("wd0.1", "federated", {"train.weight-decay": 0.1}, about="weight decay 0.1 (default 0.01)"),
    Arm("no-early-stop", "federated", {"fed.patience": 0}, about="every round, best round still by validation"),
    Arm("untrained", "untrained", about="frozen base + untrained LoRA and head (seeded init)"),
    Arm("liked-share", "baseline", about="share of liked items in the user's history (0.5 if empty)"),
    Arm("popularity", "baseline", about="item's train interaction count (logistic-calibrated)"),
    Arm("like-rate", "baseline", about="item's smoothed train like-rate"),
    Arm("mf", "baseline", about="biased matrix factorisation per platform (global + user + item bias + "
        "latent factors, logistic loss) on the train split; dim, weight decay, epochs tuned on validation"),
    Arm("mf-central", "baseline", about="one biased MF on all platforms' train splits, users linked across "
        "platforms, tuned on validation: upper bound a privacy law forbids: raw data and user ids pooled"),
)}  # fmt: skip
MAIN_ARMS = ("local", "federated", "fed+personal", "fed+finetune", "fed+mix", "pooled")
LEVER_ARMS = ("fed+private-b", "fed-text-only", "local-text-only", "fed-bias-only", "like-only", "no-item-stats",
              "history-grad", "fedprox", "fedavgm", "fedadam", "freeze-a")  # fmt: skip
BASELINE_ARMS = ("untrained", "liked-share", "popularity", "like-rate", "mf", "mf-central")
DEFAULT_ARMS = (*MAIN_ARMS, *LEVER_ARMS, *BASELINE_ARMS)


def parse_lever(spec: str) -> Arm:
    """``NAME:key=value,key=value`` -> a federated arm with those run-config overrides."""

    name, sep, rest = spec.partition(":")
    if not sep or not name.strip() or not rest.strip():
        raise ConfigError(f"`--lever {spec}`: expected NAME:key=value[,key=value...]")
    overrides = parse_overrides([p for p in rest.split(",") if p.strip()])
    AppConfig().replace(**overrides)  # a typo'd key fails here, before anything runs
    return Arm(name.strip(), "federated", overrides, about=", ".join(f"{k}={v}" for k, v in overrides.items()))


def resolve_arms(names: Sequence[str], levers: Sequence[str], extra: Sequence[Arm] = ()) -> list[Arm]:
    """Named arms, then ``--lever`` arms, then ``extra`` arms built by a caller (e.g. ``bench batch``'s
    local arms, one per batch size), checked together."""
    arms: list[Arm] = []
    for name in names:
        if name not in ARMS:
            raise ConfigError(f"`--arms`: unknown arm {name!r}, expected some of {', '.join(ARMS)}")
        arms.append(ARMS[name])
    arms += [parse_lever(spec) for spec in levers]
    arms += list(extra)
    if len({a.name for a in arms}) != len(arms):
        raise ConfigError(f"`--arms`/`--lever`: arm names must be unique, got {[a.name for a in arms]}")
    names = {a.name for a in arms}
    if any(a.kind == "finetune" for a in arms) and "federated" not in names:
        raise ConfigError("`--arms`: fed+finetune starts from the federated arm's best adapter; add `federated`")
    if any(a.kind == "mix" for a in arms) and not {"federated", "local"} <= names:
        raise ConfigError("`--arms`: fed+mix mixes the federated and the local arms' models; add both")
    # trained arms in the given order, the arms built on them after (they need `federated`), cheap baselines last
    return sorted(arms, key=lambda a: (not a.trained, a.kind in ("finetune", "mix")))


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
    """The data of a scenario: the same for both (``scarce`` thins train examples, see :func:`train_fractions`)."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"`--scenario` must be full, scarce or both, got {scenario!r}")
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
        prefixed = {p: {f"test.{k}": v for k, v in m.items()} for p, m in self.per_platform.items()}
        mean = {k.removeprefix("test."): v for k, v in mean_metrics(prefixed).items() if k.startswith("test.")}
        return {**self.per_platform, "mean": mean}


def _test_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k.removeprefix("test."): float(v) for k, v in metrics.items() if k.startswith("test.")}


def _mixed_eval(
    cfg: AppConfig, setup: NodeSetup, ends: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray] | None]],
    alpha: float, splits: Sequence[str],
) -> tuple[dict[str, float], InProcessTransport]:  # fmt: skip
    """Metrics of alpha * (fused shared, fused private) + (1 - alpha) * (local shared, local private)."""
    (fused, fused_private), (own, own_private) = ends
    transport = InProcessTransport([setup])
    state = weighted_average([fused, own], [alpha, 1.0 - alpha])
    transport.stores[setup.platform] = store = PrivateStore(None)
    if fused_private is not None and own_private is not None:
        store.save(0, weighted_average([fused_private, own_private], [alpha, 1.0 - alpha]))
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
        return self.cfg.replace(**arm.overrides, **{"out-dir": out, "fed.resume": False})

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
            for alpha in MIX_ALPHAS:
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
        scorers = platform_scorers(arm.name, {n: p.splits for n, p in prepared.items()}, self.implicit, cfg.seed)
        per_platform, scores = {}, {}
        for name, p in prepared.items():
            per_platform[name] = _test_metrics(evaluate_baseline(scorers[name], p.splits, p.cases))
            probs = [scorers[name](ex, ex.item_id) for ex in p.splits.test]  # the trained arms' test order
            scores[name] = {"labels": [float(ex.label) for ex in p.splits.test], "probs": probs}
        return Record(per_platform, scores=scores)

    def _rel(self, cfg: AppConfig) -> str:
        return str((Path(cfg.out_dir) / ROUNDS_FILE).relative_to(self.out))


# --- the host, for reports ----------------------------------------------------------------


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
