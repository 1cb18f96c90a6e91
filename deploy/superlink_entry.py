"""``flower-superlink`` that keeps message objects in memory (``python -m deploy.superlink_entry ARGS``).

Why: with ``--database FILE`` (what the kits and tests run, so that registered nodes and runs
survive a restart) Flower 1.42 puts everything in SQLite through SQLAlchemy, including every
object of every message: each object push or pull was an SQL write, a run-status read and an
expired-token clean-up (two SQL updates), all on the one Python thread that serves every
platform. ``python -m deploy.bench --trace`` showed it: a SuperNode's object call took 50-70 ms
against 5 ms on its own (in-memory) SuperNode, and a secure round on one machine spent most of its
time there. Two changes, both inside the SuperLink process, then the unmodified command:

* **Message objects in memory** (Flower's own ``InMemoryObjectStore``, as without ``--database``).
  They live from the moment a message is sent until its receiver confirms it; the database keeps
  what must outlive a restart (registered nodes, runs, messages). A SuperLink restarted mid-round
  loses the objects of the messages then in flight, which that round could not use anyway: the
  ServerApp that waited for them died with it, and a resumed run sends its own messages.
* **Expired task tokens cleaned up at most once per second** instead of on every call: tokens
  expire after heartbeats are missed (tens of seconds), so a task is released at most 1 s later.

``CROSSFED_SUPERLINK_SQL_OBJECTS=1`` keeps objects in the database (Flower's behaviour). The patch
touches only ``flwr==1.42.0`` (the version ``pyproject.toml`` pins); on any other it does nothing and
says so.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from common.flower_http import flwr_is_pinned

SQL_OBJECTS_ENV = "CROSSFED_SUPERLINK_SQL_OBJECTS"
TOKEN_CLEANUP_EVERY_S = 1.0


def patch_object_store() -> bool:
    """Every ObjectStoreFactory of this process makes Flower's in-memory store; False on another flwr."""
    if not flwr_is_pinned("the SuperLink's object store"):
        return False
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import object_store_factory

    init = object_store_factory.ObjectStoreFactory.__init__

    def in_memory(self: Any, database: str = FLWR_IN_MEMORY_DB_NAME) -> None:
        init(self, FLWR_IN_MEMORY_DB_NAME)

    object_store_factory.ObjectStoreFactory.__init__ = in_memory  # type: ignore[method-assign]
    return True


Method = Callable[..., None]


def at_most_every(every_s: float, clock: Callable[[], float] = time.monotonic) -> Callable[[Method], Method]:
    """Decorator: call the wrapped method at most once per ``every_s`` for each instance; skip otherwise."""

    def wrap(method: Method) -> Method:
        last: dict[int, float] = {}

        @functools.wraps(method)
        def throttled(self: Any) -> None:
            now = clock()
            if now - last.get(id(self), -float("inf")) >= every_s:
                last[id(self)] = now
                method(self)

        return throttled

    return wrap


def patch_token_cleanup(every_s: float = TOKEN_CLEANUP_EVERY_S) -> bool:
    """The SQL state's expired-token clean-up at most once per ``every_s``; False on another flwr."""
    if not flwr_is_pinned("the SuperLink's token clean-up"):
        return False
    from flwr.supercore.corestate.sql_corestate import SqlCoreState

    SqlCoreState._cleanup_expired_task_tokens = at_most_every(every_s)(SqlCoreState._cleanup_expired_task_tokens)  # type: ignore[method-assign]
    return True


def main() -> None:
    if os.environ.get(SQL_OBJECTS_ENV, "0") != "1":
        patch_object_store()
    patch_token_cleanup()
    from flwr.superlink.cli import flower_superlink

    raise SystemExit(flower_superlink())


if __name__ == "__main__":
    main()
