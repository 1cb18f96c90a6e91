"""Which platform this node is, and its data: loaded, split and tokenised once per process.

Per-platform facts come from ``node_config`` (deployment: ``platform``, ``data-dir``,
``device``). In simulation Flower only gives ``partition-id``, which picks the n-th
platform (sorted by name) of the run's ``data.dir``. An empty ``data.dir`` means the
embedded synthetic dataset, generated in memory from the run seed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from clients.trainer import EncodedSplit, ItemTable, encode_examples, encode_items, encode_ranking, with_item_stats
from common.config import AppConfig, DataSpec
from common.data import DatasetError, PlatformData, RatingScale, discover_platforms, load_platform
from common.item_stats import ItemStats
from common.splits import Example, PlatformSplits, RankingCase, SplitConfig, split_platform, thin_train

PLATFORM_KEY = "platform"
DATA_DIR_KEY = "data-dir"
DEVICE_KEY = "device"
PARTITION_KEY = "partition-id"


@dataclass(frozen=True)
class NodeSetup:
    platform: str
    data_dir: str  # "" = embedded synthetic data
    device: str  # "auto", "cpu", "cuda", "cuda:1", ...
    train_fraction: float = 1.0  # < 1: keep a seeded share of the train examples (the comparison's scarce platforms)


def resolve_node(node_config: dict[str, object], cfg: AppConfig) -> NodeSetup:
    """Decide which platform this node serves; a bad node_config is a DatasetError naming the key."""
    data_dir = str(node_config.get(DATA_DIR_KEY, cfg.data.dir))
    device = str(node_config.get(DEVICE_KEY, "auto"))
    if PLATFORM_KEY in node_config:
        return NodeSetup(str(node_config[PLATFORM_KEY]), data_dir, device)
    if PARTITION_KEY not in node_config:
        raise DatasetError(f"node_config needs `{PLATFORM_KEY}` (and `{DATA_DIR_KEY}`), got {sorted(node_config)}")
    names = platform_names(data_dir, cfg.seed)
    pid = int(node_config[PARTITION_KEY])  # type: ignore[call-overload]
    if not 0 <= pid < len(names):
        raise DatasetError(
            f"node_config `{PARTITION_KEY}` = {pid} but the dataset has {len(names)} platforms "
            f"{names}: run with num-supernodes = {len(names)}"
        )
    return NodeSetup(names[pid], data_dir, device)


def platform_names(data_dir: str, seed: int) -> list[str]:
    if data_dir:
        return discover_platforms(Path(data_dir))
    return sorted(_synthetic(seed))


@functools.lru_cache(maxsize=1)
def _synthetic(seed: int) -> dict[str, PlatformData]:
    from common.synthetic import make_synthetic  # the embedded demo dataset (generated, not shipped)

    return make_synthetic(seed=seed)


def split_config(spec: DataSpec, seed: int) -> SplitConfig:
    return SplitConfig(
        like_threshold=spec.like_threshold, history_len=spec.history_len,
        negatives_per_positive=spec.negatives_per_positive, rank_negatives=spec.rank_negatives,
        train_unseen_negatives=spec.train_unseen_negatives,
        max_users=spec.max_users or None, seed=seed, cold_start=spec.cold_start,
        cold_fraction=spec.cold_fraction, new_user_history=spec.new_user_history,
    )  # fmt: skip


def platform_data(setup: NodeSetup, seed: int, scale: RatingScale | None = None) -> PlatformData:
    """The platform's catalogue and interactions: its folder (ratings checked against ``scale``), or
    the embedded dataset of ``seed``."""
    if setup.data_dir:
        return load_platform(Path(setup.data_dir), setup.platform, scale)
    synthetic = _synthetic(seed)
    if setup.platform not in synthetic:
        raise DatasetError(f"no platform {setup.platform!r} in the embedded dataset {sorted(synthetic)}")
    return synthetic[setup.platform]


def load_splits(setup: NodeSetup, spec: DataSpec, seed: int) -> PlatformSplits:
    return split_platform(platform_data(setup, seed, spec.scale), split_config(spec, seed))


@dataclass
class PreparedPlatform:
    """A platform's splits as integer rows over its catalogue (tokenised once) and its user list."""

    splits: PlatformSplits
    table: ItemTable
    users: dict[str, int]  # user id -> row of the platform's private user parameters
    train: EncodedSplit
    valid: EncodedSplit
    test: EncodedSplit
    ranking: tuple[EncodedSplit, int]  # test ranking: row c*(1+N) is case c's held-out like
    cases: list[RankingCase] = field(default_factory=list)  # the ranked cases behind ``ranking``, in order
    valid_ranking: tuple[EncodedSplit, int] | None = None  # the same protocol on validation likes
    stats: ItemStats | None = None  # the catalogue's train statistics (scoring new rows needs them too)
    # scored with ``test``: the new-users test examples with other history sizes ("test-k1", "test-k5")
    extra: dict[str, EncodedSplit] = field(default_factory=dict)

    def rankings(self, splits: Sequence[str]) -> dict[str, tuple[EncodedSplit, int]]:
        """The ranking cases of each named split that has them."""
        known = {"test": self.ranking, "valid": self.valid_ranking}
        return {name: known[name] for name in splits if known.get(name) is not None}  # type: ignore[misc]


def user_index(splits: PlatformSplits) -> dict[str, int]:
    """Every user of the platform, sorted: the rows of its private user parameters.

    Ranking cases need no look: their users are the held-out users of the valid and test splits.
    """
    ids = {ex.user_id for part in (splits.train, splits.valid, splits.test) for ex in part}
    return {user: i for i, user in enumerate(sorted(ids))}


@functools.lru_cache(maxsize=4)
def prepare(
    setup: NodeSetup, spec: DataSpec, max_rank_users: int, seed: int,
    tokenizer: PreTrainedTokenizerBase, max_length: int,
) -> PreparedPlatform:  # fmt: skip
    splits = load_splits(setup, spec, seed)
    if setup.train_fraction < 1.0:
        splits = thin_train(splits, setup.train_fraction, seed)
    cases = _some(splits.ranking, max_rank_users, seed)
    table = encode_items(tokenizer, splits.items, max_length)
    users = user_index(splits)
    length = spec.history_len
    train = encode_examples(table, users, splits.train, length, splits.implicit)
    stats = ItemStats.from_train(len(table), train.items, train.labels, train.rated)  # type: ignore[arg-type]
    ranking, width = encode_ranking(table, users, cases, length)

    def scored(examples: list[Example]) -> EncodedSplit:  # a split scored as valid and test are
        return with_item_stats(stats, encode_examples(table, users, examples, length, splits.implicit))

    valid_ranking, valid_width = encode_ranking(table, users, _some(splits.valid_ranking, max_rank_users, seed), length)
    return PreparedPlatform(
        splits=splits, table=table, users=users,
        train=with_item_stats(stats, train, train=True),
        valid=scored(splits.valid),
        test=scored(splits.test),
        ranking=(with_item_stats(stats, ranking), width),
        cases=list(cases),
        valid_ranking=(with_item_stats(stats, valid_ranking), valid_width),
        stats=stats,
        extra={name: scored(examples) for name, examples in splits.extra_tests.items()},
    )  # fmt: skip


def _some(cases: list[RankingCase], max_rank_users: int, seed: int) -> list[RankingCase]:
    """A seeded subset of ``max_rank_users`` ranking cases (0 = all of them), in order."""
    if max_rank_users and len(cases) > max_rank_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(cases), max_rank_users, replace=False))
        return [cases[i] for i in keep]
    return cases


def subsample(data: EncodedSplit, max_examples: int, seed: int) -> EncodedSplit:
    """A seeded per-round subset (``train.max-examples``) so CPU runs stay short."""
    if not max_examples or len(data) <= max_examples:
        return data
    return data.take(np.sort(np.random.default_rng(seed).choice(len(data), max_examples, replace=False)))
