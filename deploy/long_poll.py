"""Long polling inside Flower's servers: a call that finds nothing waits for news before it answers.

Flower's clients poll: a SuperNode asks the SuperLink for its next message, the ServerApp for
replies, a ClientApp worker its SuperNode for the next task, each on a fixed or backing-off
interval. On one machine every empty answer costs CPU that the busy processes of a round need,
and each message waits on average half an interval at the far end. Here the server side holds an
empty answer until something that could change it happens (:class:`Bell`) or a short hold runs
out, then asks again: news goes out as soon as it exists, and an idle client costs one call per
hold instead of several. The client side: after an empty answer that took at least half the hold
(:func:`held_after_s`: a quick empty answer takes milliseconds) the client asks again at once
(:func:`sleep_after_empty`); after a quick one it keeps its own poll interval, so a server without
holds is not polled faster. Used by :mod:`deploy.superlink_entry` (message pulls) and
:mod:`deploy.supernode_entry` (the worker's task acquisition).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any


class Bell:
    """Rings each time something a held call waits for happens (a push completed, a task created);
    a held call waits for the next ring after the one it saw."""

    def __init__(self) -> None:
        self.rings = 0
        self.cond = threading.Condition()

    def ring(self) -> None:
        with self.cond:
            self.rings += 1
            self.cond.notify_all()

    def wait_after(self, seen: int, timeout_s: float) -> int:
        """The ring count once it differs from ``seen``, or after ``timeout_s`` (then ``seen``)."""
        with self.cond:
            self.cond.wait_for(lambda: self.rings != seen, timeout_s)
            return self.rings


def _has_messages(response: Any) -> bool:
    return bool(response.messages_list)


def held(call: Callable[..., Any], bell: Bell, hold_s: float, slots: threading.Semaphore,
         clock: Callable[[], float] = time.monotonic, found: Callable[[Any], bool] = _has_messages,
         ) -> Callable[..., Any]:  # fmt: skip
    """``call`` (a handler) that, when its answer is empty (not ``found``: by default no ``messages_list``),
    asks again after each ring of ``bell`` for up to ``hold_s``; answered at once when no slot is free
    (each held call keeps one of the server's worker threads)."""

    @functools.wraps(call)
    def call_held(*args: Any, **kwargs: Any) -> Any:
        seen = bell.rings  # read before the call: news arriving meanwhile is not missed
        response = call(*args, **kwargs)
        if found(response) or not slots.acquire(blocking=False):
            return response
        try:
            deadline = clock() + hold_s
            while not found(response):
                left = deadline - clock()
                if left <= 0:
                    break
                rung = bell.wait_after(seen, left)
                if rung == seen:  # held to the end
                    break
                seen = rung
                response = call(*args, **kwargs)
        finally:
            slots.release()
        return response

    return call_held


def held_after_s(hold_s: float) -> float:
    """An empty answer that took this long was held by a server that holds up to ``hold_s``."""
    return hold_s / 2


def sleep_after_empty(answer_took_s: float, poll_s: float, held_s: float) -> float:
    """The client's sleep before asking again after an empty answer: none when the server held it (it took
    ``held_s`` or more: the server answers as soon as there is news), else ``poll_s``."""
    return 0.0 if answer_took_s >= held_s else poll_s
