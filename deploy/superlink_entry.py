"""``flower-superlink`` that keeps message objects in memory (``python -m deploy.superlink_entry ARGS``).

Why: with ``--database FILE`` (what the kits and tests run, so that registered nodes and runs
survive a restart) Flower 1.42 puts everything in SQLite through SQLAlchemy, including every
object of every message: each object push or pull was an SQL write, a run-status read and an
expired-token clean-up (two SQL updates), all on the one Python thread that serves every
platform. ``python -m deploy.bench --trace`` showed it: a SuperNode's object call took 50-70 ms
against 5 ms on its own (in-memory) SuperNode, and a secure round on one machine spent most of its
time there. These changes, all inside the SuperLink process, then the unmodified command:

* **Message objects in memory** (Flower's own ``InMemoryObjectStore``, as without ``--database``).
  They live from the moment a message is sent until its receiver confirms it; the database keeps
  what must outlive a restart (registered nodes, runs, messages). A SuperLink restarted mid-round
  loses the objects of the messages then in flight, which that round could not use anyway: the
  ServerApp that waited for them died with it, and a resumed run sends its own messages.
* **Expired task tokens cleaned up at most once per second** instead of on every call: tokens
  expire after heartbeats are missed (tens of seconds), so a task is released at most 1 s later.
* **Fewer SQL statements per SuperNode call** (the same trace, again: a SuperNode's object call still
  took 50-65 ms with the database against 25 ms without). Every such call asked the database whether
  the run is still running and which node a public key belongs to, and added its bytes to the run's
  traffic counters. Here a "still running" answer is reused for 0.5 s (a stopped run refuses
  SuperNode calls at most 0.5 s later; any other answer is never reused), a key's node for 1 s (an
  unregistered node is refused at most 1 s later), and traffic is added up in memory and written once
  a second (``flwr ls`` counts lag by at most 1 s; a SuperLink killed outright loses that last second).
* **Pulls that wait for a message** (long polling). A SuperNode asks for its next message every
  0.25 s and the ServerApp for replies on a backing-off schedule, so each of a secure round's five
  messages waited on average half a poll interval at each end, and a stage waits for the slowest
  platform. Here an empty ``PullMessages`` (a SuperNode's, up to 1 s; the ServerApp's, up to 0.5 s)
  is held until a push from the other side completes (every object of a pushed message stored:
  :class:`Bell`; a SuperNode's reply wakes the ServerApp's pull, the ServerApp's message the
  SuperNodes'), then asked again: a message goes out as soon as it can be used, and an idle
  SuperNode costs one call a second instead of four. At most 12 pulls are held at once (each holds
  one of the SuperLink's worker threads); beyond that a pull is answered at once, as Flower does.
* **Lighter HTTP middleware for SuperNode and ServerApp calls** (:mod:`deploy.superlink_middleware`):
  five of Flower's eight ``BaseHTTPMiddleware`` layers act only on ``flwr`` CLI calls (or with a
  plugin) and run only there; two more run as pure-ASGI twins calling Flower's own functions.

``CROSSFED_SUPERLINK_SQL_OBJECTS=1`` keeps objects in the database (Flower's behaviour). The patch
touches only ``flwr==1.42.0`` (the version ``pyproject.toml`` pins); on any other it does nothing and
says so.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from common.flower_http import flwr_is_pinned
from deploy.long_poll import Bell, held
from deploy.superlink_middleware import patch_middleware

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


RUN_STATUS_FRESH_S = 0.5
NODE_KEY_FRESH_S = 1.0
TRAFFIC_FLUSH_S = 1.0


def patch_run_status_checks(fresh_s: float = RUN_STATUS_FRESH_S, clock: Callable[[], float] = time.monotonic) -> bool:
    """SuperNode calls reuse a "the run is running" answer for ``fresh_s``; False on another flwr.

    Only Flower's fleet handlers are patched (the ServerApp's and the CLI's status reads are not), and
    only the answer "no reason to abort" is reused: a stopped or finished run is read every time.
    """
    if not flwr_is_pinned("the SuperLink's run-status checks"):
        return False
    from flwr.superlink.servicer.fleet import fleet_handlers

    fleet_handlers.check_abort = reuse_running(fleet_handlers.check_abort, fresh_s, clock)
    return True


Ask = Callable[..., Any]


def reuse_answers(fresh_s: float, reusable: Callable[[Any], bool], key: Callable[..., tuple[int, Any]],
                  clock: Callable[[], float] = time.monotonic) -> Callable[[Ask], Ask]:  # fmt: skip
    """Decorator: a call whose ``key(*args)`` was answered less than ``fresh_s`` ago gets that answer again,
    when the answer was ``reusable``; any other answer is asked for every time (and forgets the old one).

    One shape for the SuperLink's per-call SQL reads that rarely change: "is the run still running"
    (reuse "yes", never "stopped") and "whose key is this" (reuse a node id, never "unknown").
    """

    def wrap(ask: Ask) -> Ask:
        answers: dict[tuple[int, Any], tuple[float, Any]] = {}

        @functools.wraps(ask)
        def cached(*args: Any) -> Any:
            k = key(*args)
            hit = answers.get(k)
            if hit is not None and clock() - hit[0] < fresh_s:
                return hit[1]
            answer = ask(*args)
            if reusable(answer):
                answers[k] = (clock(), answer)
            else:
                answers.pop(k, None)
            return answer

        return cached

    return wrap


def reuse_running(check: Callable[..., str | None], fresh_s: float,
                  clock: Callable[[], float] = time.monotonic) -> Callable[..., str | None]:  # fmt: skip
    """``check_abort(run_id, statuses, state)`` whose ``None`` (keep going) is reused for ``fresh_s``
    per state and run."""
    by_state_and_run = lambda run_id, statuses, state: (id(state), run_id)  # noqa: E731
    return reuse_answers(fresh_s, lambda answer: answer is None, by_state_and_run, clock)(check)


def patch_node_key_lookup(fresh_s: float = NODE_KEY_FRESH_S, clock: Callable[[], float] = time.monotonic) -> bool:
    """The SQL state's public key -> node id answer reused for ``fresh_s`` (not "unknown"); False on another flwr."""
    if not flwr_is_pinned("the SuperLink's node-key lookups"):
        return False
    from flwr.server.superlink.linkstate import SqlLinkState

    by_state_and_key = lambda state, public_key: (id(state), public_key)  # noqa: E731
    reuse = reuse_answers(fresh_s, lambda node_id: node_id is not None, by_state_and_key, clock)
    SqlLinkState.get_node_id_by_public_key = reuse(SqlLinkState.get_node_id_by_public_key)  # type: ignore[method-assign]
    return True


class TrafficBatch:
    """A run's traffic counts added up in memory and written with one SQL update at most every ``every_s``.

    ``store`` is the unpatched ``store_traffic(state, run_id, *, bytes_sent, bytes_recv)``. The first
    count after a write starts a timer; when it fires, every run's sums are written (a run deleted
    meanwhile is skipped, as Flower's ``ValueError`` says).
    """

    def __init__(self, store: Callable[..., None], every_s: float = TRAFFIC_FLUSH_S) -> None:
        self.store = store
        self.every_s = every_s
        self.lock = threading.Lock()
        self.pending: dict[tuple[int, int], tuple[Any, int, int]] = {}
        self.timer: threading.Timer | None = None

    def add(self, state: Any, run_id: int, bytes_sent: int, bytes_recv: int) -> None:
        with self.lock:
            key = (id(state), run_id)
            _, sent, recv = self.pending.get(key, (state, 0, 0))
            self.pending[key] = (state, sent + bytes_sent, recv + bytes_recv)
            if self.timer is None:
                self.timer = threading.Timer(self.every_s, self.flush)
                self.timer.daemon = True
                self.timer.start()

    def flush(self) -> None:
        with self.lock:
            pending, self.pending, self.timer = self.pending, {}, None
        for (_, run_id), (state, sent, recv) in pending.items():
            with contextlib.suppress(ValueError):  # the run is gone
                self.store(state, run_id, bytes_sent=sent, bytes_recv=recv)


def patch_traffic_batching(every_s: float = TRAFFIC_FLUSH_S) -> TrafficBatch | None:
    """The SQL state's traffic counts go through a :class:`TrafficBatch`; None on another flwr."""
    if not flwr_is_pinned("the SuperLink's traffic counts"):
        return None
    from flwr.server.superlink.linkstate import SqlLinkState

    store = SqlLinkState.store_traffic
    batch = TrafficBatch(store, every_s)

    @functools.wraps(store)
    def batched(self: Any, run_id: int, *, bytes_sent: int, bytes_recv: int) -> None:
        if bytes_sent < 0 or bytes_recv < 0 or bytes_sent == bytes_recv == 0:
            store(self, run_id, bytes_sent=bytes_sent, bytes_recv=bytes_recv)  # Flower's own error
        else:
            batch.add(self, run_id, bytes_sent, bytes_recv)

    SqlLinkState.store_traffic = batched  # type: ignore[method-assign]
    return batch


PULL_HOLD_S = 1.0  # a SuperNode's empty pull (its own HTTP timeout is 30 s)
REPLY_PULL_HOLD_S = 0.5  # the ServerApp's: it checks its deadlines between pulls
MAX_HELD_PULLS = 12


def patch_held_pulls(pull_hold_s: float = PULL_HOLD_S, reply_hold_s: float = REPLY_PULL_HOLD_S,
                     max_held: int = MAX_HELD_PULLS) -> tuple[Bell, Bell] | None:  # fmt: skip
    """Hold empty message pulls until a push completes: a SuperNode's until the ServerApp's push, the
    ServerApp's until a SuperNode's (the two bells returned, in that order); None on another flwr."""
    if not flwr_is_pinned("the SuperLink's message pulls"):
        return None
    from flwr.supercore.corestate.in_memory_corestate import InMemoryCoreState
    from flwr.supercore.corestate.sql_corestate import SqlCoreState
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    to_nodes, to_server = Bell(), Bell()
    pushing = threading.local()  # which API's push handler runs on this thread
    for handlers, bell in ((fleet_handlers, to_server), (runtime_handlers, to_nodes)):
        for name in ("push_messages", "push_object"):
            setattr(handlers, name, _pushing_for(getattr(handlers, name), pushing, bell))

    def ring() -> None:  # outside both handlers (an expired session): both ring, costing a spare pull
        marked = getattr(pushing, "bell", None)
        for bell in (marked,) if marked is not None else (to_nodes, to_server):
            bell.ring()

    for state_class in (SqlCoreState, InMemoryCoreState):
        _ring_after_pushes(state_class, ring)
    slots = threading.Semaphore(max_held)
    fleet_handlers.pull_messages = held(fleet_handlers.pull_messages, to_nodes, pull_hold_s, slots)
    runtime_handlers.pull_messages = held(runtime_handlers.pull_messages, to_server, reply_hold_s, slots)  # type: ignore[attr-defined]
    return to_nodes, to_server


def _pushing_for(handler: Callable[..., Any], pushing: threading.local, bell: Bell) -> Callable[..., Any]:
    """``handler`` that marks its thread's pushes as ringing ``bell`` while it runs."""

    @functools.wraps(handler)
    def marked(*args: Any, **kwargs: Any) -> Any:
        pushing.bell = bell
        try:
            return handler(*args, **kwargs)
        finally:
            del pushing.bell

    return marked


def _ring_after_pushes(state_class: Any, ring: Callable[[], None]) -> None:
    """``ring()`` when a push session ends (its last object stored) or needs no object at all."""
    cleanup, preregister = state_class._cleanup_push_session, state_class.preregister_object_tree

    @functools.wraps(cleanup)
    def cleanup_and_ring(self: Any, session_id: str, *, cleanup_messages: bool) -> None:
        cleanup(self, session_id, cleanup_messages=cleanup_messages)
        ring()

    @functools.wraps(preregister)
    def preregister_and_ring(self: Any, object_tree: Any, session_id: str) -> list[str]:
        missing: list[str] = preregister(self, object_tree, session_id)
        if not missing:
            ring()
        return missing

    state_class._cleanup_push_session = cleanup_and_ring
    state_class.preregister_object_tree = preregister_and_ring


def main() -> None:
    if os.environ.get(SQL_OBJECTS_ENV, "0") != "1":
        patch_object_store()
    patch_token_cleanup()
    patch_run_status_checks()
    patch_node_key_lookup()
    patch_traffic_batching()
    patch_held_pulls()
    patch_middleware()
    from flwr.superlink.cli import flower_superlink

    raise SystemExit(flower_superlink())


if __name__ == "__main__":
    main()
