"""The text the model sees: the user side (titles of liked/disliked history) and the candidate side.

History shows titles only: item descriptions would crowd the token budget, and the
candidate's own description (title plus text) is the part worth spending tokens on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from common.data import Item


class HasHistory(Protocol):
    """An :class:`~common.splits.Example` or :class:`~common.splits.RankingCase`."""

    @property
    def liked(self) -> tuple[str, ...]: ...

    @property
    def disliked(self) -> tuple[str, ...]: ...


def _titles(titles: Sequence[str]) -> str:
    return ", ".join(f'"{title}"' for title in titles) if titles else "none"


def user_text(liked_titles: Sequence[str], disliked_titles: Sequence[str]) -> str:
    """``Liked: "A", "B". Disliked: "C".`` with ``none`` for an empty side."""
    return f"Liked: {_titles(liked_titles)}. Disliked: {_titles(disliked_titles)}."


def item_text(item: Item) -> str:
    """The title, plus ``". " + text`` when the item has a description."""
    return f"{item.title}. {item.text}" if item.text else item.title


def example_texts(ex: HasHistory, candidate_id: str, items: dict[str, Item]) -> tuple[str, str]:
    """(user side, candidate side) for scoring ``candidate_id`` against ``ex``'s history."""
    user = user_text([items[i].title for i in ex.liked], [items[i].title for i in ex.disliked])
    return user, item_text(items[candidate_id])
