"""The SuperLink's changes (deploy.superlink_entry): objects in memory, token clean-up throttled, fewer SQL reads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from flwr.server.superlink.linkstate import SqlLinkState
from flwr.supercore.corestate.in_memory_corestate import InMemoryCoreState
from flwr.supercore.corestate.sql_corestate import SqlCoreState
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
from flwr.superlink.servicer.fleet import fleet_handlers
from flwr.superlink.servicer.runtime import runtime_handlers

from deploy.long_poll import Bell, held
from deploy.superlink_entry import (
    at_most_every,
    patch_held_pulls,
    patch_node_key_lookup,
    patch_object_store,
    patch_token_cleanup,
    patch_traffic_batching,
    reuse_running,
)


def test_a_method_runs_at_most_once_per_interval_for_each_instance() -> None:
    now = [100.0]
    calls: list[tuple[str, float]] = []

    class State:
        def __init__(self, name: str) -> None:
            self.name = name

        @at_most_every(1.0, clock=lambda: now[0])
        def cleanup(self) -> None:
            calls.append((self.name, now[0]))

    a, b = State("a"), State("b")
    a.cleanup()  # first call: runs
    now[0] = 100.5
    a.cleanup()  # 0.5 s later: skipped
    b.cleanup()  # another instance has its own clock: runs
    now[0] = 101.0
    a.cleanup()  # 1 s after the last run: runs
    assert calls == [("a", 100.0), ("b", 100.5), ("a", 101.0)]


def test_objects_go_to_memory_though_a_database_file_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ObjectStoreFactory, "__init__", ObjectStoreFactory.__init__)  # restored after the test
    assert patch_object_store()
    store = ObjectStoreFactory(str(tmp_path / "state.db")).store()
    assert isinstance(store, InMemoryObjectStore)
    assert not (tmp_path / "state.db").exists()


def test_the_sql_state_cleans_expired_tokens_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[object] = []
    monkeypatch.setattr(SqlCoreState, "_cleanup_expired_task_tokens", lambda self: ran.append(self))
    assert patch_token_cleanup(every_s=60.0)
    state = object()  # the stand-in method needs no database: only the calls that got through are counted
    for _ in range(5):
        SqlCoreState._cleanup_expired_task_tokens(state)  # type: ignore[arg-type]
    assert ran == [state]


def test_a_running_answer_is_reused_for_its_window_and_an_abort_never() -> None:
    now = [0.0]
    answers: list[str | None] = [None, None, "Run is stopped.", "Run is stopped.", None]
    asked: list[int] = []

    def check(run_id: int, statuses: list[str], state: object) -> str | None:
        asked.append(run_id)
        return answers[len(asked) - 1]

    cached = reuse_running(check, fresh_s=0.5, clock=lambda: now[0])
    state = object()
    assert [cached(7, [], state) for _ in range(3)] == [None] * 3  # one read, reused twice
    assert cached(8, [], state) is None  # another run is read on its own
    assert asked == [7, 8]
    now[0] = 0.6  # run 7's answer is stale: read again; the run was stopped meanwhile
    assert cached(7, [], state) == "Run is stopped."
    assert cached(7, [], state) == "Run is stopped."  # an abort is never reused: read each time
    assert cached(7, [], state) is None
    assert asked == [7, 8, 7, 7, 7]


def test_a_nodes_key_is_looked_up_once_per_window_and_an_unknown_key_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    known = {b"a": 11}
    asked: list[bytes] = []

    def lookup(self: object, public_key: bytes) -> int | None:
        asked.append(public_key)
        return known.get(public_key)

    monkeypatch.setattr(SqlLinkState, "get_node_id_by_public_key", lookup)
    assert patch_node_key_lookup(fresh_s=1.0, clock=lambda: now[0])
    state = object()
    assert [SqlLinkState.get_node_id_by_public_key(state, b"a") for _ in range(3)] == [11] * 3  # type: ignore[arg-type]
    assert [SqlLinkState.get_node_id_by_public_key(state, b"x") for _ in range(2)] == [None] * 2  # type: ignore[arg-type]
    assert asked == [b"a", b"x", b"x"]
    del known[b"a"]  # unregistered: refused once the window has passed
    now[0] = 1.0
    assert SqlLinkState.get_node_id_by_public_key(state, b"a") is None  # type: ignore[arg-type]


def test_traffic_is_added_up_per_run_and_written_once_per_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[object, int, int, int]] = []

    def store(self: object, run_id: int, *, bytes_sent: int, bytes_recv: int) -> None:  # Flower's checks
        if bytes_sent == bytes_recv == 0:
            raise ValueError(f"Both bytes_sent and bytes_recv cannot be zero for run {run_id}")
        if run_id == 99:
            raise ValueError(f"Run {run_id} not found")
        written.append((self, run_id, bytes_sent, bytes_recv))

    monkeypatch.setattr(SqlLinkState, "store_traffic", store)
    batch = patch_traffic_batching(every_s=3600.0)  # the timer never fires here: flushed by hand
    assert batch is not None
    state = object()
    SqlLinkState.store_traffic(state, 1, bytes_sent=10, bytes_recv=0)  # type: ignore[arg-type]
    SqlLinkState.store_traffic(state, 1, bytes_sent=0, bytes_recv=5)  # type: ignore[arg-type]
    SqlLinkState.store_traffic(state, 2, bytes_sent=3, bytes_recv=4)  # type: ignore[arg-type]
    SqlLinkState.store_traffic(state, 99, bytes_sent=1, bytes_recv=1)  # type: ignore[arg-type]
    assert written == []
    timer = batch.timer
    batch.flush()  # run 99 is gone: skipped, the others written
    assert timer is not None
    timer.cancel()
    assert sorted(written, key=lambda w: w[1]) == [(state, 1, 10, 5), (state, 2, 3, 4)]
    with pytest.raises(ValueError, match="cannot be zero"):  # Flower's own check still answers at once
        SqlLinkState.store_traffic(state, 1, bytes_sent=0, bytes_recv=0)  # type: ignore[arg-type]


class _Answer:
    def __init__(self, messages: list[str]) -> None:
        self.messages_list = messages


def test_an_empty_pull_is_held_until_a_push_completes_then_asked_again() -> None:
    bell, inbox, pulls = Bell(), [], []

    def pull(node: int) -> _Answer:
        answer = _Answer(list(inbox))
        pulls.append(node)  # after reading the inbox: the test waits for an empty first pull
        return answer

    pull_held = held(pull, bell, hold_s=30.0, slots=threading.Semaphore(1))
    answer: list[_Answer] = []
    waiting = threading.Thread(target=lambda: answer.append(pull_held(7)))
    waiting.start()
    while not pulls:  # the first pull found nothing (the message is not there yet)
        time.sleep(0.001)
    inbox.append("message")
    bell.ring()  # its push completed
    waiting.join(timeout=10)
    assert [a.messages_list for a in answer] == [["message"]]
    assert pulls == [7, 7]


def test_a_pull_is_answered_at_once_when_it_finds_a_message_or_no_slot_is_free() -> None:
    bell, pulls = Bell(), []

    def pull(found: bool) -> _Answer:
        pulls.append(found)
        return _Answer(["m"] if found else [])

    slots = threading.Semaphore(1)
    pull_held = held(pull, bell, hold_s=30.0, slots=slots)
    assert pull_held(True).messages_list == ["m"]
    slots.acquire()  # every slot taken: nothing is held
    assert pull_held(False).messages_list == []
    assert pulls == [True, False]


def test_a_held_pull_ends_empty_when_nothing_completes_in_its_window() -> None:
    now = [0.0]
    bell = Bell()

    def pull() -> _Answer:
        return _Answer([])

    def wait_after(seen: int, timeout_s: float) -> int:  # no push completes: the wait runs out
        now[0] += timeout_s
        return seen

    bell.wait_after = wait_after  # type: ignore[method-assign]
    slots = threading.Semaphore(1)
    assert held(pull, bell, hold_s=1.0, slots=slots, clock=lambda: now[0])().messages_list == []
    assert now[0] == 1.0
    assert slots.acquire(blocking=False)  # the slot was given back


def test_a_completed_push_rings_the_other_sides_bell(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(SqlCoreState, "_cleanup_push_session", lambda self, sid, *, cleanup_messages: calls.append(sid))
    monkeypatch.setattr(SqlCoreState, "preregister_object_tree", lambda self, tree, sid: ["missing"] if tree else [])
    monkeypatch.setattr(InMemoryCoreState, "_cleanup_push_session", InMemoryCoreState._cleanup_push_session)
    monkeypatch.setattr(InMemoryCoreState, "preregister_object_tree", InMemoryCoreState.preregister_object_tree)
    state = object()

    def last_object_stored(*args: object) -> None:  # stands in for a push handler storing a session's last object
        SqlCoreState._cleanup_push_session(state, "s", cleanup_messages=False)  # type: ignore[arg-type]

    for handlers in (fleet_handlers, runtime_handlers):
        for name in ("pull_messages", "push_messages"):
            monkeypatch.setattr(handlers, name, getattr(handlers, name))  # restored after the test
        monkeypatch.setattr(handlers, "push_object", last_object_stored)
    bells = patch_held_pulls()
    assert bells is not None
    to_nodes, to_server = bells
    fleet_handlers.push_object()  # a SuperNode's reply is in: the ServerApp's pull wakes
    assert (to_nodes.rings, to_server.rings) == (0, 1)
    runtime_handlers.push_object()  # type: ignore[attr-defined]  # the ServerApp's message is in: SuperNodes wake
    assert (to_nodes.rings, to_server.rings) == (1, 1)
    SqlCoreState._cleanup_push_session(state, "x", cleanup_messages=False)  # type: ignore[arg-type]  # neither: both
    assert (to_nodes.rings, to_server.rings) == (2, 2)
    assert SqlCoreState.preregister_object_tree(state, "tree", "s2") == ["missing"]  # type: ignore[arg-type]  # objects to come
    assert SqlCoreState.preregister_object_tree(state, "", "s3") == []  # type: ignore[arg-type]  # nothing to push
    assert (to_nodes.rings, to_server.rings) == (3, 3)
    assert calls == ["s", "s", "x"]
