from __future__ import annotations

import pytest

from common.data import Item
from common.text import item_text

ITEMS = {
    "a": Item("a", "Red Scarf"),
    "b": Item("b", "Blue Hat", "Warm wool."),
    "c": Item("c", "Green Gloves"),
    "d": Item("d", "", "Soft."),
}


@pytest.mark.parametrize(("item_id", "expected"), [("a", "Red Scarf"), ("b", "Blue Hat. Warm wool."), ("d", "Soft.")])
def test_item_text(item_id: str, expected: str) -> None:
    # Execute / Assert
    assert item_text(ITEMS[item_id]) == expected


def test_item_tokens_fit_max_length_for_long_empty_and_non_ascii_titles() -> None:
    from clients.trainer import encode_items
    from common.modeling import load_base

    _, tokenizer = load_base("tiny-random")
    items = {"long": Item("long", "Wool scarf " * 455), "empty": Item("empty", ""),
             "intl": Item("intl", "Écharpe 羊毛围巾 🧣", "ß laine " * 1000)}  # fmt: skip
    table = encode_items(tokenizer, items, max_length=24)
    assert table.tokens.shape == (3, 24)
    assert table.lengths[table.index["long"]] == 24 and table.lengths[table.index["empty"]] == 2  # [CLS] [SEP]
    assert table.lengths[table.index["intl"]] == 24
