"""Cold-start splits (``data.cold-start``): new items and new users are held out of training whole."""

from __future__ import annotations

import dataclasses

import pytest

from common.config import AppConfig, ConfigError
from common.data import Interaction, Item, PlatformData
from common.splits import (
    NEW_USER_KS,
    NEW_USER_MIN,
    Example,
    SplitConfig,
    new_items,
    new_users,
    split_dataset,
    split_platform,
)

CATALOGUE = {f"i{n:02d}": Item(f"i{n:02d}", f"Item {n}") for n in range(20)}
RATINGS = [5.0, 1.0, 4.0, 2.0, 5.0, 4.0, 1.0, 5.0]  # likes at 0, 2, 4, 5, 7 (threshold 3)


def _platform(feedback: str = "rating", name: str = "shop") -> PlatformData:
    """6 users x 8 interactions over 20 items, each user's items a different stride through the catalogue."""
    rows = [
        Interaction(f"u{u}", f"i{(u + 3 * n) % 20:02d}", float(n), None if feedback == "implicit" else RATINGS[n])
        for u in range(6)
        for n in range(8)
    ]
    return PlatformData(name, dict(CATALOGUE), rows, feedback)  # type: ignore[arg-type]


def _cfg(mode: str, **overrides: object) -> SplitConfig:
    return SplitConfig(**{"cold_start": mode, "train_unseen_negatives": 0, "history_len": 10, **overrides})  # type: ignore[arg-type]


def _log(data: PlatformData) -> dict[str, list[tuple[str, int]]]:
    """Each user's (item, label) in time order (the fixtures have no ties)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for row in sorted(data.interactions, key=lambda r: (r.user_id, r.timestamp)):
        label = 1 if row.value is None else int(row.value > 3.0)
        out.setdefault(row.user_id, []).append((row.item_id, label))
    return out


def _before(log: list[tuple[str, int]], position: int, skip: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(liked, disliked) of the items before ``position``, most recent first, ``skip`` left out."""
    earlier = [(item, label) for item, label in log[:position] if item not in skip]
    return (tuple(i for i, lab in reversed(earlier) if lab), tuple(i for i, lab in reversed(earlier) if not lab))


def _rows(split: list[Example]) -> list[tuple[str, str]]:
    return [(ex.user_id, ex.item_id) for ex in split if ex.rated]


# ---------------------------------------------------------------- new items


def test_new_items_are_a_seeded_share_of_the_catalogue_in_two_halves() -> None:
    valid_new, test_new = new_items(_platform(), _cfg("new-items", cold_fraction=0.2))
    assert len(valid_new) == len(test_new) == 2 and not valid_new & test_new
    assert (valid_new, test_new) == new_items(_platform(), _cfg("new-items", cold_fraction=0.2))
    assert len({frozenset(new_items(_platform(), _cfg("new-items", seed=s))[1]) for s in range(8)}) > 1
    assert sum(map(len, new_items(_platform(), _cfg("new-items", cold_fraction=0.01)))) == 2  # at least 2


def test_new_items_rows_go_where_and_train_histories_never_hold_a_new_item() -> None:
    # Prepare
    data = _platform()
    cfg = _cfg("new-items")
    valid_new, test_new = new_items(data, cfg)
    new = valid_new | test_new
    log = _log(data)

    # Execute
    splits = split_platform(data, cfg)

    # Assert: every interaction lands once (no leave-last-out), train with histories over known items only,
    # valid and test with everything before them, new items included
    expected: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for user, rows in sorted(log.items()):
        for p, (item, label) in enumerate(rows):
            name = "valid" if item in valid_new else "test" if item in test_new else "train"
            expected[name].append(Example(user, item, label, *_before(rows, p, new if name == "train" else set())))
    assert (splits.train, splits.valid, splits.test) == (expected["train"], expected["valid"], expected["test"])
    assert splits.valid and splits.test and splits.extra_tests == {}
    assert any(set(ex.liked + ex.disliked) & new for ex in splits.test)  # valid/test histories do see new items


def _assert_no_new_item_trains(splits_train: list[Example], new: set[str]) -> None:
    for ex in splits_train:
        assert ex.item_id not in new and not set(ex.liked + ex.disliked) & new


def test_new_items_explicit_unrated_train_rows_are_known_items() -> None:
    # Prepare
    data = _platform()
    cfg = _cfg("new-items", train_unseen_negatives=3, rank_negatives=5)
    new = set().union(*new_items(data, cfg))
    seen = {user: {item for item, _ in rows} for user, rows in _log(data).items()}

    # Execute
    splits = split_platform(data, cfg)

    # Assert
    unrated = [ex for ex in splits.train if not ex.rated]
    assert len(unrated) == 3 * len(_rows(splits.train))
    _assert_no_new_item_trains(splits.train, new)
    ranked = {(case.user_id, neg) for case in (*splits.ranking, *splits.valid_ranking) for neg in case.negatives}
    assert all(ex.item_id not in seen[ex.user_id] and (ex.user_id, ex.item_id) not in ranked for ex in unrated)
    assert all(ex.rated for ex in splits.valid + splits.test)


def test_new_items_implicit_negatives_come_from_the_same_group() -> None:
    # Prepare
    data = _platform("implicit")
    cfg = _cfg("new-items", negatives_per_positive=2)
    valid_new, test_new = new_items(data, cfg)
    seen = {user: {item for item, _ in rows} for user, rows in _log(data).items()}

    # Execute
    splits = split_platform(data, cfg)

    # Assert
    _assert_no_new_item_trains(splits.train, valid_new | test_new)
    for split, group in ((splits.valid, valid_new), (splits.test, test_new)):
        positives = [ex for ex in split if ex.rated]
        assert positives and all(ex.item_id in group for ex in positives)
        negatives = [ex for ex in split if not ex.rated]
        assert negatives and all(ex.item_id in group and ex.item_id not in seen[ex.user_id] for ex in negatives)
        assert all(ex.label == 0 for ex in negatives)


def test_new_items_ranking_ranks_the_last_new_like_against_the_whole_catalogue() -> None:
    # Prepare
    data = _platform()
    cfg = _cfg("new-items", rank_negatives=99)
    valid_new, test_new = new_items(data, cfg)
    seen = {user: {item for item, _ in rows} for user, rows in _log(data).items()}

    # Execute
    splits = split_platform(data, cfg)

    # Assert
    for cases, split in ((splits.ranking, splits.test), (splits.valid_ranking, splits.valid)):
        last = {ex.user_id: ex for ex in split if ex.label}  # the last like of each user with one
        assert [c.user_id for c in cases] == sorted(last)
        for case in cases:
            held = last[case.user_id]
            assert (case.positive, case.liked, case.disliked) == (held.item_id, held.liked, held.disliked)
            assert len(case.negatives) == 12 and not set(case.negatives) & seen[case.user_id]  # 20 - 8 unseen: all
    assert any(set(c.negatives) & (valid_new | test_new) for c in splits.ranking)


# ---------------------------------------------------------------- new users


def _with_short_users(feedback: str = "rating") -> PlatformData:
    """``_platform`` plus two users with too few interactions to be drawn as new."""
    data = _platform(feedback)
    short = [Interaction(f"s{u}", f"i{n:02d}", float(n), None if feedback == "implicit" else 4.0)
             for u in range(2) for n in range(NEW_USER_MIN - 1)]  # fmt: skip
    return dataclasses.replace(data, interactions=[*data.interactions, *short])


def test_new_users_are_a_seeded_share_of_users_with_enough_interactions() -> None:
    data = _with_short_users()
    valid_users, test_users = new_users(data, _cfg("new-users", cold_fraction=0.5))
    assert len(valid_users) == 2 and len(test_users) == 2 and not valid_users & test_users  # 0.5 * 8 users
    assert not (valid_users | test_users) & {"s0", "s1"}
    assert len(new_users(data, _cfg("new-users", cold_fraction=0.9))[1]) == 3  # capped at the 6 eligible
    assert len({frozenset(new_users(data, _cfg("new-users", seed=s))[1]) for s in range(8)}) > 1


def test_new_users_never_train_and_are_seen_through_their_first_k_interactions() -> None:
    # Prepare
    data = _with_short_users()
    cfg = _cfg("new-users", cold_fraction=0.5, rank_negatives=5)
    valid_users, test_users = new_users(data, cfg)
    log = _log(data)

    # Execute
    splits = split_platform(data, cfg)

    # Assert: known users train on everything; new users only from position 5, with their first 3 as history
    assert {ex.user_id for ex in splits.train} == set(log) - valid_users - test_users
    assert _rows(splits.train) == [(u, item) for u in sorted(set(log) - valid_users - test_users) for item, _ in log[u]]
    assert max(NEW_USER_KS) == 5 and set(splits.extra_tests) == {"test-k1", "test-k5"}
    for split, users in (("valid", valid_users), ("test", test_users), ("test-k1", test_users),
                         ("test-k5", test_users)):  # fmt: skip
        examples = getattr(splits, split, None) or splits.extra_tests[split]
        assert _rows(examples) == [(u, item) for u in sorted(users) for item, _ in log[u][5:]]
    user = sorted(test_users)[0]
    items = [item for item, _ in log[user]]  # labels 1 0 1 0 1 1 0 1
    firsts = {
        "test-k1": ((items[0],), ()),
        "test": ((items[2], items[0]), (items[1],)),
        "test-k5": ((items[4], items[2], items[0]), (items[3], items[1])),
    }
    for split, (liked, disliked) in firsts.items():
        examples = splits.test if split == "test" else splits.extra_tests[split]
        assert [ex for ex in examples if ex.user_id == user] == [
            Example(user, items[5], 1, liked, disliked), Example(user, items[6], 0, liked, disliked),
            Example(user, items[7], 1, liked, disliked),
        ]  # fmt: skip
    case = next(c for c in splits.ranking if c.user_id == user)
    assert (case.positive, case.liked, case.disliked) == (items[7], *firsts["test"])
    assert [c.user_id for c in splits.ranking] == sorted(test_users)
    assert [c.user_id for c in splits.valid_ranking] == sorted(valid_users)
    assert splits.stats()["users"] == 8


def test_new_user_history_k_names_the_extra_tests() -> None:
    splits = split_platform(_platform(), _cfg("new-users", cold_fraction=0.5, new_user_history=2))
    assert set(splits.extra_tests) == {"test-k1", "test-k3", "test-k5"}
    assert {len(ex.liked) + len(ex.disliked) for ex in splits.test} == {2}
    assert {len(ex.liked) + len(ex.disliked) for ex in splits.valid} == {2}


def test_new_users_implicit_negatives_are_unseen_and_shared_across_k() -> None:
    # Prepare
    data = _platform("implicit")
    seen = {user: {item for item, _ in rows} for user, rows in _log(data).items()}

    # Execute
    splits = split_platform(data, _cfg("new-users", cold_fraction=0.5, negatives_per_positive=2))

    # Assert: the k's differ in history only
    for examples in (splits.valid, splits.test, *splits.extra_tests.values()):
        assert sum(not ex.rated for ex in examples) == 2 * sum(ex.rated for ex in examples) > 0
        assert all(ex.item_id not in seen[ex.user_id] for ex in examples if not ex.rated)
    for examples in splits.extra_tests.values():
        assert [(ex.user_id, ex.item_id, ex.label) for ex in examples] == [
            (ex.user_id, ex.item_id, ex.label) for ex in splits.test
        ]


# ---------------------------------------------------------------- seeds, keys, defaults, config


@pytest.mark.parametrize("mode", ["new-items", "new-users"])
def test_cold_splits_are_seeded_and_keyed_by_platform(mode: str) -> None:
    data = _platform("implicit")
    first = split_platform(data, _cfg(mode, seed=1, cold_fraction=0.4))
    assert first == split_platform(data, _cfg(mode, seed=1, cold_fraction=0.4))
    drawn = new_items if mode == "new-items" else new_users
    assert len({frozenset(drawn(data, _cfg(mode, seed=s, cold_fraction=0.4))[1]) for s in range(8)}) > 1
    alone = split_platform(_platform("implicit", "a"), _cfg(mode, cold_fraction=0.4))
    together = split_dataset({"a": _platform("implicit", "a"), "b": _platform("implicit", "b")},
                             _cfg(mode, cold_fraction=0.4))  # fmt: skip
    assert together["a"] == alone


def test_default_is_leave_last_out_whatever_the_cold_settings() -> None:
    data = _platform("implicit")
    plain = split_platform(data, SplitConfig())
    assert split_platform(data, SplitConfig(cold_fraction=0.7, new_user_history=5)) == plain
    assert plain.extra_tests == {} and [ex.item_id for ex in plain.test if ex.rated] == [
        rows[-1][0] for _, rows in sorted(_log(data).items())
    ]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"data.cold-start": "new-platforms"}, "data.cold-start"),
        ({"data.cold-fraction": 0.0}, "data.cold-fraction"),
        ({"data.cold-fraction": 1.0}, "data.cold-fraction"),
        ({"data.cold-fraction": float("nan")}, "data.cold-fraction"),
        ({"data.new-user-history": 0}, "data.new-user-history"),
        ({"data.new-user-history": 6}, "data.new-user-history"),
    ],
)
def test_bad_cold_start_settings_name_the_key(override: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"`{key}`"):
        AppConfig().replace(**override)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"cold_start": "x"}, "cold_start"), ({"cold_fraction": 1.5}, "cold_fraction"),
     ({"new_user_history": 9}, "new_user_history")],
)  # fmt: skip
def test_split_config_checks_cold_start_settings(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"`{field}`"):
        SplitConfig(**kwargs)  # type: ignore[arg-type]


def test_a_run_passes_its_cold_start_settings_to_the_split() -> None:
    from clients.platform import split_config

    spec = AppConfig().replace(**{"data.cold-start": "new-users", "data.cold-fraction": 0.3,
                                  "data.new-user-history": 1}).data  # fmt: skip
    cfg = split_config(spec, seed=0)
    assert (cfg.cold_start, cfg.cold_fraction, cfg.new_user_history) == ("new-users", 0.3, 1)


def test_new_users_on_a_tiny_run_report_every_history_size() -> None:
    from clients.platform import NodeSetup
    from clients.private_state import PrivateStore
    from clients.tasks import evaluate_state
    from common.config import TINY_PRESET
    from common.modeling import build_scorer, get_trainable_state

    cfg = AppConfig().replace(**TINY_PRESET, **{"model.dim": 16, "data.cold-start": "new-users"})
    state = get_trainable_state(build_scorer(cfg.model, cfg.lora, cfg.seed)[0])
    metrics = evaluate_state(cfg, NodeSetup("web_shop", "", "cpu"), state, 1, PrivateStore(), ("valid", "test"))
    for split in ("test", "test-k1", "test-k5"):
        assert {f"{split}.auc", f"{split}.logloss", f"{split}.n"} <= set(metrics)
    assert metrics["test-k1.n"] == metrics["test.n"] == metrics["test-k5.n"] > 0
    assert "valid-k1.auc" not in metrics and "test-k3.auc" not in metrics
