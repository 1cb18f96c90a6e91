"""The warm worker's stall guard: a message that will never arrive is abandoned; a slow one is awaited."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import httpx
import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError, pull_objects

from deploy.worker import stall_guard, task_heartbeat_fn, wait_for_delivery


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


class Newer:
    """``superseded`` callback: says whether a newer task is waiting; counts the questions."""

    def __init__(self, waiting: bool) -> None:
        self.waiting, self.asked = waiting, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.waiting


def test_stalled_message_is_abandoned_once_a_newer_task_waits() -> None:
    clock, newer = FakeClock(), Newer(waiting=True)
    pull = stall_guard(_source({}, clock, step_s=10.0), stall_s=30.0, superseded=newer, clock=clock)
    for _ in range(2):  # 10, 20 s without progress: the caller retries, nobody is asked
        with pytest.raises(ObjectUnavailableError):
            pull("a")
    assert newer.asked == 0
    with pytest.raises(ObjectPullError, match="no object of this message arrived for 30 s and a newer task"):
        pull("a")
    assert newer.asked == 1


def test_slow_message_without_a_newer_task_is_awaited_and_asked_once_per_stall_period() -> None:
    # 30 nodes on 2 cores: a live message's objects can take minutes to reach the SuperNode
    clock, newer = FakeClock(), Newer(waiting=False)
    available: dict[str, bytes] = {}
    pull = stall_guard(_source(available, clock, step_s=10.0), stall_s=30.0, superseded=newer, clock=clock)
    for _ in range(12):  # 120 s without an object
        with pytest.raises(ObjectUnavailableError):
            pull("a")
    assert newer.asked == 4  # at 30, 60, 90, 120 s
    available["a"] = b"A"
    assert pull("a") == b"A"


def test_progress_resets_the_stall_clock() -> None:
    clock, newer = FakeClock(), Newer(waiting=True)
    available: dict[str, bytes] = {}
    pull = stall_guard(_source(available, clock, step_s=20.0), stall_s=30.0, superseded=newer, clock=clock)
    with pytest.raises(ObjectUnavailableError):
        pull("a")  # 20 s
    available["a"] = b"A"
    assert pull("a") == b"A"  # 40 s: progress
    with pytest.raises(ObjectUnavailableError):
        pull("b")  # 60 s, 20 s after the last progress
    assert newer.asked == 0
    with pytest.raises(ObjectPullError):
        pull("b")  # 80 s, 40 s after


def test_flower_pull_loop_gives_up_on_a_superseded_message_with_the_guard() -> None:
    # Flower's own loop (used by the worker with max_tries_per_object=None) ends on the guard's error
    clock = FakeClock()
    pull = stall_guard(_source({"a": b"A"}, clock, step_s=1.0), stall_s=5.0, superseded=Newer(True), clock=clock)
    with pytest.raises(ObjectPullError, match="no object of this message arrived"):
        pull_objects(["a", "b"], pull, max_concurrent_pulls=1, max_tries_per_object=None, initial_backoff=0.001,
                     backoff_cap=0.001)  # fmt: skip


def test_wait_for_delivery_polls_only_the_root_with_a_capped_backoff() -> None:
    clock, sleeps, asked = FakeClock(), [], []
    available: dict[str, bytes] = {}

    def pull(object_id: str) -> bytes:
        asked.append(object_id)
        if len(asked) == 6:  # the SuperNode stores the message's objects
            available["root"] = b"R"
        return _source(available, clock, step_s=0.0)(object_id)

    polls = wait_for_delivery(pull, "root", initial_s=0.02, cap_s=0.05, sleep=sleeps.append)
    assert polls == 6 and asked == ["root"] * 6
    assert sleeps == pytest.approx([0.02, 0.03, 0.045, 0.05, 0.05])


def test_wait_for_delivery_ends_with_the_guard_when_a_newer_task_waits() -> None:
    clock = FakeClock()
    pull = stall_guard(_source({}, clock, step_s=1.0), stall_s=5.0, superseded=Newer(True), clock=clock)
    with pytest.raises(ObjectPullError, match="a newer task is waiting"):
        wait_for_delivery(pull, "root", sleep=lambda s: None)


class _Beats:
    """A Runtime client whose SendTaskHeartbeat answers from a list (a value, or an exception to raise)."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)

    def SendTaskHeartbeat(self, request: object) -> object:  # noqa: N802 - Flower's method name
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/runtime/send-task-heartbeat")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))


def test_revoked_task_sets_the_flag_instead_of_interrupting_the_worker() -> None:
    # Flower's own heartbeat raises SIGINT here, which stopped the warm worker for good
    ok, gone = SimpleNamespace(success=True), SimpleNamespace(success=False)
    revoked = threading.Event()
    beat = task_heartbeat_fn(_Beats(ok, _status_error(503), gone), revoked)
    assert beat() is True and not revoked.is_set()
    assert beat() is False and not revoked.is_set()  # 503: retry later
    assert beat() is True and revoked.is_set()
    revoked = threading.Event()
    assert task_heartbeat_fn(_Beats(_status_error(401)), revoked)() is True and revoked.is_set()
    with pytest.raises(httpx.HTTPStatusError):
        task_heartbeat_fn(_Beats(_status_error(500)), threading.Event())()


def test_the_worker_asks_again_at_once_after_a_held_empty_answer_and_waits_after_a_quick_one() -> None:
    from deploy.long_poll import sleep_after_empty as idle_sleep_s
    from deploy.supernode_entry import HELD_ACQUIRE_S

    assert idle_sleep_s(0.5, poll_s=0.05, held_s=HELD_ACQUIRE_S) == 0.0  # held by crossfed's SuperNode
    assert idle_sleep_s(0.004, poll_s=0.05, held_s=HELD_ACQUIRE_S) == 0.05  # a plain SuperNode: keep polling


def test_a_revoked_token_reaches_the_worker_as_an_error_not_sigint() -> None:
    """A real HTTP 401 through the worker's Runtime API client: the heartbeat sets the revoked flag, a task
    call raises; no SIGINT. Flower's retry invoker answers a 401 by sending its own process SIGINT: a beat
    that raced the task's end (the token is revoked once its output is in) stopped the warm worker for good
    and its platform answered no message again (seen in CI: a five-platform run lost two rounds)."""
    import signal
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flwr.proto.runtime_pb2 import PullTaskInputRequest  # pylint: disable=E0611

    from deploy.worker import _client

    class Revoked(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b'{"code": 1008, "message": "Runtime task-token authentication failed."}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Revoked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    client = _client(f"127.0.0.1:{server.server_address[1]}", True, None, "token")
    try:
        revoked = threading.Event()
        assert task_heartbeat_fn(client, revoked)() is True
        with pytest.raises(httpx.HTTPStatusError):
            client.PullTaskInput(PullTaskInputRequest())
    finally:
        client.close()
        server.shutdown()
        signal.signal(signal.SIGINT, previous)
    assert revoked.is_set() and interrupted == []
