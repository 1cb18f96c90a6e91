"""The text the model reads for an item: its title, plus its description when it has one.

An item is read on its own (the user side is built from item vectors, not from text), so
a description costs tokens once per item, not once per (user, item) pair.
"""

from __future__ import annotations

from common.data import Item


def item_text(item: Item) -> str:
    """The title, plus ``". " + text`` when the item has a description (the text alone if untitled)."""
    if item.title and item.text:
        return f"{item.title}. {item.text}"
    return item.title or item.text
