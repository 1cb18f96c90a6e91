"""The SuperLink's two changes (deploy.superlink_entry): objects in memory, token clean-up throttled."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.supercore.corestate.sql_corestate import SqlCoreState
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore

from deploy.superlink_entry import at_most_every, patch_object_store, patch_token_cleanup


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
