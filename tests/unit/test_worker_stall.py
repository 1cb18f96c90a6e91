"""The warm worker's stall guard: a message whose objects stop arriving is abandoned, not awaited forever."""

from __future__ import annotations

import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError, pull_objects

from deploy.worker import stall_guard


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _source(available: dict[str, bytes], clock: FakeClock, step_s: float):
    """A pull_object_fn over ``available``; every call advances the clock by ``step_s``."""

    def pull(object_id: str) -> bytes:
        clock.now += step_s
        if object_id not in available:
            raise ObjectUnavailableError(object_id)
        return available[object_id]

    return pull


def test_unavailable_object_is_retried_until_the_stall_limit() -> None:
    clock = FakeClock()
    pull = stall_guard(_source({}, clock, step_s=10.0), stall_s=30.0, clock=clock)
    for _ in range(3):  # 10, 20, 30 s without progress: still the caller's retry business
        with pytest.raises(ObjectUnavailableError):
            pull("a")
    with pytest.raises(ObjectPullError, match="no object of this message arrived for 40 s"):
        pull("a")


def test_progress_resets_the_stall_clock() -> None:
    clock = FakeClock()
    available: dict[str, bytes] = {}
    pull = stall_guard(_source(available, clock, step_s=20.0), stall_s=30.0, clock=clock)
    with pytest.raises(ObjectUnavailableError):
        pull("a")  # 20 s
    available["a"] = b"A"
    assert pull("a") == b"A"  # 40 s: progress
    with pytest.raises(ObjectUnavailableError):
        pull("b")  # 60 s, 20 s after the last progress
    with pytest.raises(ObjectPullError):
        pull("b")  # 80 s, 40 s after


def test_flower_pull_loop_gives_up_on_a_stalled_message_with_the_guard() -> None:
    # Flower's own loop (used by the worker with max_tries_per_object=None) ends on the guard's error
    clock = FakeClock()
    pull = stall_guard(_source({"a": b"A"}, clock, step_s=1.0), stall_s=5.0, clock=clock)
    with pytest.raises(ObjectPullError, match="no object of this message arrived"):
        pull_objects(["a", "b"], pull, max_concurrent_pulls=1, max_tries_per_object=None, initial_backoff=0.001,
                     backoff_cap=0.001)  # fmt: skip
