from __future__ import annotations

import dataclasses

import pytest

from common.config import ConfigError
from common.data import Interaction, Item, PlatformData
from common.splits import (
    Example,
    PlatformSplits,
    SplitConfig,
    split_dataset,
    split_platform,
    subsample_users,
    thin_train,
)

CATALOGUE = {f"i{n:02d}": Item(f"i{n:02d}", f"Item {n}") for n in range(30)}


def _rated(**overrides: object) -> SplitConfig:
    """These tests' split: rated interactions only (a run adds ``data.train-unseen-negatives`` unrated ones)."""
    return SplitConfig(**{"train_unseen_negatives": 0, **overrides})  # type: ignore[arg-type]


def _platform(rows: list[tuple[str, str, float, float | None]], feedback: str = "rating") -> PlatformData:
    interactions = [Interaction(u, i, t, v) for u, i, t, v in rows]
    return PlatformData("shop", dict(CATALOGUE), interactions, feedback)  # type: ignore[arg-type]


# u1: 6 interactions given out of time order (i05 and i04 tie at t=5: file order decides);
# u2: 4 interactions (< min_interactions) -> train only.
ROWS = [
    ("u1", "i01", 1.0, 5.0),
    ("u1", "i03", 3.0, 1.0),
    ("u1", "i02", 2.0, 4.0),
    ("u2", "i10", 1.0, 4.0),
    ("u1", "i05", 5.0, 4.0),
    ("u1", "i04", 5.0, 2.0),
    ("u2", "i11", 2.0, 1.0),
    ("u1", "i06", 6.0, 5.0),
    ("u2", "i12", 3.0, 3.0),
    ("u2", "i13", 4.0, 5.0),
]


def test_leave_last_out() -> None:
    # Prepare
    data = _platform(ROWS)

    # Execute
    splits = split_platform(data, _rated())

    # Assert
    assert [(ex.user_id, ex.item_id) for ex in splits.train] == [
        ("u1", "i01"), ("u1", "i02"), ("u1", "i03"), ("u1", "i05"),
        ("u2", "i10"), ("u2", "i11"), ("u2", "i12"), ("u2", "i13"),
    ]  # fmt: skip
    assert splits.valid == [Example("u1", "i04", 0, ("i05", "i02", "i01"), ("i03",))]
    assert splits.test == [Example("u1", "i06", 1, ("i05", "i02", "i01"), ("i04", "i03"))]
    assert splits.stats()["users"] == 2
    assert splits.stats()["interactions"] == 10


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(3.0, [1, 1, 0, 1]), (4.0, [1, 0, 0, 0]), (0.5, [1, 1, 1, 1])],
)
def test_like_threshold(threshold: float, expected: list[int]) -> None:
    # Prepare
    rows = [("u1", "i01", 1.0, 5.0), ("u1", "i02", 2.0, 4.0), ("u1", "i03", 3.0, 3.0), ("u1", "i04", 4.0, 3.5)]
    data = _platform([*rows, ("u2", "i05", 1.0, 1.0)])

    # Execute
    splits = split_platform(data, _rated(like_threshold=threshold, min_interactions=5))

    # Assert
    assert [ex.label for ex in splits.train if ex.user_id == "u1"] == expected


def test_like_threshold_per_platform() -> None:
    # Prepare
    dataset = {"a": _platform(ROWS), "b": _platform(ROWS)}

    # Execute
    splits = split_dataset(dataset, _rated(), like_thresholds={"b": 4.5})

    # Assert
    assert splits["a"].train[1].label == 1  # rating 4 > 3
    assert splits["b"].train[1].label == 0  # rating 4 <= 4.5


def test_explicit_labels_used_as_is() -> None:
    # Prepare
    data = _platform([("u1", "i01", 1.0, 0.0), ("u1", "i02", 2.0, 1.0), ("u2", "i03", 1.0, 1.0)], "label")

    # Execute
    splits = split_platform(data, _rated())

    # Assert
    assert [ex.label for ex in splits.train] == [0, 1, 1]
    assert splits.train[1].disliked == ("i01",)


def test_history_len_caps_each_side() -> None:
    # Prepare
    rows = [("u1", f"i{n:02d}", float(n), 5.0 if n % 2 else 1.0) for n in range(10)] + [("u2", "i20", 1.0, 5.0)]

    # Execute
    splits = split_platform(_platform(rows), _rated(history_len=2))

    # Assert
    assert splits.test[0].liked == ("i07", "i05")
    assert splits.test[0].disliked == ("i08", "i06")


def _implicit() -> PlatformData:
    rows = [(u, f"i{(3 * k + n) % 30:02d}", float(n), None) for k, u in enumerate(("u1", "u2", "u3")) for n in range(8)]
    return _platform(rows, "implicit")


@pytest.mark.parametrize("negatives", [1, 3])
def test_implicit_negatives_exclude_interacted_items(negatives: int) -> None:
    # Prepare
    data = _implicit()
    seen = {u: {r.item_id for r in data.interactions if r.user_id == u} for u in ("u1", "u2", "u3")}

    # Execute
    splits = split_platform(data, _rated(negatives_per_positive=negatives))

    # Assert
    for split in (splits.train, splits.valid, splits.test):
        assert sum(1 - ex.label for ex in split) == negatives * sum(ex.label for ex in split)
        for ex in split:
            assert (ex.item_id in seen[ex.user_id]) == bool(ex.label)
    assert splits.stats()["test_positive_rate"] == pytest.approx(1 / (1 + negatives))


def test_ranking_negatives_exclude_interacted_items_and_are_seeded() -> None:
    # Prepare
    data = _implicit()
    seen = {u: {r.item_id for r in data.interactions if r.user_id == u} for u in ("u1", "u2", "u3")}

    # Execute
    first = split_platform(data, _rated(rank_negatives=10, seed=1))
    again = split_platform(data, _rated(rank_negatives=10, seed=1))
    other = split_platform(data, _rated(rank_negatives=10, seed=2))

    # Assert
    assert first == again
    assert [c.negatives for c in first.ranking] != [c.negatives for c in other.ranking]
    assert [c.user_id for c in first.ranking] == ["u1", "u2", "u3"]
    held_out = {ex.user_id: ex for ex in first.test if ex.label}
    for case in first.ranking:
        assert len(case.negatives) == len(set(case.negatives)) == 10
        assert not set(case.negatives) & seen[case.user_id]
        assert (case.positive, case.liked) == (held_out[case.user_id].item_id, held_out[case.user_id].liked)


def test_ranking_small_catalogue_uses_all_unseen_items() -> None:
    # Prepare: 30 items, each user saw 8, so at most 22 unseen
    data = _implicit()

    # Execute
    splits = split_platform(data, _rated(rank_negatives=99))

    # Assert
    assert {len(c.negatives) for c in splits.ranking} == {22}
    assert splits.stats()["rank_negatives"] == 22


def test_ranking_only_for_liked_test_items() -> None:
    # Prepare: u1's last item is a like, u3's a dislike
    rows = [*ROWS, *[("u3", f"i2{n}", float(n), 5.0 if n < 5 else 1.0) for n in range(6)]]

    # Execute
    splits = split_platform(_platform(rows), _rated())

    # Assert
    assert [c.user_id for c in splits.ranking] == ["u1"]


def test_no_leakage() -> None:
    # Prepare
    data = _implicit()
    order = {(r.user_id, r.item_id): r.timestamp for r in data.interactions}

    # Execute
    splits = split_platform(data, _rated(history_len=100))

    # Assert: every history item is strictly earlier than the positive it comes with
    for ex in splits.train + splits.valid + splits.test:
        if ex.label:
            assert ex.item_id not in ex.liked
            when = order[(ex.user_id, ex.item_id)]
            assert all(order[(ex.user_id, i)] < when for i in ex.liked + ex.disliked)
            assert len(ex.liked) == when  # every earlier interaction, none later


@pytest.mark.parametrize("amount", [2, 0.5])
def test_subsample_users_deterministic(amount: float) -> None:
    # Prepare
    rows = [(f"u{u}", f"i{n:02d}", float(n), 4.0) for u in range(10) for n in range(6)]
    data = _platform(rows)

    # Execute
    first = subsample_users(data, amount, seed=3)
    again = subsample_users(data, amount, seed=3)
    others = {frozenset(r.user_id for r in subsample_users(data, amount, seed=s).interactions) for s in range(10)}

    # Assert
    assert first == again
    assert first.num_users == (2 if amount == 2 else 5)
    assert len(others) > 1
    assert first.items == data.items


def test_max_users_subsample_in_split() -> None:
    # Prepare
    rows = [(f"u{u}", f"i{n:02d}", float(n), 4.0) for u in range(10) for n in range(6)]
    data = _platform(rows)

    # Execute
    first = split_platform(data, _rated(max_users=3, seed=5))
    again = split_platform(data, _rated(max_users=3, seed=5))

    # Assert
    assert first == again
    assert first.stats()["users"] == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"history_len": 0}, "history_len"),
        ({"min_interactions": 2}, "min_interactions"),
        ({"negatives_per_positive": 0}, "negatives_per_positive"),
        ({"rank_negatives": 0}, "rank_negatives"),
        ({"max_users": 0}, "max_users"),
        ({"like_threshold": float("nan")}, "like_threshold"),
        ({"seed": -1}, "seed"),
    ],
)
def test_split_config_validation(kwargs: dict[str, float], field: str) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match=f"`{field}`"):
        SplitConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [0, 1.5, 0.0, True])
def test_subsample_users_rejects_bad_amount(amount: float) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="`fraction_or_count`"):
        subsample_users(_platform(ROWS), amount, seed=0)


def _many(name: str = "shop") -> PlatformSplits:
    """10 users x 12 interactions: 100 training examples, 10 validation, 10 test."""
    rows = [(f"u{u}", f"i{n:02d}", float(n), 5.0 if (u + n) % 3 else 1.0) for u in range(10) for n in range(12)]
    return split_platform(dataclasses.replace(_platform(rows), name=name), _rated())


@pytest.mark.parametrize(("fraction", "kept"), [(0.1, 10), (0.25, 25), (0.333, 33), (0.001, 1), (1.0, 100)])
def test_thin_train_keeps_a_seeded_share_of_training_only(fraction: float, kept: int) -> None:
    # Prepare
    full = _many()
    before = list(full.train)

    # Execute
    thin = thin_train(full, fraction, seed=4)

    # Assert
    assert len(full.train) == 100
    assert len(thin.train) == kept
    positions = [full.train.index(ex) for ex in thin.train]
    assert positions == sorted(set(positions))  # distinct examples, original order, histories as they were
    assert (thin.valid, thin.test, thin.ranking) == (full.valid, full.test, full.ranking)
    assert (thin.name, thin.items, thin.num_interactions) == (full.name, full.items, full.num_interactions)
    assert full.train == before  # the input is not modified
    assert thin.stats()["test"] == full.stats()["test"] == 10


def test_thin_train_is_seeded() -> None:
    # Prepare
    full = _many()

    # Execute
    first = thin_train(full, 0.2, seed=1)
    again = thin_train(full, 0.2, seed=1)
    kept = {tuple(thin_train(full, 0.2, seed=s).train) for s in range(5)}

    # Assert
    assert first == again
    assert len(kept) == 5


def test_thin_train_is_keyed_by_platform_not_by_the_others() -> None:
    # Prepare: two platforms with identical examples under different names
    a, b = _many("a"), _many("b")

    # Execute
    alone = thin_train(a, 0.2, seed=0)
    together = {name: thin_train(splits, 0.2, seed=0) for name, splits in {"a": a, "b": b}.items()}

    # Assert
    assert together["a"] == alone
    assert together["a"].train != together["b"].train


def test_thin_train_without_training_examples() -> None:
    # Prepare
    empty = PlatformSplits("shop", dict(CATALOGUE), [], [], [], [])

    # Execute / Assert
    assert thin_train(empty, 0.5, seed=0) == empty


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_thin_train_rejects_bad_fraction(fraction: float) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="`fraction` must be a fraction in \\(0, 1\\]"):
        thin_train(_many(), fraction, seed=0)


def test_thin_train_rejects_negative_seed() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="`seed`"):
        thin_train(_many(), 0.5, seed=-1)


@pytest.mark.parametrize("k", [1, 2])
def test_train_unseen_negatives_are_unrated_items_never_a_ranking_negative(k: int) -> None:
    # Prepare: explicit ratings; u1's test item (i06, rated 5) is a like, so u1 has a ranking case
    data = _platform(ROWS)
    plain = split_platform(data, _rated(rank_negatives=10))  # 30 items: 14 of u1's unrated ones left
    # Execute
    splits = split_platform(data, _rated(rank_negatives=10, train_unseen_negatives=k))
    # Assert: k unrated rows per rated train example (liked or not), unrated by that user, outside its
    # ranking negatives, with the history of the example they were drawn for; everything else unchanged
    added = splits.train[len(plain.train) :]
    assert splits.train[: len(plain.train)] == plain.train
    assert (splits.valid, splits.test, splits.ranking) == (plain.valid, plain.test, plain.ranking)
    liked = plain.train
    assert all(ex.rated for ex in plain.train)
    assert len(added) == k * len(liked) and all(ex.label == 0 and not ex.rated for ex in added)
    rated = {u: {r[1] for r in ROWS if r[0] == u} for u in ("u1", "u2")}
    ranked = {c.user_id: set(c.negatives) for c in plain.ranking}
    for ex in added:
        assert ex.item_id not in rated[ex.user_id] and ex.item_id not in ranked.get(ex.user_id, set())
    assert {(ex.user_id, ex.liked, ex.disliked) for ex in added} == {(e.user_id, e.liked, e.disliked) for e in liked}
    assert split_platform(data, _rated(rank_negatives=10, train_unseen_negatives=k)).train == splits.train


def test_train_unseen_negatives_leave_implicit_data_alone() -> None:
    data = _implicit()
    assert split_platform(data, _rated(train_unseen_negatives=2)) == split_platform(data, _rated())


def test_implicit_negatives_are_unrated_rows_and_the_split_says_implicit() -> None:
    splits = split_platform(_implicit(), _rated())
    assert splits.implicit
    assert {(ex.label, ex.rated) for ex in splits.train} == {(1, True), (0, False)}
    assert not split_platform(_platform(ROWS), _rated()).implicit


def test_validation_likes_get_ranking_cases_of_their_own() -> None:
    # Prepare: u1's validation item (i04, second-last) rated 4 instead of 2, a like; u2 is train-only
    rows = [(u, i, t, 4.0 if i == "i04" else v) for u, i, t, v in ROWS]
    splits = split_platform(_platform(rows), _rated(rank_negatives=10))
    # Assert: one case, the valid like against 10 items u1 never rated, drawn apart from the test case's
    (case,) = splits.valid_ranking
    assert (case.user_id, case.positive) == ("u1", "i04") and len(case.negatives) == 10
    assert not set(case.negatives) & {r[1] for r in ROWS if r[0] == "u1"}
    assert case.negatives != splits.ranking[0].negatives
    assert (case.liked, case.disliked) == (splits.valid[0].liked, splits.valid[0].disliked)
