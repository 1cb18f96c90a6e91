"""The SuperLink's changes (deploy.superlink_entry): objects in memory, token clean-up throttled, fewer SQL reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.server.superlink.linkstate import SqlLinkState
from flwr.supercore.corestate.sql_corestate import SqlCoreState
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore

from deploy.superlink_entry import (
    at_most_every,
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
