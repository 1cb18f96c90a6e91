"""Run configuration: one set of dataclasses, built from Flower's flat run_config; its text both ways.

Flower passes configuration as flat kebab-case scalars (``lora.r = 8``,
``train.local-epochs = 1``) from ``[tool.flwr.app.config]`` plus ``--run-config``
overrides. Both the ServerApp and the ClientApp turn that dict into the typed
:class:`AppConfig` below, so a typo'd key or a wrong type fails loudly in one
place instead of silently falling back to a default.

Key mapping: section ``train`` + field ``local_epochs`` <-> ``train.local-epochs``;
top-level fields have no prefix (``num-server-rounds``).

The text form lives here too: :func:`parse_overrides` reads ``key=value`` pairs (``--set``),
:func:`parse_config_strings` Flower's ``--run-config`` / ``--node-config`` strings, :func:`toml_value` /
:func:`config_string` write them, and :data:`TINY_PRESET` is the run every test and smoke benchmark shrinks to.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from common.data import parse_rating_scale

Scalar = bool | int | float | str
PRIVATE_KINDS = ("embed", "bias", "none")
TINY_BASE = "tiny-random"  # `model.base` of a 2-layer, 32-wide random BERT built in memory (tests, CI)
# A run that takes seconds on a CPU: tests and smoke benchmarks start from it (and add rounds, secagg...).
TINY_PRESET: dict[str, Scalar] = {
    "model.base": TINY_BASE, "model.max-length": 48, "data.history-len": 3, "lora.r": 4,
    "train.max-examples": 64, "train.batch-size": 16, "eval.max-rank-users": 3,
}  # fmt: skip
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")  # train.compile: eager or a torch.compile mode
COLD_STARTS = ("", "new-items", "new-users")  # data.cold-start: "" = leave-last-out (see common.splits)
# data.new-user-history: the history sizes a new user's test examples are scored with (``test-k1``, ...);
# declared here rather than in common.splits so the run config can bound the setting without an import cycle
NEW_USER_KS = (1, 3, 5)


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


@dataclass(frozen=True)
class ModelSpec:
    """Which transformer to adapt, and how text is fed to it."""

    base: str = "default"  # "default" = bundled all-MiniLM-L6-v2; "tiny-random"; or any local HF path
    max_length: int = 64  # tokens of one item's text (title + description); longer texts are cut
    head_dropout: float = 0.1
    dim: int = 64  # item and user vector size
    private: str = "embed"  # per-platform parameters that never leave: "embed" (biases + vectors), "bias", "none"
    private_head: bool = False  # keep the scoring head private too (FedPer); else it is fused with the rest
    pick_head: bool = True  # a second output, "would the user pick this item at all"; ranking uses both
    item_stats: bool = True  # the head also sees the candidate's train count and like-rate on this platform

    def __post_init__(self) -> None:
        _positive(self, "max_length", "model.max-length")
        _fraction(self, "head_dropout", "model.head-dropout")
        _positive(self, "dim", "model.dim")
        if self.private not in PRIVATE_KINDS:
            raise ConfigError(f"`model.private` must be one of {', '.join(PRIVATE_KINDS)}, got {self.private!r}")


@dataclass(frozen=True)
class LoraSpec:
    """peft LoRA settings; ``target_modules`` is a comma-separated list of module names."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: str = "query,key,value,dense"
    freeze_a: bool = False  # exact-LoRA fusion: A stays at its seeded init, only B trains (fused B.A = mean of B_i.A)
    private_b: bool = False  # keep every LoRA B private, fuse only A (FedSA-LoRA): a private share of the adapter
    # 0: LoRA in every layer; N > 0: only in the top N layers (peft ``layers_to_transform``). The layers below
    # are then frozen, so each item's state after them is computed once per process and cached (the CPU recipe)
    top_layers: int = 0

    def __post_init__(self) -> None:
        _positive(self, "r", "lora.r")
        _non_negative(self, "top_layers", "lora.top-layers")
        _positive(self, "alpha", "lora.alpha")
        _fraction(self, "dropout", "lora.dropout")
        if not self.modules:
            raise ConfigError("`lora.target-modules` must name at least one module, got ''")

    @property
    def modules(self) -> list[str]:
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


@dataclass(frozen=True)
class TrainSpec:
    """Local training on one platform per round (AdamW + BCE)."""

    local_epochs: int = 1
    lr: float = 1e-3  # shared model (LoRA, tower, user, head)
    batch_size: int = 128
    weight_decay: float = 0.01
    private_lr: float = 1e-2  # private item/user biases and vectors: sparse rows need a larger step
    private_weight_decay: float = 0.01
    max_examples: int = 2000  # 0 = the whole train split; else a seeded subsample per round (CPU default)
    proximal_mu: float = 0.0  # FedProx term mu/2 * ||w - w_global||^2 on the shared tensors; 0 disables it
    pick_weight: float = 1.0  # weight of the pick output's loss (rated vs unrated rows) next to the like loss
    history_grad: bool = False  # True: encoder gradients through history-only items too (~1.5x slower steps)
    # torch.compile the text encoder (training and inference) over a few fixed shapes: "off" (eager),
    # "default", "reduce-overhead" (CUDA graphs), "max-autotune"; the first steps pay the compile time
    compile: str = "off"
    # Item cache (the CPU recipe): history-only items, and candidates on steps without the encoder, read their
    # pooled text state from a cache filled at the start of each local training and refreshed whenever an item
    # is encoded again; only the tower, the head and the private parts then run for them.
    item_cache: bool = False
    # The encoder (LoRA) runs with gradient on every k-th step only, the other steps train the tower, head and
    # private parts on cached text (so k != 1 turns the item cache on); 0 = never (frozen base: LoRA keeps its init)
    encoder_every: int = 1
    # Share of train rows whose candidate is scored as a NEW item: its private item parameters and train
    # statistics hidden, so the shared model learns to score from text alone (DropoutNet-style cold start).
    cold_dropout: float = 0.0
    # Share of train rows scored as a NEW user's: the user's private vector and bias hidden, the history cut to
    # its oldest k interactions, k drawn in 1..max(NEW_USER_KS), so the shared model learns to read the short
    # history of a user who never trained (the new-users scenario) instead of leaning on private user parts.
    new_user_dropout: float = 0.0

    @property
    def uses_item_cache(self) -> bool:
        """Whether local training keeps the item cache: asked for, or needed by steps without the encoder."""
        return self.item_cache or self.encoder_every != 1

    def __post_init__(self) -> None:
        _positive(self, "local_epochs", "train.local-epochs")
        _non_negative(self, "encoder_every", "train.encoder-every")
        _fraction(self, "cold_dropout", "train.cold-dropout")
        _fraction(self, "new_user_dropout", "train.new-user-dropout")

        _positive(self, "lr", "train.lr")
        _positive(self, "batch_size", "train.batch-size")
        _non_negative(self, "weight_decay", "train.weight-decay")
        _positive(self, "private_lr", "train.private-lr")
        _non_negative(self, "private_weight_decay", "train.private-weight-decay")
        _non_negative(self, "max_examples", "train.max-examples")
        _non_negative(self, "proximal_mu", "train.proximal-mu")
        _non_negative(self, "pick_weight", "train.pick-weight")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"`train.compile` must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")


@dataclass(frozen=True)
class DataSpec:
    """Where platform data lives and how it is split (see ``common.splits.SplitConfig``)."""

    dir: str = ""  # "" = the embedded synthetic dataset; else a DATASET/ folder
    history_len: int = 10
    like_threshold: float = 3.0
    negatives_per_positive: int = 1
    train_unseen_negatives: int = 1  # explicit ratings: unrated items per rated train example (pick negatives)
    rank_negatives: int = 99
    max_users: int = 0  # 0 = every user
    rating_scale: str = ""  # "lowest,highest" of explicit ratings ("1,5"): one outside is refused; "" = unchecked
    # cold-start evaluation (common.splits): "" = leave-last-out, "new-items" = valid/test on items no training
    # example has, "new-users" = valid/test on users no training example has, seen through their first few items
    cold_start: str = ""
    cold_fraction: float = 0.2  # the share of the catalogue (new-items) or of the users (new-users) held out
    new_user_history: int = 3  # new-users: the first k interactions a new user's valid/test examples see

    def __post_init__(self) -> None:
        try:
            parse_rating_scale(self.rating_scale)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _positive(self, "history_len", "data.history-len")
        _positive(self, "negatives_per_positive", "data.negatives-per-positive")
        _non_negative(self, "train_unseen_negatives", "data.train-unseen-negatives")
        _positive(self, "rank_negatives", "data.rank-negatives")
        _non_negative(self, "max_users", "data.max-users")
        check_cold_start(self.cold_start, self.cold_fraction, self.new_user_history,
                         ("data.cold-start", "data.cold-fraction", "data.new-user-history"))  # fmt: skip

    @property
    def scale(self) -> tuple[float, float] | None:
        """``rating_scale`` parsed: (lowest, highest), or None when not declared."""
        return parse_rating_scale(self.rating_scale)


@dataclass(frozen=True)
class EvalSpec:
    """Federated evaluation; ranking (HR/NDCG) scores 1 + rank-negatives pairs per user."""

    max_rank_users: int = 10  # 0 = every test user; the CPU default caps this for speed
    batch_size: int = 128
    test_every_round: bool = False  # False: valid each round, test (+ ranking) once for the best round

    def __post_init__(self) -> None:
        _non_negative(self, "max_rank_users", "eval.max-rank-users")
        _positive(self, "batch_size", "eval.batch-size")


@dataclass(frozen=True)
class SecureSpec:
    """Secure aggregation (used when ``secagg = true``); see ``common.secagg.SecAggConfig``."""

    clip_range: float = 1.0  # each adapter value is clipped to [-c, c] before quantisation (counted)
    l2_clip: float = 0.0  # L2-norm bound on a platform's update before the value clip; 0 = off
    quant_bits: int = 24  # signed fixed-point bits per value
    max_weight: int = 1_000_000  # cap on a platform's example count (capping is reported)
    min_cohort: int = 2  # fewest platforms that must finish key setup for a round to run
    threshold_fraction: float = 0.666  # ~2/3: Shamir t = max(ceil(f*n), floor(2n/3)+1); survives n - t dropouts
    stage_timeout_s: float = 120.0  # a platform silent for this long in a key/mask stage is dropped

    def __post_init__(self) -> None:
        _positive(self, "clip_range", "secure.clip-range")
        _non_negative(self, "l2_clip", "secure.l2-clip")
        _positive(self, "stage_timeout_s", "secure.stage-timeout-s")


# The secure sum's grid and threshold: here, not in common.secagg, because differential privacy calibrates
# its noise to them where the secagg package (and its cryptography dependency) may be absent (compare on a
# bare GPU box). ``common.secagg.SecAggConfig`` derives its own from these.
def quant_max(quant_bits: int) -> int:
    """Largest quantised magnitude Q = 2^(quant_bits - 1) - 1."""
    return (1 << (quant_bits - 1)) - 1


def grid_scale(quant_bits: int, clip_range: float) -> float:
    """Grid steps per unit: q = rint(x * scale) maps [-c, c] onto [-Q, Q]."""
    return quant_max(quant_bits) / clip_range


def shamir_threshold(cohort_size: int, fraction: float) -> int:
    """t = max(ceil(f * n), floor(2n / 3) + 1), at most n: strictly more than 2n/3 (Bonawitz et al.,
    malicious setting), so two survivor sets each signed by t platforms share more than n/3 signers."""
    by_fraction = math.ceil(fraction * cohort_size - 1e-9)
    return min(cohort_size, max(by_fraction, 2 * cohort_size // 3 + 1))


@dataclass(frozen=True)
class PrivacySpec:
    """User-level differential privacy of the fused model (``common.privacy``; README "Differential privacy").

    The unit is one user of one platform: after the run's rounds the sequence of fused models is
    (epsilon, delta)-DP with respect to adding or removing all of one user's train interactions.
    """

    target_epsilon: float = 0.0  # 0 = off; else the budget the noise is calibrated for over num-server-rounds
    # 0 = 1/N, N = the users of every platform together (counted by simulations from the data; a deployment sets it)
    delta: float = 0.0
    # L2 bound on one user's contribution (its update to the shared tensors + its count); near the users' median
    # update norm (a platform's train metric `dp-median-norm`): with user-lr 1 and one step, the gradient's norm
    clip: float = 0.1
    # a user's pass is plain SGD at this rate (train.local-epochs steps on its own rows): its update follows its
    # data. AdamW's first step is lr * sign(gradient), the same length for every user whatever its data
    user_lr: float = 1.0
    # q: each platform takes each of its users into a round with probability q, drawn from its own secret
    # randomness (Poisson sampling, accounted as such: amplification by sampling); 1 = every user, every round
    user_rate: float = 1.0

    def __post_init__(self) -> None:
        _non_negative(self, "target_epsilon", "privacy.target-epsilon")
        if not 0.0 <= self.delta < 1.0:
            raise ConfigError(f"`privacy.delta` must be in [0, 1), got {self.delta}")
        _positive(self, "clip", "privacy.clip")
        _positive(self, "user_lr", "privacy.user-lr")
        if not 0.0 < self.user_rate <= 1.0:
            raise ConfigError(f"`privacy.user-rate` must be in (0, 1], got {self.user_rate}")

    @property
    def enabled(self) -> bool:
        return self.target_epsilon > 0


@dataclass(frozen=True)
class FedSpec:
    """Server side: rounds, cohort, early stopping, fusion."""

    min_nodes: int = 2  # platforms needed to START: the run's first round waits for this many
    # platforms needed for each LATER round (capped at min-nodes; under secagg at least secure.min-cohort):
    # lower than min-nodes, a run survives a platform that dies and comes back later
    min_round_nodes: int = 2
    node_wait_s: float = 120.0  # how long to wait for min-nodes / min-round-nodes before giving up
    round_timeout_s: float = 3600.0  # replies later than this are dropped from the round
    # Stragglers: once half the platforms answered after h s, the rest get max(min-s, factor*h) s more
    # (then plain train/evaluate messages are sent once more and wait as long again); 0 = off.
    straggler_factor: float = 3.0
    straggler_min_s: float = 60.0
    resend_stragglers: bool = True  # never in the key/mask stages of a secure round
    patience: int = 2  # rounds without improvement of the mean validation metric
    metric: str = "auc"  # mean validation metric for early stopping / best round
    server_lr: float = 1.0  # 1.0 = plain weighted averaging (FedAvg)
    server_momentum: float = 0.0  # > 0 = FedAvgM on the fused update
    optimizer: str = "avg"  # server optimiser: "avg" (FedAvg, FedAvgM with server-momentum) or "adam" (FedAdam)
    adam_beta1: float = 0.9  # FedAdam first-moment decay
    adam_beta2: float = 0.99  # FedAdam second-moment decay
    adam_tau: float = 1e-3  # FedAdam adaptivity (added to sqrt(v)); use fed.server-lr ~ 1e-2 with adam
    resume: bool = True  # a run folder with a checkpoint resumes after its last completed round
    # Continue a finished run (its out-dir) on new data: start from its fused adapter and each platform's
    # private parameters of its best round; rounds are numbered after its last (num-server-rounds = last round).
    warm_start: str = ""
    warm_start_round: int = 0  # set by the server from that run: the round whose private parameters platforms load
    # Node id -> platform for log lines before a platform has answered ("id=name,id=name");
    # `crossfed deploy submit` fills it from the nodes it registered. Names only: no trust rests on it.
    node_names: str = ""

    def __post_init__(self) -> None:
        _positive(self, "min_nodes", "fed.min-nodes")
        _positive(self, "min_round_nodes", "fed.min-round-nodes")
        _positive(self, "node_wait_s", "fed.node-wait-s")
        _positive(self, "round_timeout_s", "fed.round-timeout-s")
        _non_negative(self, "straggler_factor", "fed.straggler-factor")
        _non_negative(self, "straggler_min_s", "fed.straggler-min-s")
        _non_negative(self, "patience", "fed.patience")
        _non_negative(self, "warm_start_round", "fed.warm-start-round")
        parse_node_names(self.node_names)
        _positive(self, "server_lr", "fed.server-lr")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError(f"`fed.server-momentum` must be in [0, 1), got {self.server_momentum}")
        if self.optimizer not in ("avg", "adam"):
            raise ConfigError(f"`fed.optimizer` must be one of avg, adam, got {self.optimizer!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"`fed.{_kebab(name)}` must be in [0, 1), got {getattr(self, name)}")
        _positive(self, "adam_tau", "fed.adam-tau")
        if self.metric not in ("auc", "logloss", "hr@10", "ndcg@10"):
            raise ConfigError(f"`fed.metric` must be one of auc, logloss, hr@10, ndcg@10, got {self.metric!r}")


@dataclass(frozen=True)
class AppConfig:
    """Everything a run needs; defaults run the embedded federation on a CPU in minutes."""

    num_server_rounds: int = 3
    seed: int = 0
    out_dir: str = "runs/latest"
    # TensorBoard scalars of the rounds: "" = <out-dir>/tensorboard; a folder: the server writes DIR/server and
    # each simulated platform DIR/<platform> (a deployed platform writes only where its own node_config says)
    tensorboard_dir: str = ""
    secagg: bool = False
    model: ModelSpec = field(default_factory=ModelSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    data: DataSpec = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    fed: FedSpec = field(default_factory=FedSpec)
    secure: SecureSpec = field(default_factory=SecureSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)

    def __post_init__(self) -> None:
        _positive(self, "num_server_rounds", "num-server-rounds")
        if self.privacy.enabled:
            _check_private_settings(self)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> AppConfig:
        """Build from Flower's run_config; unknown keys and wrong types raise ConfigError."""
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        hints = get_type_hints(cls)
        for key, value in flat.items():
            section, _, name = key.rpartition(".")
            attr = name.replace("-", "_")
            if not section:
                if attr not in hints or dataclasses.is_dataclass(hints[attr]):
                    raise ConfigError(f"unknown config key `{key}`")
                top[attr] = _coerce(key, value, hints[attr])
                continue
            sec_type = hints.get(section)
            if sec_type is None or not dataclasses.is_dataclass(sec_type):
                raise ConfigError(f"unknown config section in `{key}`")
            sec_hints = get_type_hints(sec_type)
            if attr not in sec_hints:
                raise ConfigError(f"unknown config key `{key}`")
            sections.setdefault(section, {})[attr] = _coerce(key, value, sec_hints[attr])
        built = {name: hints[name](**values) for name, values in sections.items()}
        return cls(**top, **built)

    def to_flat(self) -> dict[str, Scalar]:
        """Inverse of :meth:`from_flat`: flat kebab-case scalars (for messages and JSON)."""
        flat: dict[str, Scalar] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for sub in fields(value):
                    flat[f"{f.name}.{_kebab(sub.name)}"] = getattr(value, sub.name)
            else:
                flat[_kebab(f.name)] = value
        return flat

    def replace(self, **overrides: Any) -> AppConfig:
        """Return a copy with flat kebab-case overrides applied (``{"lora.r": 4}``)."""
        return AppConfig.from_flat({**self.to_flat(), **overrides})

    def to_json(self) -> str:
        return json.dumps(self.to_flat(), sort_keys=True)


# ---------------------------------------------------------------- run-config text, both ways


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (``--set``, as in ``flwr run --run-config``), each value read as a TOML
    scalar; a value TOML cannot read is kept as a bare string (``--set data.dir=/tmp/x``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"`--set {pair}`: expected key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw.strip()  # bare string
    return out


def parse_config_strings(args: Sequence[str], flag: str) -> dict[str, Any]:
    """``k1=v1 k2='text'`` strings (``--run-config``, ``--node-config``), each parsed as Flower parses it.

    Several strings merge key by key, a later one winning. Flower 1.42 merges them with a shallow
    update of the nested TOML tables, so ``fed.min-nodes=3`` then ``fed.node-names=...`` would
    silently lose ``fed.min-nodes``: hand Flower ONE string, :func:`config_string` of this.
    """
    import click
    from flwr.common.config import parse_config_args

    values: dict[str, Any] = {}
    for arg in args:
        try:
            values.update(parse_config_args([arg]))
        except click.ClickException as exc:
            raise ConfigError(f"{flag} {arg!r}: {exc.message}") from exc
    return values


def toml_value(value: Any) -> str:
    """One scalar the way ``--node-config`` / ``--run-config`` (TOML) expects it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML config values must be finite, got {value}")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        # Flower splits `k=v` pairs with a regex that ends a quoted value at the first
        # matching quote, so a value may contain one kind of quote but not both.
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
        raise ValueError(f"a config string cannot contain both quote kinds: {value!r}")
    raise TypeError(f"config values must be bool, int, float or str, got {type(value).__name__}")


def config_string(values: Mapping[str, Any]) -> str:
    """``{"platform": "web", "device": "cpu"}`` -> ``platform='web' device='cpu'``."""
    for key in values:
        if not key or any(c.isspace() or c in "='\"" for c in key):
            raise ValueError(f"bad config key {key!r}")
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, typ: Any) -> Scalar:
    """Accept what TOML and ``--run-config`` produce; refuse lossy conversions."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif typ is str and isinstance(value, str):
        return value
    raise ConfigError(f"`{key}` must be {typ.__name__}, got {value!r}")


def parse_node_names(text: str) -> dict[int, str]:
    """``fed.node-names`` (``"123=web_shop,456=app"``) as node id -> platform; ConfigError naming a bad pair."""
    names: dict[int, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        node, sep, name = pair.partition("=")
        if not sep or not node.strip().isdigit() or not name.strip():
            raise ConfigError(f"`fed.node-names` must be `id=platform` pairs separated by commas, got {pair!r}")
        names[int(node)] = name.strip()
    return names


def node_names_string(names: Mapping[int | str, str]) -> str:
    """The ``fed.node-names`` value for a node id -> platform mapping (ids in order)."""
    return ",".join(f"{int(node)}={names[node]}" for node in sorted(names, key=int))


def check_cold_start(cold_start: str, fraction: float, history: int, keys: tuple[str, str, str]) -> None:
    """The cold-start settings, checked once for the run config and ``SplitConfig``; ``keys`` name them in errors."""
    if cold_start not in COLD_STARTS:
        raise ConfigError(f"`{keys[0]}` must be one of '', new-items, new-users, got {cold_start!r}")
    if not 0.0 < fraction < 1.0:  # also refuses NaN
        raise ConfigError(f"`{keys[1]}` must be in (0, 1), got {fraction}")
    if not 1 <= history <= max(NEW_USER_KS):
        raise ConfigError(f"`{keys[2]}` must be from 1 to {max(NEW_USER_KS)}, got {history}")


def _check_private_settings(cfg: AppConfig) -> None:
    """Settings under which one user's data would reach other users' contributions (or the server
    unnoised) are refused with differential privacy on (README "Differential privacy")."""
    refused = {
        "model.private-head": cfg.model.private_head,  # a private head trained on every user feeds each update
        "lora.private-b": cfg.lora.private_b,
        "secure.l2-clip": cfg.secure.l2_clip > 0,  # a norm clip after the noise: the sum would not be sum + noise
        "fed.warm-start": bool(cfg.fed.warm_start),  # the earlier run's rounds spent budget this run cannot see
        # item statistics mix users, so the per-user passes cannot see them: the head would never learn them
        "model.item-stats": cfg.model.item_stats,
    }
    for key, on in refused.items():
        if on:
            raise ConfigError(f"`{key}` cannot be used with differential privacy (`privacy.target-epsilon` > 0): "
                              f"set it off (README \"Differential privacy\")")  # fmt: skip


def _positive(obj: object, attr: str, key: str) -> None:
    if not getattr(obj, attr) > 0:
        raise ConfigError(f"`{key}` must be positive, got {getattr(obj, attr)}")


def _non_negative(obj: object, attr: str, key: str) -> None:
    if getattr(obj, attr) < 0:
        raise ConfigError(f"`{key}` must be >= 0, got {getattr(obj, attr)}")


def _fraction(obj: object, attr: str, key: str) -> None:
    if not 0.0 <= getattr(obj, attr) < 1.0:
        raise ConfigError(f"`{key}` must be in [0, 1), got {getattr(obj, attr)}")
