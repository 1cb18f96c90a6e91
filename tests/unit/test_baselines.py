"""No-training baselines: hand-derived values, and the ranking protocol of the trained arms."""

import math

import numpy as np
import pytest

from common.data import Item
from common.splits import Example, PlatformSplits, RankingCase
from simulations.baselines import (
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
