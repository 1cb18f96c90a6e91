"""SuperNode and ServerApp survive HTTP 500s from a busy SuperLink; the ServerApp pulls replies sooner."""

from __future__ import annotations

import httpx
import pytest
from flwr.supercore.retry import make_simple_http_retry_invoker

from common.flower_http import is_server_error, retry_server_errors
from deploy.supernode_entry import (
    activation_wait_s,
    beat_through_server_errors,
    patch_activation_wait,
    patch_server_error_retries,
    wait_while_still_online,
)


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://superlink.test/api/v0/fleet/push-object")
    return httpx.HTTPStatusError(f"HTTP {code}", request=request, response=httpx.Response(code, request=request))


class Flaky:
    """A Fleet call that fails with ``code`` for its first ``failures`` calls, then answers."""

    def __init__(self, failures: int, code: int = 500) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    def __call__(self, request: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise _status_error(self.code)
        return f"ok:{request}"


def _invoker(retries: int, sleeps: list[float]):
    return retry_server_errors(make_simple_http_retry_invoker(), retries, backoff_s=0.5, sleep=sleeps.append)


def test_a_call_answered_500_is_repeated_with_doubling_backoff() -> None:
    sleeps: list[float] = []
    call = Flaky(failures=3)
    assert _invoker(5, sleeps).invoke(call, "reply-1") == "ok:reply-1"
    assert call.calls == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_the_last_500_is_raised_after_the_allowed_retries() -> None:
    sleeps: list[float] = []
    call = Flaky(failures=10)
    with pytest.raises(httpx.HTTPStatusError, match="HTTP 500"):
        _invoker(2, sleeps).invoke(call, "reply-1")
    assert call.calls == 3
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("code", [400, 404, 409])
def test_other_refusals_are_not_repeated(code: int) -> None:
    sleeps: list[float] = []
    call = Flaky(failures=1, code=code)
    with pytest.raises(httpx.HTTPStatusError, match=f"HTTP {code}"):
        _invoker(5, sleeps).invoke(call, "reply-1")
    assert call.calls == 1
    assert sleeps == []


def test_is_server_error_only_for_http_500() -> None:
    assert is_server_error(_status_error(500))
    assert not is_server_error(_status_error(503))
    assert not is_server_error(RuntimeError("HTTP 500"))


def test_heartbeat_500_is_a_failed_beat_not_a_dead_thread() -> None:
    answers = iter([_status_error(500), True])

    def beat() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    tolerant = beat_through_server_errors(beat)
    assert tolerant() is False  # HeartbeatSender retries a False with its own backoff
    assert tolerant() is True


def test_heartbeat_other_errors_still_raise() -> None:
    def beat() -> bool:
        raise _status_error(401)

    with pytest.raises(httpx.HTTPStatusError, match="HTTP 401"):
        beat_through_server_errors(beat)()


def test_patch_wraps_the_invoker_and_heartbeat_the_supernode_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.fleet_http_connection as fleet

    # register the originals so the patch is undone after the test
    monkeypatch.setattr(fleet, "make_simple_http_retry_invoker", fleet.make_simple_http_retry_invoker)
    monkeypatch.setattr(fleet, "HeartbeatSender", fleet.HeartbeatSender)
    assert patch_server_error_retries(retries=1)

    call = Flaky(failures=1)
    assert fleet.make_simple_http_retry_invoker().invoke(call, "x") == "ok:x"
    assert call.calls == 2
    with pytest.raises(httpx.HTTPStatusError):
        fleet.make_simple_http_retry_invoker().invoke(Flaky(failures=2), "x")

    def beat() -> bool:
        raise _status_error(500)

    sender = fleet.HeartbeatSender(beat)
    assert sender.heartbeat_fn() is False
    with pytest.raises(SystemExit, match="CROSSFED_SUPERNODE_500_RETRIES"):
        patch_server_error_retries(retries=-1)


def test_the_serverapp_grid_gets_the_same_retries_and_quicker_pulls(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.superlink.grid.http_grid as http_grid
    from flwr.superlink.grid.http_grid import HttpGrid

    from common.flower_http import PULL_BACKOFF_CAP_S
    from server.grid_tuning import PULL_INITIAL_BACKOFF_S, tune_grid

    monkeypatch.setattr(http_grid, "pull_objects", http_grid.pull_objects)  # undone after the test
    grid = HttpGrid.__new__(HttpGrid)  # the invoker is all the tuning touches; no connection needed
    grid._retry_invoker = make_simple_http_retry_invoker()
    assert tune_grid(grid)
    call = Flaky(failures=1)
    assert grid._retry_invoker.invoke(call, "push") == "ok:push"
    assert call.calls == 2
    assert http_grid.pull_objects.keywords == {
        "initial_backoff": PULL_INITIAL_BACKOFF_S,
        "backoff_cap": PULL_BACKOFF_CAP_S,
        "max_tries_per_object": None,
    }
    assert not tune_grid(object())  # the simulation grid: nothing to tune


def test_supernode_sleeps_idle_polls_at_poll_s_and_local_waits_briefly() -> None:
    from deploy.supernode_entry import LOCAL_WAIT_S, capped_sleep

    assert capped_sleep(3.0, poll_s=0.25) == 0.25  # idle: the next call goes to the SuperLink
    assert capped_sleep(3.0, poll_s=3.0) == 3.0
    assert capped_sleep(0.5, poll_s=0.25) == LOCAL_WAIT_S == 0.02  # reply wait: a look at its own memory
    assert capped_sleep(0.01, poll_s=0.25) == 0.01


def test_patches_stand_down_on_another_flwr(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import flwr

    from common.flower_http import PINNED_FLWR, flwr_is_pinned

    assert flwr_is_pinned("anything") is (flwr.__version__ == PINNED_FLWR)
    monkeypatch.setattr(flwr, "__version__", "9.9.9")
    with caplog.at_level("WARNING", logger="crossfed.flower_http"):
        assert not flwr_is_pinned("the ServerApp grid")
    assert "flwr 9.9.9 is not 1.42.0: the ServerApp grid left at Flower's defaults" in caplog.text


def _refusal(text: str, code: int = 412) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://superlink.test/v1/fleet/activate-node")
    return httpx.HTTPStatusError(f"HTTP {code}", request=request,
                                 response=httpx.Response(code, text=text, request=request))  # fmt: skip


# What a flwr 1.42 SuperLink sends for ActivateNode refusals: the node's previous session is still
# online (FLEET_NODE_ACTIVATION_FAILED), and a bad heartbeat interval (another code: not waited out)
STILL_ONLINE_TEXT = '{"code": 2004, "detail": "Failed to activate SuperNode."}'
BAD_INTERVAL_TEXT = '{"code": 2003, "detail": "Invalid heartbeat interval."}'


def test_a_restarted_node_retries_activation_while_its_old_session_is_online() -> None:
    # Prepare: the SuperLink refuses twice (the killed process's session has not expired), then activates
    answers = [_refusal(STILL_ONLINE_TEXT), _refusal(STILL_ONLINE_TEXT), "activated"]
    now, sleeps = [0.0], []

    def activate() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    # Execute / Assert
    assert wait_while_still_online(activate, 30.0, poll_s=2.0, clock=lambda: now[0], sleep=sleep) == "activated"
    assert sleeps == [2.0, 2.0]


def test_activation_refusals_end_at_the_wait_or_at_once_for_other_reasons() -> None:
    now = [0.0]

    def still_online() -> str:
        raise _refusal(STILL_ONLINE_TEXT)

    def bad_interval() -> str:
        raise _refusal(BAD_INTERVAL_TEXT, 400)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(httpx.HTTPStatusError, match="HTTP 412"):
        wait_while_still_online(still_online, 10.0, poll_s=2.0, clock=lambda: now[0], sleep=sleep)
    assert 10.0 <= now[0] <= 12.0  # gave up after the wait
    now[0] = 0.0
    with pytest.raises(httpx.HTTPStatusError):
        wait_while_still_online(bad_interval, 10.0, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 0.0  # any other refusal ends the node at once, as before
    assert activation_wait_s(10.0) == 22.0  # 2 heartbeats of 10 s + 2 s


def test_patch_makes_the_supernode_client_wait_for_reactivation(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode.fleet_http_client import FleetHttpClient

    answers = [_refusal(STILL_ONLINE_TEXT), "activated"]

    def activate(client: object, request: str) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return f"{answer}:{request}"

    monkeypatch.setattr(FleetHttpClient, "ActivateNode", activate)
    monkeypatch.setattr("deploy.supernode_entry._time.sleep", lambda s: None)
    assert patch_activation_wait(5.0)
    assert FleetHttpClient.ActivateNode(object(), "req") == "activated:req"


def test_supernode_asks_again_at_once_after_a_pull_the_superlink_held() -> None:
    from deploy.supernode_entry import LOCAL_WAIT_S, IdleSleep

    now, slept = [0.0], []
    idle = IdleSleep(0.25, held_s=0.5, clock=lambda: now[0], sleep=slept.append)
    now[0] += 0.03  # an empty pull answered at once (a SuperLink that holds nothing) ...
    idle(3.0)  # ... then Flower's idle sleep: poll_s, as before
    now[0] += 1.0  # an empty pull the SuperLink held for 1 s ...
    idle(3.0)  # ... nothing more to wait for: ask again at once
    idle(0.5)  # a wait for the ClientApp's reply in the node's own memory stays short
    now[0] += 0.02
    idle(3.0)
    assert slept == [0.25, LOCAL_WAIT_S, LOCAL_WAIT_S, 0.25]


def test_an_empty_task_acquisition_is_held_until_the_node_creates_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.corestate.in_memory_corestate import InMemoryCoreState
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate import NodeStateFactory
    from flwr.supernode.servicer.runtime import runtime_handlers

    from deploy.supernode_entry import patch_held_task_acquisition

    monkeypatch.setattr(InMemoryCoreState, "create_task", InMemoryCoreState.create_task)  # restored after the test
    monkeypatch.setattr(runtime_handlers, "acquire_task", runtime_handlers.acquire_task)
    bell = patch_held_task_acquisition(hold_s=30.0)
    assert bell is not None
    state = NodeStateFactory(ObjectStoreFactory()).state()
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    answers: list[object] = []
    waiting = threading.Thread(target=lambda: answers.append(runtime_handlers.acquire_task(request, state)))
    waiting.start()
    time.sleep(0.2)  # nothing to acquire yet: unheld, the call would have answered empty by now
    task_id = state.create_task(task_type=TaskType.CLIENT_APP, run_id=1, fab_hash="f")
    waiting.join(timeout=10)
    assert len(answers) == 1 and answers[0].task.task_id == task_id  # type: ignore[attr-defined]
