"""What ``crossfed compare`` can run: its arms, size presets and scenarios (no model code).

Why a module of its own: the command's parser (``crossfed compare --help``), the job planner and
``bench batch`` need the arm table and the presets, not torch; :mod:`simulations.compare.runner` trains
and scores the arms listed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clients.mix import MIX_SHARES
from common.config import AppConfig, ConfigError, parse_overrides

METRICS = ("auc", "logloss", "hr@10", "ndcg@10")
SCENARIOS = ("full", "scarce", "new-items", "new-users")
# Cold-start scenarios: the dataset as given, split by ``data.cold-start`` (new items: a seeded 20 % of each
# catalogue never in train, tested on; new users: absent from train, tested with their first k interactions).
SCENARIO_OVERRIDES: dict[str, dict[str, Any]] = {
    "new-items": {"data.cold-start": "new-items"},
    "new-users": {"data.cold-start": "new-users"},
}
SCENARIO_GROUPS = {"both": ("full", "scarce"), "all": SCENARIOS}  # --scenario shorthands
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
    # CPU (2 cores): the real base on every train row of every platform in every round, every test user
    # ranked. LoRA in the top layer only (the five below run once per item and are cached), history items
    # and 31 of every 32 steps read item texts from a cache refreshed as items are encoded (encoder steps were
    # 2/3 of a unit at every 8th; on validation every 8th and never were equal within 0.001 AUC, both kinds,
    # every scenario, 3 seeds); no LoRA dropout (drawing masks cost a third of a step on a CPU); a quarter
    # of the train rows scored as new items (cold-start dropout: +0.011 validation AUC on same-domain new
    # items, one seed); README "CPU recipe".
    "cpu": {
        "num-server-rounds": 3, "train.max-examples": 0, "eval.max-rank-users": 0, "lora.top-layers": 1,
        "train.item-cache": True, "train.encoder-every": 32, "train.batch-size": 1024, "model.max-length": 32,
        "lora.dropout": 0.0, "train.cold-dropout": 0.25, "eval.batch-size": 1024, "fed.patience": 1,
    },
    # GPU (one H100/H200): every train example every round (5 passes in all), every test user ranked.
    "full": {
        "num-server-rounds": 5, "train.max-examples": 0, "train.batch-size": 256, "eval.max-rank-users": 0,
        "eval.batch-size": 1024, "fed.patience": 2,
    },
}  # fmt: skip
# share of train examples a scarce platform keeps (ci: tiny shops)
SCARCE_FRACTION = {"ci": 0.4, "cpu": 0.1, "full": 0.1}


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


DP_EPSILONS = (1, 4, 8)  # dp-eps1, dp-eps4, dp-eps8: the cost of user-level differential privacy
# What a DP run needs: a secure-aggregation grid with room for every user's summed contribution and the noise's
# headroom on each side (common.privacy.Mechanism.box), with a step far below the noise (quant-bits 32 still fits
# the overflow check at max-weight 1e6, 1024 platforms); no item statistics (they mix users). Clip and server
# rate chosen on validation (genre platforms, full size, epsilon 8, one seed; results/dp-cpu-sgd-2026-12-07): a
# user's one SGD step at rate 1 has median norm ~0.25 at the start, so clip 0.25; the fused mean is then one
# full-batch gradient step of the shared model, taken at server rate 3 (1, 10, 30, 100 validated lower).
DP_SETTINGS = {"secure.clip-range": 512.0, "secure.quant-bits": 32, "model.item-stats": False,
               "privacy.clip": 0.25, "privacy.user-lr": 1.0, "fed.server-lr": 3.0}  # fmt: skip
ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("local", "local", about="each platform trains alone on its own data (same rounds/epochs)"),
    Arm("federated", "federated", about="all platforms: shared adapter + tower + head fused by example-weighted "
        "averaging; private item/user biases and vectors stay on each platform (the recommended recipe)"),
    Arm("fed+personal", "federated", {"model.private-head": True},
        about="as federated, and the head is private too (FedPer)"),
    Arm("fed+finetune", "finetune", about="best fused model, then 1 local epoch per platform"),
    Arm("fed+mix", "mix", about="personalised mixing: per platform, a * fused + (1 - a) * its local model over every "
        f"shared and private tensor, a in {{{', '.join(map(str, MIX_SHARES))}}} picked on validation"),
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
    *(Arm(f"dp-eps{eps:g}", "federated", {"privacy.target-epsilon": float(eps), **DP_SETTINGS},
          about=f"federated with user-level differential privacy, epsilon {eps:g} over the run (delta 1/N users, "
          "no item statistics; each user's SGD step clipped to 0.25, server rate 3): per-user clipped updates, "
          "discrete Gaussian noise shared among the platforms")
      for eps in DP_EPSILONS),
    Arm("untrained", "untrained", about="frozen base + untrained LoRA and head (seeded init)"),
    Arm("liked-share", "baseline", about="share of liked items in the user's history (0.5 if empty)"),
    Arm("popularity", "baseline", about="item's train interaction count (logistic-calibrated)"),
    Arm("like-rate", "baseline", about="item's smoothed train like-rate"),
    Arm("content", "baseline", about="like-rate of the nearest known item (one with train interactions) by cosine "
        "similarity of frozen base-model text vectors (mean-pooled, no LoRA, no training): what training adds "
        "over frozen text on new items"),
    Arm("mf", "baseline", about="biased matrix factorisation per platform (global + user + item bias + "
        "latent factors, logistic loss) on the train split; dim, weight decay, epochs tuned on validation"),
    Arm("mf-central", "baseline", about="one biased MF on all platforms' train splits, users linked across "
        "platforms, tuned on validation: upper bound a privacy law forbids: raw data and user ids pooled"),
)}  # fmt: skip
MAIN_ARMS = ("local", "federated", "fed+personal", "fed+finetune", "fed+mix", "pooled")
LEVER_ARMS = ("fed+private-b", "fed-text-only", "local-text-only", "fed-bias-only", "like-only", "no-item-stats",
              "history-grad", "fedprox", "fedavgm", "fedadam", "freeze-a")  # fmt: skip
DP_ARMS = tuple(f"dp-eps{eps:g}" for eps in DP_EPSILONS)  # named with --arms, not in the default set
BASELINE_ARMS = ("untrained", "liked-share", "popularity", "like-rate", "content", "mf", "mf-central")
DEFAULT_ARMS = (*MAIN_ARMS, *LEVER_ARMS, *BASELINE_ARMS)


def parse_scenarios(spec: str) -> list[str]:
    """``--scenario``: one name, a comma list (``full,scarce,new-items``), ``both`` (full, scarce) or ``all``;
    in the given order, each once."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in SCENARIO_GROUPS.get(part, (part,)):
            if name not in SCENARIOS:
                raise ConfigError(f"`--scenario`: unknown scenario {name!r}, expected a comma list of "
                                  f"{', '.join(SCENARIOS)}, or {' / '.join(SCENARIO_GROUPS)}")  # fmt: skip
            if name not in names:
                names.append(name)
    return names


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
