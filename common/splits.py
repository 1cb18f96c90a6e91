"""Leave-last-out splits, like/dislike labels and the (history, candidate) examples.

Per platform and user, interactions are ordered by (timestamp, file order), so ties in
time resolve the same way on every run. The last interaction is the test example, the
second-last the validation example, the rest are training examples; users with fewer
than ``min_interactions`` interactions only train. Each example's history holds the
user's interactions strictly before it in that order: never the target, never the future.

Randomness (implicit negatives, ranking negatives, user subsampling, training thinning)
comes from generators keyed by ``(seed, platform, user, purpose)``, so a platform splits
identically whether it is split alone on its own node or together with the others, and one
user's draws do not depend on which other users are present.

Cold start (``cold_start``): the splits above score items and users the model trained on.
Two other protocols hold out what training never saw; in both, every interaction of what is
known trains (no leave-last-out) and only the held-out part is validated and tested.

``"new-items"``: a seeded ``cold_fraction`` of the catalogue (sorted ids, generator keyed
``(seed, platform, "new-items")``, at least 2 items) is new, split in two seeded halves,
valid-new and test-new. Train is every interaction with a known item, valid every interaction
with a valid-new item, test every one with a test-new item. A train example's history leaves
new items out: they did not exist at training time, and a new item in a liked or disliked list
would hand its test label to training. Valid and test histories keep everything before them.
Unrated train negatives (explicit ``train_unseen_negatives``, implicit negatives) are known
items; implicit valid (test) negatives are valid-new (test-new) items the user never touched,
so AUC compares new items with new items. A ranking case per user with a liked test-new
(valid-new) item: the last such like against unseen items of the whole catalogue.

``"new-users"``: a seeded ``cold_fraction`` of the users (sorted ids, generator keyed
``(seed, platform, "new-users")``, at least 2), drawn among users with at least
``NEW_USER_MIN`` interactions, is new, split in two seeded halves, valid and test users.
Train is every interaction of every known user. A new user's examples are their interactions
from position ``max(NEW_USER_KS)`` on, all with one fixed history: their first
``new_user_history`` interactions (a new user who just signed up and rated a few items), so
the same examples are scored whatever k is. For test users the same examples with the first
k interactions, for each other k in ``NEW_USER_KS``, are ``extra_tests["test-k{k}"]``, each
positive with the same sampled negatives as in ``test``: the k's differ in history only.
New users have no training example, hence no trained private user vector.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.config import NEW_USER_KS, ConfigError, DataSpec, check_cold_start
from common.data import Feedback, Interaction, Item, PlatformData


@dataclass(frozen=True)
class SplitConfig:
    """How one platform is split; the settings a run configures default to ``common.config.DataSpec``'s
    (``data.*``, declared there once): a run builds this with ``clients.platform.split_config``."""

    like_threshold: float = DataSpec.like_threshold  # explicit ratings: rating > threshold is a like
    history_len: int = DataSpec.history_len  # most recent liked and most recent disliked items, each up to this many
    min_interactions: int = 5  # users with fewer interactions are train-only
    negatives_per_positive: int = DataSpec.negatives_per_positive  # implicit: sampled negatives per positive
    # explicit feedback: unrated items per rated TRAIN example (rated=False)
    train_unseen_negatives: int = DataSpec.train_unseen_negatives
    rank_negatives: int = DataSpec.rank_negatives  # HR/NDCG protocol: sampled negatives per test positive
    max_users: int | None = None  # seeded subsample of users per platform (None = all)
    seed: int = 0
    cold_start: str = DataSpec.cold_start  # "" = leave-last-out, "new-items" or "new-users" (module docstring)
    cold_fraction: float = DataSpec.cold_fraction  # share of the catalogue / of the users held out as new
    new_user_history: int = DataSpec.new_user_history  # new-users: first k interactions seen by valid/test

    def __post_init__(self) -> None:
        if not math.isfinite(self.like_threshold):
            raise ConfigError(f"`like_threshold` must be finite, got {self.like_threshold}")
        for name in ("history_len", "negatives_per_positive", "rank_negatives"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be positive, got {getattr(self, name)}")
        if self.train_unseen_negatives < 0:
            raise ConfigError(f"`train_unseen_negatives` must be >= 0, got {self.train_unseen_negatives}")
        if self.min_interactions < 3:  # one train, one valid and one test interaction
            raise ConfigError(f"`min_interactions` must be at least 3, got {self.min_interactions}")
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(f"`max_users` must be positive or None, got {self.max_users}")
        if self.seed < 0:
            raise ConfigError(f"`seed` must be non-negative, got {self.seed}")
        check_cold_start(self.cold_start, self.cold_fraction, self.new_user_history,
                         ("cold_start", "cold_fraction", "new_user_history"))  # fmt: skip


@dataclass(frozen=True)
class Example:
    user_id: str
    item_id: str  # the candidate
    label: int  # 1 = liked
    liked: tuple[str, ...]  # item ids, most recent first, strictly before this interaction
    disliked: tuple[str, ...]
    rated: bool = True  # False: a sampled item the user never interacted with (label 0)


@dataclass(frozen=True)
class RankingCase:
    user_id: str
    positive: str  # the held-out liked test item
    negatives: tuple[str, ...]  # sampled items the user never interacted with
    liked: tuple[str, ...]
    disliked: tuple[str, ...]


@dataclass
class PlatformSplits:
    name: str
    items: dict[str, Item]
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    ranking: list[RankingCase]
    num_interactions: int = 0  # interactions behind the examples (sampled negatives excluded)
    valid_ranking: list[RankingCase] = dataclasses.field(default_factory=list)  # the same protocol on valid likes
    implicit: bool = False  # implicit feedback: "liked" and "interacted with" are the same thing
    # new-users: the test examples again with the first k interactions as history ("test-k1", "test-k5")
    extra_tests: dict[str, list[Example]] = dataclasses.field(default_factory=dict)

    def stats(self) -> dict[str, float | int]:
        users = {ex.user_id for split in (self.train, self.valid, self.test) for ex in split}
        out: dict[str, float | int] = {
            "users": len(users),
            "items": len(self.items),
            "interactions": self.num_interactions,
        }
        for name, split in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            out[name] = len(split)
            out[f"{name}_positive_rate"] = sum(ex.label for ex in split) / len(split) if split else math.nan
        out["ranking_cases"] = len(self.ranking)
        out["rank_negatives"] = len(self.ranking[0].negatives) if self.ranking else 0
        return out


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one (platform, user, purpose); crc32 because ``hash(str)`` is salted per process."""
    return np.random.default_rng([seed, *(zlib.crc32(key.encode("utf-8")) for key in keys)])


def _share(fraction: float, total: int, name: str) -> int:
    """``fraction`` of ``total`` things, rounded and at least 1; ``name`` is the argument named in errors."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"`{name}` must be a fraction in (0, 1], got {fraction!r}")
    return max(1, round(fraction * total))


def subsample_users(data: PlatformData, fraction_or_count: float | int, seed: int) -> PlatformData:
    """Keep a seeded subset of users (all their interactions, file order kept; catalogue unchanged).

    An ``int`` is a user count, a ``float`` in (0, 1] a fraction of users, rounded and at
    least 1 (e.g. 0.1 for a "scarce" platform).
    """
    users = sorted({row.user_id for row in data.interactions})
    if isinstance(fraction_or_count, bool) or not isinstance(fraction_or_count, int | float):
        raise ConfigError(f"`fraction_or_count` must be an int or a float, got {fraction_or_count!r}")
    if isinstance(fraction_or_count, int):
        if fraction_or_count < 1:
            raise ConfigError(f"`fraction_or_count` must be a positive count, got {fraction_or_count}")
        count = fraction_or_count
    else:
        count = _share(fraction_or_count, len(users), "fraction_or_count")
    if count >= len(users):
        return dataclasses.replace(data, interactions=list(data.interactions))
    keep = set(_rng(seed, data.name, "users").choice(users, size=count, replace=False).tolist())
    rows = [row for row in data.interactions if row.user_id in keep]
    return dataclasses.replace(data, interactions=rows)


def thin_train(splits: PlatformSplits, fraction: float, seed: int) -> PlatformSplits:
    """Keep a seeded ``fraction`` of a platform's training examples; everything else stays whole.

    This is the "scarce platform" of the comparison. Keeping 10 % of a small platform's
    *users* (:func:`subsample_users`) also kept 10 % of its test set, 85-95 users, too few to
    resolve a 0.03 AUC difference. Thinning only the training examples takes away what a
    scarce platform lacks, training signal, while its validation and test examples and
    ranking cases are exactly those of the full platform: every run is scored on the same,
    whole test set, and scarce-vs-full comparisons are paired.

    The rule: ``round(fraction * len(train))`` examples, at least 1 (unless there are none),
    drawn uniformly without replacement and kept in their original order. A user may lose
    all their training examples; that is what scarcity means. Histories are unchanged: a
    kept example still sees every earlier interaction of its user (the platform has the
    interaction log, it just has few training examples), and the validation and test
    histories must match the full platform's for the pairing to hold. With implicit feedback
    a positive and its sampled negatives are separate examples and are drawn independently.
    ``num_interactions`` (the interactions behind the platform) is unchanged.

    The generator is keyed by ``(seed, platform name, "thin-train")``, so a platform thins the
    same way whichever other platforms exist; ``fraction`` 1 returns every example.
    """
    count = _share(fraction, len(splits.train), "fraction")
    if seed < 0:
        raise ConfigError(f"`seed` must be non-negative, got {seed}")
    if count >= len(splits.train):
        return dataclasses.replace(splits, train=list(splits.train))
    picks = _rng(seed, splits.name, "thin-train").choice(len(splits.train), size=count, replace=False)
    return dataclasses.replace(splits, train=[splits.train[i] for i in sorted(picks.tolist())])


def _by_user(interactions: Sequence[Interaction]) -> dict[str, list[Interaction]]:
    """Each user's interactions ordered by (timestamp, file order); a stable sort keeps file order."""
    groups: dict[str, list[Interaction]] = defaultdict(list)
    for row in interactions:
        groups[row.user_id].append(row)
    return {user: sorted(rows, key=lambda r: r.timestamp) for user, rows in groups.items()}


def _label(row: Interaction, feedback: Feedback, like_threshold: float) -> int:
    if feedback == "rating":
        assert row.value is not None
        return int(row.value > like_threshold)
    if feedback == "label":
        assert row.value is not None
        return int(row.value)
    return 1


def _histories(
    item_ids: Sequence[str], labels: Sequence[int], history_len: int
) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(liked, disliked) before each position, most recent first, each up to ``history_len``."""
    liked: list[str] = []
    disliked: list[str] = []
    out = []
    for item_id, label in zip(item_ids, labels, strict=True):
        out.append((tuple(reversed(liked[-history_len:])), tuple(reversed(disliked[-history_len:]))))
        (liked if label else disliked).append(item_id)
    return out


@dataclasses.dataclass(frozen=True)
class UserHistory:
    """What a platform knows of one user now: their latest likes and dislikes and everything they touched."""

    liked: tuple[str, ...]  # most recent first, up to ``history_len``
    disliked: tuple[str, ...]
    seen: frozenset[str]  # every item the user interacted with (never recommended back)


def interaction_labels(data: PlatformData, like_threshold: float) -> list[tuple[str, int]]:
    """(item id, like label) of every interaction, with the labels training uses."""
    return [(row.item_id, _label(row, data.feedback, like_threshold)) for row in data.interactions]


def current_histories(data: PlatformData, like_threshold: float, history_len: int) -> dict[str, UserHistory]:
    """Each user's history after their last interaction: what a recommendation is made from.

    The same labels and ordering as the training examples (:func:`split_platform`), over all of a
    user's interactions instead of those before a held-out one.
    """
    out: dict[str, UserHistory] = {}
    for user, rows in _by_user(data.interactions).items():
        item_ids = [row.item_id for row in rows]
        labels = [_label(row, data.feedback, like_threshold) for row in rows]
        out[user] = UserHistory(*_history_after(item_ids, labels, history_len), frozenset(item_ids))
    return out


def _history_after(
    item_ids: Sequence[str], labels: Sequence[int], history_len: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(liked, disliked) after all of ``item_ids``: what the next interaction's history would be."""
    return _histories([*item_ids, ""], [*labels, 0], history_len)[-1]


def _sample(pool: Sequence[str], size: int, rng: np.random.Generator) -> tuple[str, ...]:
    """``size`` distinct items from ``pool`` (all of them, shuffled, when the pool is smaller)."""
    picks = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
    return tuple(pool[i] for i in picks)


NEW_USER_MIN = max(NEW_USER_KS) + 1  # new-users: interactions a user needs to be drawn (one example at least)

# One interaction to emit: the (split name, example) pairs it goes to (the same candidate, each with its own
# history) and the items its sampled negatives come from (implicit negatives, explicit unrated train rows).
_Target = tuple[list[tuple[str, Example]], Sequence[str]]
_Pending = list[tuple[Example, Sequence[str]]]  # held-out likes to rank and the unseen items they are ranked against


@dataclass
class _Protocol:
    """What a split protocol decides for one platform, before the negatives shared by every protocol are drawn."""

    targets: dict[str, list[_Target]] = dataclasses.field(default_factory=dict)  # user -> targets in time order
    pending: _Pending = dataclasses.field(default_factory=list)  # test ranking cases, users sorted
    pending_valid: _Pending = dataclasses.field(default_factory=list)  # validation ranking cases


def split_platform(data: PlatformData, cfg: SplitConfig) -> PlatformSplits:
    """Leave-last-out examples plus ranking cases for one platform (or a cold-start protocol: module docstring).

    Implicit feedback: every interaction is a positive and gets ``negatives_per_positive``
    sampled negatives (catalogue items the user never interacted with, same history).

    Explicit feedback with ``train_unseen_negatives`` = k > 0: each rated TRAIN example also gets
    k items the user never interacted with (``rated=False``, label 0, same history), drawn from
    outside the user's own ranking negatives. Ratings alone only teach "liked or disliked, among
    what the user chose to rate"; ranking a held-out like against unrated items also needs "would
    not pick this at all" (what item popularity knows): the model's pick output learns it from
    these rows. Validation and test keep only real ratings.

    Ranking: one case per evaluated user whose test interaction is a like, with
    ``rank_negatives`` items the user never interacted with. Every case on a platform gets
    the same number of negatives (the trainer scores them as one (U, 1+N) matrix), so when
    some user has fewer unseen items than ``rank_negatives`` (a small catalogue), all cases
    get that smaller number; ``stats()["rank_negatives"]`` reports it.
    """
    if cfg.max_users is not None:
        data = subsample_users(data, cfg.max_users, cfg.seed)
    protocols: dict[str, Callable[[PlatformData, SplitConfig], _Protocol]] = {
        "": _leave_last_out, "new-items": _split_new_items, "new-users": _split_new_users,
    }  # fmt: skip
    return _assemble(data, cfg, protocols[cfg.cold_start](data, cfg))


def _user_log(
    rows: Sequence[Interaction], data: PlatformData, cfg: SplitConfig
) -> tuple[list[str], list[int], list[str]]:
    """One user's item ids and like labels in time order, and the catalogue items they never touched (sorted)."""
    item_ids = [row.item_id for row in rows]
    labels = [_label(row, data.feedback, cfg.like_threshold) for row in rows]
    seen = set(item_ids)
    return item_ids, labels, [item for item in sorted(data.items) if item not in seen]


def _examples(user: str, item_ids: Sequence[str], labels: Sequence[int], history_len: int) -> list[Example]:
    """An example per interaction, each with the user's history strictly before it."""
    histories = _histories(item_ids, labels, history_len)
    return [Example(user, item_id, label, *history)
            for item_id, label, history in zip(item_ids, labels, histories, strict=True)]  # fmt: skip


def _leave_last_out(data: PlatformData, cfg: SplitConfig) -> _Protocol:
    """The last interaction tests, the second-last validates, the rest train (``min_interactions`` or more)."""
    out = _Protocol()
    by_user = _by_user(data.interactions)
    for user in sorted(by_user):
        item_ids, labels, unseen = _user_log(by_user[user], data, cfg)
        held_out = len(item_ids) >= cfg.min_interactions
        names = ["train"] * (len(item_ids) - 2) + ["valid", "test"] if held_out else ["train"] * len(item_ids)
        examples = _examples(user, item_ids, labels, cfg.history_len)
        out.targets[user] = [([(name, ex)], unseen) for name, ex in zip(names, examples, strict=True)]
        if held_out and labels[-1] == 1:
            out.pending.append((examples[-1], unseen))
        if held_out and labels[-2] == 1:
            out.pending_valid.append((examples[-2], unseen))
    return out


def _cold_halves(
    pool: Sequence[str], fraction: float, total: int, rng: np.random.Generator
) -> tuple[set[str], set[str]]:
    """A seeded ``fraction`` of ``total`` (at least 2, at most the pool) drawn from ``pool``: (valid, test) halves.

    The draw's own order decides the halves; an odd count gives test the extra one.
    """
    picks = _sample(pool, max(2, round(fraction * total)), rng)
    return set(picks[: len(picks) // 2]), set(picks[len(picks) // 2 :])


def new_items(data: PlatformData, cfg: SplitConfig) -> tuple[set[str], set[str]]:
    """The platform's (valid-new, test-new) items under ``cold_start = "new-items"`` (module docstring)."""
    catalogue = sorted(data.items)
    return _cold_halves(catalogue, cfg.cold_fraction, len(catalogue), _rng(cfg.seed, data.name, "new-items"))


def new_users(data: PlatformData, cfg: SplitConfig) -> tuple[set[str], set[str]]:
    """The platform's (valid, test) new users under ``cold_start = "new-users"``: a ``cold_fraction`` of all
    users, drawn among those with at least ``NEW_USER_MIN`` interactions (module docstring)."""
    counts: dict[str, int] = defaultdict(int)
    for row in data.interactions:
        counts[row.user_id] += 1
    eligible = [user for user in sorted(counts) if counts[user] >= NEW_USER_MIN]
    return _cold_halves(eligible, cfg.cold_fraction, len(counts), _rng(cfg.seed, data.name, "new-users"))


def _split_new_items(data: PlatformData, cfg: SplitConfig) -> _Protocol:
    """Train on known items, validate and test on two disjoint sets of new ones (module docstring)."""
    valid_new, test_new = new_items(data, cfg)
    group = {**dict.fromkeys(valid_new, "valid"), **dict.fromkeys(test_new, "test")}  # new item -> its split
    out = _Protocol()
    by_user = _by_user(data.interactions)
    for user in sorted(by_user):
        item_ids, labels, unseen = _user_log(by_user[user], data, cfg)
        pools = {name: [item for item in unseen if group.get(item, "train") == name]
                 for name in ("train", "valid", "test")}  # fmt: skip
        known = [(item, label) for item, label in zip(item_ids, labels, strict=True) if item not in group]
        # train examples: histories over known items only; valid/test: over everything before them
        trained = iter(_examples(user, [item for item, _ in known], [label for _, label in known], cfg.history_len))
        last_like: dict[str, Example] = {}
        targets: list[_Target] = []
        for full in _examples(user, item_ids, labels, cfg.history_len):
            name = group.get(full.item_id, "train")
            example = next(trained) if name == "train" else full
            targets.append(([(name, example)], pools[name]))
            if example.label and name != "train":
                last_like[name] = example
        out.targets[user] = targets
        for name, pending in (("test", out.pending), ("valid", out.pending_valid)):
            if name in last_like:
                pending.append((last_like[name], unseen))  # ranked against the whole catalogue, new items included
    return out


def _split_new_users(data: PlatformData, cfg: SplitConfig) -> _Protocol:
    """Train on known users, validate and test on two disjoint sets of new ones seen through their first
    interactions (module docstring)."""
    by_user = _by_user(data.interactions)
    valid_users, test_users = new_users(data, cfg)
    start = max(NEW_USER_KS)
    out = _Protocol()
    for user in sorted(by_user):
        item_ids, labels, unseen = _user_log(by_user[user], data, cfg)
        if user not in valid_users and user not in test_users:
            examples = _examples(user, item_ids, labels, cfg.history_len)
            out.targets[user] = [([("train", example)], unseen) for example in examples]
            continue
        name, pending = ("test", out.pending) if user in test_users else ("valid", out.pending_valid)
        ks = {name: cfg.new_user_history}
        if name == "test":
            ks.update({f"test-k{k}": k for k in NEW_USER_KS if k != cfg.new_user_history})
        firsts = {split: _history_after(item_ids[:k], labels[:k], cfg.history_len) for split, k in ks.items()}
        targets: list[_Target] = [
            ([(split, Example(user, item_ids[p], labels[p], *firsts[split])) for split in ks], unseen)
            for p in range(start, len(item_ids))
        ]
        out.targets[user] = targets
        likes = [placements[0][1] for placements, _ in targets if placements[0][1].label]
        if likes:
            pending.append((likes[-1], unseen))
    return out


def _assemble(data: PlatformData, cfg: SplitConfig, protocol: _Protocol) -> PlatformSplits:
    """The splits of a protocol's targets: implicit negatives, ranking cases and unrated train rows drawn here,
    with the same keyed generators whichever protocol it is."""
    implicit = data.feedback == "implicit"
    splits: dict[str, list[Example]] = defaultdict(list)
    rated_train: dict[str, tuple[list[Example], Sequence[str]]] = {}  # user -> rated train examples, their pool
    for user in sorted(protocol.targets):
        neg_rng = _rng(cfg.seed, data.name, user, "negatives")
        for placements, pool in protocol.targets[user]:
            negatives = _sample(pool, cfg.negatives_per_positive, neg_rng) if implicit else ()
            for name, example in placements:  # one draw of negatives, copied with each placement's history
                splits[name].append(example)
                splits[name].extend(Example(user, neg, 0, example.liked, example.disliked, rated=False)
                                    for neg in negatives)  # fmt: skip
                if name == "train" and not implicit and cfg.train_unseen_negatives:
                    rated_train.setdefault(user, ([], pool))[0].append(example)
    ranking = _ranking_cases(protocol.pending, cfg, data.name, "ranking")
    valid_ranking = _ranking_cases(protocol.pending_valid, cfg, data.name, "valid-ranking")
    held: dict[str, set[str]] = defaultdict(set)
    for case in (*ranking, *valid_ranking):
        held[case.user_id].update(case.negatives)
    train = splits.pop("train", []) + _unseen_negatives(rated_train, held, data.name, cfg)
    valid, test = splits.pop("valid", []), splits.pop("test", [])
    return PlatformSplits(data.name, data.items, train, valid, test, ranking, len(data.interactions), valid_ranking,
                          implicit=implicit, extra_tests=dict(sorted(splits.items())))  # fmt: skip


def _ranking_cases(
    pending: Sequence[tuple[Example, Sequence[str]]], cfg: SplitConfig, platform: str, purpose: str
) -> list[RankingCase]:
    """One case per held-out like: the same number of seeded unseen negatives for every case."""
    width = min([cfg.rank_negatives, *(len(unseen) for _, unseen in pending)])
    return [
        RankingCase(ex.user_id, ex.item_id, _sample(unseen, width, _rng(cfg.seed, platform, ex.user_id, purpose)),
                    ex.liked, ex.disliked)
        for ex, unseen in pending
    ]  # fmt: skip


def _unseen_negatives(
    rated_train: Mapping[str, tuple[list[Example], Sequence[str]]], held_out: dict[str, set[str]], platform: str,
    cfg: SplitConfig,
) -> list[Example]:  # fmt: skip
    """``cfg.train_unseen_negatives`` unrated items per rated train example, never a ranking negative of the user."""
    out: list[Example] = []
    for user in sorted(rated_train):
        examples, unseen = rated_train[user]
        pool = [item for item in unseen if item not in held_out.get(user, ())]
        rng = _rng(cfg.seed, platform, user, "train-unseen")
        for ex in examples:
            out.extend(
                Example(user, neg, 0, ex.liked, ex.disliked, rated=False)
                for neg in _sample(pool, cfg.train_unseen_negatives, rng)
            )
    return out


def split_dataset(
    dataset: dict[str, PlatformData], cfg: SplitConfig, like_thresholds: dict[str, float] | None = None
) -> dict[str, PlatformSplits]:
    """Split every platform; ``like_thresholds`` overrides ``cfg.like_threshold`` per platform."""
    overrides = like_thresholds or {}
    unknown = sorted(set(overrides) - set(dataset))
    if unknown:
        raise ConfigError(f"`like_thresholds` names unknown platforms {unknown}, expected some of {sorted(dataset)}")
    return {
        name: split_platform(data, dataclasses.replace(cfg, like_threshold=overrides.get(name, cfg.like_threshold)))
        for name, data in dataset.items()
    }
