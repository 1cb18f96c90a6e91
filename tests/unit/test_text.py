from __future__ import annotations

import pytest

from common.data import Item
from common.splits import Example, RankingCase
from common.text import example_texts, item_text, user_text

ITEMS = {"a": Item("a", "Red Scarf"), "b": Item("b", "Blue Hat", "Warm wool."), "c": Item("c", "Green Gloves")}


@pytest.mark.parametrize(
    ("liked", "disliked", "expected"),
    [
        (["A", "B"], ["C"], 'Liked: "A", "B". Disliked: "C".'),
        ([], ["C"], 'Liked: none. Disliked: "C".'),
        ([], [], "Liked: none. Disliked: none."),
    ],
)
def test_user_text(liked: list[str], disliked: list[str], expected: str) -> None:
    # Execute / Assert
    assert user_text(liked, disliked) == expected


@pytest.mark.parametrize(("item_id", "expected"), [("a", "Red Scarf"), ("b", "Blue Hat. Warm wool.")])
def test_item_text(item_id: str, expected: str) -> None:
    # Execute / Assert
    assert item_text(ITEMS[item_id]) == expected


@pytest.mark.parametrize(
    "ex",
    [Example("u", "b", 1, ("a", "c"), ()), RankingCase("u", "b", ("c",), ("a", "c"), ())],
)
def test_example_texts(ex: Example | RankingCase) -> None:
    # Execute
    user, candidate = example_texts(ex, "b", ITEMS)

    # Assert
    assert user == 'Liked: "Red Scarf", "Green Gloves". Disliked: none.'
    assert candidate == "Blue Hat. Warm wool."
