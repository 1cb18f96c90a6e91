"""No-training baselines: hand-derived values, and the ranking protocol of the trained arms."""

import math

import numpy as np
import pytest

from common.data import Item
from common.splits import Example, PlatformSplits, RankingCase
from simulations.compare.baselines import (
    baseline_scorers,
    evaluate_baseline,
    fit_logistic,
    item_scorers,
    liked_share,
    platform_scorers,
    smoothed_rate,
)


@pytest.mark.parametrize(
    "liked,disliked,expected",
    [((), (), 0.5), (("a",), (), 1.0), ((), ("a",), 0.0), (("a", "b", "c"), ("d",), 0.75)],
)
def test_liked_share(liked: tuple, disliked: tuple, expected: float) -> None:
    assert liked_share(liked, disliked) == expected


def test_smoothed_rate_by_hand() -> None:
    assert smoothed_rate(0, 0, 0.6) == pytest.approx(0.6)  # unseen item: the prior
    assert smoothed_rate(3, 5, 0.6, strength=5.0) == pytest.approx((3 + 3) / 10)


def test_fit_logistic_recovers_known_parameters() -> None:
    # Prepare: labels drawn from sigmoid(2x - 1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(2 * x - 1)))).astype(float)
    # Execute
    a, b = fit_logistic(x, y)
    # Assert
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)


def _ex(user: str, item: str, label: int, liked: tuple = (), disliked: tuple = ()) -> Example:
    return Example(user, item, label, liked, disliked)


def test_item_scorers_follow_counts_and_rates() -> None:
    # Prepare: i1 seen 3x (liked 3x), i2 seen 2x (liked 0x), i3 never
    train = [_ex("u1", "i1", 1), _ex("u2", "i1", 1), _ex("u3", "i1", 1), _ex("u1", "i2", 0), _ex("u2", "i2", 0)]
    # Execute
    scorers = item_scorers(train)
    pop, rate = scorers["popularity"], scorers["like-rate"]
    q = _ex("u9", "x", 0)  # the query: item statistics ignore who asks
    # Assert
    assert pop(q, "i1") > pop(q, "i2") > pop(q, "i3")
    assert rate(q, "i3") == pytest.approx(0.6)  # the platform's like-rate
    assert rate(q, "i1") == pytest.approx((3 + 5 * 0.6) / (3 + 5))
    assert rate(q, "i2") == pytest.approx((0 + 5 * 0.6) / (2 + 5))


def test_implicit_popularity_ignores_sampled_negatives() -> None:
    train = [_ex("u1", "i1", 1), _ex("u1", "i2", 0), _ex("u2", "i2", 0), _ex("u2", "i3", 1), _ex("u3", "i3", 1)]
    pop = item_scorers(train, implicit=True)["popularity"]
    q = _ex("u9", "x", 0)
    assert pop(q, "i3") > pop(q, "i1") > pop(q, "i2")  # i2 was only ever a sampled negative


def test_evaluate_baseline_protocol() -> None:
    # Prepare: test users with a clear liked-share signal; one ranking case
    others = tuple(f"x{i}" for i in range(12))  # more negatives than k = 10, so a full tie is a miss
    items = {i: Item(i, i) for i in ("a", "b", "c", "d", *others)}
    train = [_ex("u1", "a", 1), _ex("u2", "b", 0)]
    test = [_ex("u1", "c", 1, ("a", "b"), ()), _ex("u2", "d", 0, (), ("a", "b")), _ex("u3", "c", 1, ("a",), ("b",))]
    cases = [RankingCase("u1", "c", others, ("a",), ())]
    splits = PlatformSplits("p", items, train, [], test, cases)
    # Execute
    metrics = evaluate_baseline(baseline_scorers(splits)["liked-share"], splits, cases)
    # Assert: AUC 1 (positives 1.0 and 0.5 above the negative 0.0); a user-only score ties: HR@10 = 0
    assert metrics["test.auc"] == 1.0
    assert metrics["test.n"] == 3.0
    assert metrics["test.hr@10"] == 0.0 and metrics["test.ndcg@10"] == 0.0
    assert "valid.auc" not in metrics
    assert math.isfinite(metrics["test.logloss"])


def test_liked_share_scorer_reads_the_query_history() -> None:
    share = baseline_scorers(PlatformSplits("p", {}, [_ex("u1", "a", 1)], [], [], []))["liked-share"]
    case = RankingCase("u1", "c", ("d",), ("a", "b", "c"), ("e",))
    assert share(_ex("u1", "c", 1, ("a",), ("b", "d", "e")), "c") == 0.25
    assert share(case, "c") == share(case, "d") == 0.75  # the candidate does not matter


def test_platform_scorers_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'bogus'"):
        platform_scorers("bogus", {}, set(), seed=0)


def test_nearest_known_by_hand() -> None:
    # Prepare: rows 0 and 2 known; row 1 is closest to 2, row 3 equally close to 0 and 2, row 4 a zero vector
    from simulations.compare.baselines import nearest_known

    vectors = np.array([[1.0, 0.0], [0.1, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    known = np.array([True, False, True, False, False])
    # Execute
    nearest = nearest_known(vectors, known)
    # Assert: known rows map to themselves; ties (and a zero vector) go to the lowest known row
    assert nearest.tolist() == [0, 2, 2, 0, 0]
    assert nearest_known(vectors * 3.0, known).tolist() == nearest.tolist()  # cosine: scale does not matter
    assert nearest_known(vectors, np.zeros(5, bool)).tolist() == [-1] * 5


def test_known_item_is_its_own_nearest_even_beside_an_identical_one() -> None:
    from simulations.compare.baselines import nearest_known

    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert nearest_known(vectors, np.array([True, True, False])).tolist() == [0, 1, 0]


def test_content_scorer_gives_a_new_item_its_nearest_known_items_like_rate() -> None:
    # Prepare: liked item "a" and disliked item "b" in train; new item "c" reads like "b", "d" like "a"
    from simulations.compare.baselines import content_scorer

    train = [_ex("u1", "a", 1), _ex("u2", "a", 1), _ex("u1", "b", 0), _ex("u2", "b", 0)]
    ids = ["a", "b", "c", "d"]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9], [0.9, 0.1]])
    # Execute
    content = content_scorer(train, ids, vectors)
    rate = item_scorers(train)["like-rate"]
    q = _ex("u9", "x", 0)
    # Assert
    assert content(q, "c") == rate(q, "b") and content(q, "d") == rate(q, "a")
    assert content(q, "a") == rate(q, "a") and content(q, "b") == rate(q, "b")
    assert content(q, "zz") == pytest.approx(0.5)  # not in the catalogue: the prior


def test_content_baseline_on_frozen_tiny_vectors_and_extra_test_splits() -> None:
    # Prepare: a tiny random base; a known and a new item with the same title, one new item with another
    from clients.trainer import encode_items
    from common.config import TINY_BASE
    from common.modeling import frozen_item_vectors, load_base

    encoder, tokenizer = load_base(TINY_BASE, 0)
    items = {"a": Item("a", "red wool scarf"), "b": Item("b", "space opera film"), "c": Item("c", "red wool scarf"),
             "d": Item("d", "space opera film sequel")}  # fmt: skip
    table = encode_items(tokenizer, items, 16)
    train = [_ex("u1", "a", 1), _ex("u2", "a", 1), _ex("u1", "b", 0), _ex("u2", "b", 0)]
    test = [_ex("u3", "c", 1), _ex("u4", "d", 0)]
    splits = PlatformSplits("p", items, train, [], test, [])
    splits.extra_tests = {"test-k1": test[:1] + [_ex("u5", "b", 0)]}  # what the cold-start split adds

    def item_vectors(platform: str) -> tuple[list[str], np.ndarray]:
        return table.ids, frozen_item_vectors(encoder, table.tokens, table.lengths, batch_size=3)

    mode = encoder.training
    # Execute
    vectors = item_vectors("p")[1]
    scorer = platform_scorers("content", {"p": splits}, set(), 0, item_vectors)["p"]
    metrics = evaluate_baseline(scorer, splits, [])
    # Assert: deterministic vectors whatever the batch; the new item "c" takes its twin "a"'s like-rate
    assert vectors.shape == (4, 32) and np.isfinite(vectors).all()
    assert np.allclose(vectors, frozen_item_vectors(encoder, table.tokens, table.lengths, batch_size=1), atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6) and encoder.training == mode  # the cached base's mode kept
    q = _ex("u9", "x", 0)
    assert scorer(q, "c") == item_scorers(train)["like-rate"](q, "a")
    assert metrics["test.auc"] == 1.0 and metrics["test-k1.auc"] == 1.0 and metrics["test-k1.n"] == 2.0
    with pytest.raises(ValueError, match="item vectors"):
        platform_scorers("content", {"p": splits}, set(), 0)
