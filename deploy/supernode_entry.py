"""``flower-supernode`` with shorter polling and HTTP 500 retries (``python -m deploy.supernode_entry ARGS``).

Flower 1.42's SuperNode sleeps a hard-coded 3 s whenever its Fleet ``PullMessages`` finds
nothing, 0.5 s between (local) checks for the ClientApp's reply (here 0.02 s), and 1 s +
2 s when a message's objects are not uploaded yet (they usually are not when the message
first shows up); its Fleet heartbeat interval is a hard-coded 30 s (a killed node is
declared unavailable after 2 x 30 s). For a federation of a handful of platforms those
are the dominant costs of a short round, so this entry point shortens them, makes the
node survive HTTP 500s from a busy SuperLink, lets a restarted node wait until the SuperLink
lets go of its previous process (instead of exiting), then runs the unmodified
``flower-supernode`` command with the same arguments:

    CROSSFED_SUPERNODE_POLL_S       idle pull interval (default 0.25 s; Flower: 3 s)
    CROSSFED_SUPERNODE_HEARTBEAT_S  heartbeat interval (default 10 s, the SuperLink's
                                    minimum; Flower: 30 s)
    CROSSFED_SUPERNODE_500_RETRIES  times one SuperLink call is retried after an HTTP 500
                                    (default 5, backoff 0.5 s doubling; Flower: 0, the
                                    message is dropped)
    CROSSFED_SUPERNODE_VERBOSE      1 keeps Flower's per-message INFO lines (default: dropped;
                                    they were ~80 % of a node's log: "[RUN r, ROUND n]",
                                    "Received successfully", "Sending: ... message (ID: ...)"),
                                    Flower's DEBUG lines and colours on a terminal

Its Runtime API also holds an empty ``AcquireTask`` (the warm ClientApp worker's, :mod:`deploy.worker`)
up to 0.5 s until the node creates a task (:func:`patch_held_task_acquisition`): the worker asked 20
times a second, and the three SuperNodes of a one-machine federation answered ~60 empty calls a
second between them, on the cores the round needs; a message now reaches the worker as soon as
its task exists.

A node's log (this process's and its warm worker's, :func:`node_console`) is plain text with
time stamps: no colour codes, no Flower DEBUG, each line once.

Why the HTTP 500 retries: see :mod:`common.flower_http`. Every Fleet call the SuperNode
makes is safe to repeat: objects are content-addressed, and the SuperLink stores a
repeated reply push once (its ``store_message_res`` checks for idempotent retries). Its
heartbeat gets the same tolerance (Flower's re-raises a 500, which silently ends the
heartbeat thread).

The patch only touches module attributes of ``flwr==1.42.0`` (the version
``pyproject.toml`` pins); on any other version it does nothing and says so.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time as _time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

from common.flower_http import flwr_is_pinned, is_server_error, quick_pull_objects, retry_server_errors
from common.rpc_trace import trace_rpcs
from deploy.long_poll import Bell, held, held_after_s
from deploy.superlink_entry import PULL_HOLD_S

DEFAULT_POLL_S = 0.25
DEFAULT_HEARTBEAT_S = 10.0
DEFAULT_SERVER_ERROR_RETRIES = 5
LOCAL_WAIT_S = 0.02  # the SuperNode's wait for a reply already in its own memory
HELD_PULL_S = held_after_s(PULL_HOLD_S)  # an empty pull that took this long was held by crossfed's SuperLink
ACQUIRE_HOLD_S = 0.5  # an empty AcquireTask waits this long for a task (the worker's HTTP timeout is 30 s)
HELD_ACQUIRE_S = held_after_s(ACQUIRE_HOLD_S)  # an empty AcquireTask that took this long was held
MAX_HELD_ACQUIRES = 4  # each holds one of the Runtime API's worker threads

log = logging.getLogger("crossfed.supernode")
VERBOSE_ENV = "CROSSFED_SUPERNODE_VERBOSE"
T = TypeVar("T")


def activation_wait_s(heartbeat_s: float) -> float:
    """Longest a previous session of this node can stay online: 2 heartbeat intervals (its previous
    process ran with the same ``CROSSFED_SUPERNODE_HEARTBEAT_S``), plus 2 s for a loaded SuperLink.
    Kept that short because an unregistered key gets the very same refusal and should hear so soon."""
    return 2 * heartbeat_s + 2.0


def capped_sleep(requested_s: float, poll_s: float) -> float:
    """Flower's idle sleep (3 s, a SuperLink round trip follows) becomes ``poll_s``; its
    sub-second local waits (0.5 s) become :data:`LOCAL_WAIT_S`."""
    return min(requested_s, poll_s) if requested_s >= 1.0 else min(requested_s, LOCAL_WAIT_S)


class IdleSleep:
    """The SuperNode loop's ``time.sleep``: :func:`capped_sleep`, and no idle wait after a held pull.

    Why: crossfed's SuperLink holds an empty ``PullMessages`` until a message can go out (up to 1 s,
    ``deploy.superlink_entry``), so after such a pull the node should ask again at once; a message
    arriving while it slept ``poll_s`` waited for nothing. The loop's idle sleep follows its pull, so
    the time since the loop last woke tells a held pull (>= ``held_s``) from one a SuperLink without
    holds answered at once (then ``poll_s`` as before: no faster polling of a plain SuperLink).
    """

    def __init__(self, poll_s: float, held_s: float = HELD_PULL_S, clock: Callable[[], float] = _time.monotonic,
                 sleep: Callable[[float], None] = _time.sleep) -> None:  # fmt: skip
        self.poll_s, self.held_s, self.clock, self.sleep = poll_s, held_s, clock, sleep
        self.woke = clock()

    def seconds(self, requested_s: float) -> float:
        """How long to sleep for Flower's ``requested_s``, given the time since the loop last woke."""
        if requested_s >= 1.0 and self.clock() - self.woke >= self.held_s:
            return LOCAL_WAIT_S
        return capped_sleep(requested_s, self.poll_s)

    def __call__(self, requested_s: float) -> None:
        self.sleep(self.seconds(requested_s))
        self.woke = self.clock()


def patch_polling(poll_s: float, heartbeat_s: float) -> bool:
    """Shorten the SuperNode's sleeps and heartbeat; False (untouched) on another flwr."""
    from flwr.common.constant import HEARTBEAT_MAX_INTERVAL, HEARTBEAT_MIN_INTERVAL

    if not flwr_is_pinned("SuperNode polling"):
        return False
    if not 0.01 <= poll_s <= 3.0:
        raise SystemExit(f"CROSSFED_SUPERNODE_POLL_S must be in [0.01, 3], got {poll_s}")
    if not HEARTBEAT_MIN_INTERVAL <= heartbeat_s <= HEARTBEAT_MAX_INTERVAL:
        raise SystemExit(
            f"CROSSFED_SUPERNODE_HEARTBEAT_S must be in [{HEARTBEAT_MIN_INTERVAL}, {HEARTBEAT_MAX_INTERVAL}], "
            f"got {heartbeat_s}"
        )
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as fleet
    import flwr.supernode.start_client_internal as loop

    # `loop` calls time.sleep(3) when idle (then asks the SuperLink again) and time.sleep(0.5)
    # while waiting for the ClientApp's reply in its own memory; give it a `time` whose sleep
    # is poll_s for the first (none after a held pull) and LOCAL_WAIT_S for the second (a local
    # check costs nothing).
    loop.time = SimpleNamespace(**{k: getattr(_time, k) for k in dir(_time) if not k.startswith("__")})  # type: ignore[attr-defined]
    loop.time.sleep = IdleSleep(poll_s)
    # The interval the node announces (the SuperLink expects a beat within 2x it) and the
    # one its HeartbeatSender actually keeps must be changed together.
    fleet.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_s  # type: ignore[attr-defined]
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_s  # type: ignore[attr-defined]
    # A message is visible to the SuperNode before the ServerApp has finished uploading its
    # objects; Flower retries those pulls after 1 s, 2 s, ... (about 3 s per message).
    loop.pull_objects = quick_pull_objects(min(poll_s, 0.1))
    return True


def patch_held_task_acquisition(hold_s: float = ACQUIRE_HOLD_S, max_held: int = MAX_HELD_ACQUIRES) -> Bell | None:
    """Hold an empty ``AcquireTask`` until this node creates a task (the returned bell rings then), up to
    ``hold_s``; None (untouched) on another flwr."""
    if not flwr_is_pinned("the SuperNode's task acquisition"):
        return None
    from flwr.supercore.corestate.in_memory_corestate import InMemoryCoreState
    from flwr.supernode.servicer.runtime import runtime_handlers

    bell = Bell()
    create = InMemoryCoreState.create_task  # the SuperNode's NodeState is in memory

    @functools.wraps(create)
    def create_and_ring(self: Any, *args: Any, **kwargs: Any) -> int | None:
        task_id: int | None = create(self, *args, **kwargs)
        if task_id is not None:
            bell.ring()
        return task_id

    InMemoryCoreState.create_task = create_and_ring  # type: ignore[method-assign]
    slots = threading.Semaphore(max_held)
    runtime_handlers.acquire_task = held(runtime_handlers.acquire_task, bell, hold_s, slots, found=_has_task)
    return bell


def _has_task(response: Any) -> bool:
    return bool(response.HasField("task"))


def patch_server_error_retries(retries: int) -> bool:
    """Let every Fleet call of the SuperNode survive ``retries`` HTTP 500s; False on another flwr."""
    if not flwr_is_pinned("SuperNode HTTP 500 handling"):
        return False
    if not 0 <= retries <= 20:
        raise SystemExit(f"CROSSFED_SUPERNODE_500_RETRIES must be in [0, 20], got {retries}")
    import flwr.supernode.fleet_http_connection as fleet

    make = fleet.make_simple_http_retry_invoker
    fleet.make_simple_http_retry_invoker = lambda: retry_server_errors(make(), retries)  # type: ignore[attr-defined]
    # Flower's node heartbeat re-raises a 500, which ends its thread for good: the SuperLink
    # then declares the live node offline. A 500 now counts as a failed beat, retried with
    # the sender's own backoff.
    sender = fleet.HeartbeatSender
    fleet.HeartbeatSender = lambda heartbeat_fn: sender(beat_through_server_errors(heartbeat_fn))  # type: ignore[attr-defined]
    return True


def patch_activation_wait(wait_s: float) -> bool:
    """Let a restarted SuperNode wait for the SuperLink to let go of its previous process; False on another flwr.

    Why: the SuperLink keeps a node online until 2 heartbeats are overdue, and refuses to activate it
    again meanwhile (code 2004, "Failed to activate SuperNode"); Flower's SuperNode then exits (code
    305) at once, so a node restarted 10 s after it was killed never rejoined. That refusal is now
    retried for ``wait_s``.
    """
    if not flwr_is_pinned("SuperNode re-activation"):
        return False
    from flwr.supernode.fleet_http_client import FleetHttpClient

    activate = FleetHttpClient.ActivateNode
    FleetHttpClient.ActivateNode = lambda client, request: wait_while_still_online(  # type: ignore[method-assign]
        lambda: activate(client, request), wait_s
    )
    return True


def activation_refused(body: str) -> bool:
    """Whether a SuperLink answer is flwr 1.42's ActivateNode refusal (code 2004, HTTP 412).

    The SuperLink sends only the public message ("Failed to activate SuperNode."); the reason it logs
    itself is, for a node whose key it admits, that its previous session is still online.
    """
    from flwr.supercore.error.base import ApiErrorCode, FlowerError

    error = FlowerError.from_json(body)
    return error is not None and error.code == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED


def wait_while_still_online(call: Callable[[], T], wait_s: float, poll_s: float = 2.0,
                            clock: Callable[[], float] | None = None,
                            sleep: Callable[[float], None] | None = None) -> T:  # fmt: skip
    """``call()`` (an ActivateNode), repeated every ``poll_s`` for up to ``wait_s`` while the SuperLink
    refuses to activate this node (:func:`activation_refused`); any other error is raised at once."""
    import httpx

    clock, sleep = clock or _time.monotonic, sleep or _time.sleep
    deadline = clock() + wait_s
    said = False
    while True:
        try:
            return call()
        except httpx.HTTPStatusError as exc:
            if not activation_refused(exc.response.text) or clock() >= deadline:
                raise
            if not said:
                log.warning("the SuperLink refused to activate this node: its previous process may have stopped less "
                            "than 2 heartbeats ago (else its key is not registered): retrying for up to %.0f s",
                            wait_s)  # fmt: skip
                said = True
            sleep(poll_s)


def beat_through_server_errors(heartbeat_fn: Callable[[], bool]) -> Callable[[], bool]:
    """``heartbeat_fn`` that answers False (retry later) instead of raising on an HTTP 500."""

    def beat() -> bool:
        try:
            return heartbeat_fn()
        except Exception as exc:
            if not is_server_error(exc):
                raise
            log.warning("SuperLink answered a heartbeat with HTTP 500; retrying")
            return False

    return beat


CHATTER = re.compile(r"^\s*$|^\[RUN \d+, ROUND \d+\]$|^(Sent|Received) successfully$|^(Sending|Receiving): \S+ message")


def quiet_flower_chatter(record: logging.LogRecord) -> bool:
    """Logging filter: drop Flower's per-message INFO lines; keep warnings, errors and the rest."""
    return record.levelno > logging.INFO or not CHATTER.match(record.getMessage())


def node_console() -> bool:
    """A node's log as an operator reads it in a file: plain, time-stamped, every line once.

    Flower's logger has its own coloured handler (level DEBUG) and also propagates to the root
    handler, so with ``logging.basicConfig`` every Flower warning came out twice, once with raw
    ANSI codes, and every DEBUG line once; library FutureWarnings came out as two lines each.
    The console rules of ``crossfed`` apply (:func:`simulations.commands.console.setup_console`):
    colours and DEBUG only with ``CROSSFED_SUPERNODE_VERBOSE=1`` on a terminal. Returns verbose.
    """
    import flwr.supercore.logger  # noqa: F401 - Flower's handler exists once it is imported
    from flwr.common.logger import update_console_handler

    from simulations.commands.console import setup_console

    verbose = os.environ.get(VERBOSE_ENV, "0") == "1"
    setup_console(verbose)
    update_console_handler(timestamps=True)
    return verbose


def main() -> None:
    poll_s = float(os.environ.get("CROSSFED_SUPERNODE_POLL_S", DEFAULT_POLL_S))
    heartbeat_s = float(os.environ.get("CROSSFED_SUPERNODE_HEARTBEAT_S", DEFAULT_HEARTBEAT_S))
    patch_polling(poll_s, heartbeat_s)
    patch_server_error_retries(int(os.environ.get("CROSSFED_SUPERNODE_500_RETRIES", DEFAULT_SERVER_ERROR_RETRIES)))
    patch_activation_wait(activation_wait_s(heartbeat_s))
    patch_held_task_acquisition()
    trace_rpcs("supernode")  # only with CROSSFED_RPC_TRACE=DIR (python -m deploy.bench --trace)
    if not node_console():
        logging.getLogger("flwr").addFilter(quiet_flower_chatter)
    from flwr.supernode.cli import flower_supernode

    flower_supernode()


if __name__ == "__main__":
    main()
