"""A warm ClientApp worker for ``flower-supernode --isolation process``.

Why: with Flower 1.42's default ``--isolation subprocess`` the SuperNode's SuperExec
starts a fresh ``flwr-clientapp`` process for EVERY message (train, evaluate, ...):
python + torch + transformers are imported again, the base model is rebuilt, the
platform's data is loaded, split and tokenised again. ``flwr-clientapp`` in 1.42 handles
exactly one task token and exits, so it cannot be kept alive.

``--isolation process`` lets something outside the SuperNode execute its tasks. This
module is that something: one long-lived process per SuperNode that polls the
SuperNode's Runtime API (``AcquireTask``; crossfed's SuperNode holds an empty answer until a
task exists, :mod:`deploy.supernode_entry`) and runs each ClientApp task in-process, the
way ``flwr.supernode.runtime.run_clientapp.run_clientapp`` does for one token. Module
level caches (``common.modeling.load_scorer``, ``clients.platform.prepare``) therefore
survive across messages and rounds.

Safety: a task whose FAB differs from the one already imported (a new app version
submitted to a running federation) would otherwise run stale code, so the worker
re-executes itself (``os.execv``) with that task's token before touching it: a fresh
interpreter imports the new FAB. The worker exits when the SuperNode (``--parent-pid``)
exits. Runtime dependency installation is not supported here: the worker runs in the
SuperNode's own environment, which is the point.

Pinned to the Runtime API of ``flwr==1.42.0`` (``pyproject.toml`` pins it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("crossfed.worker")

DEFAULT_POLL_S = 0.05
# After this long without an object of the current message, the worker checks whether the
# SuperNode has created a newer task; only then is the current message abandoned. Why: flwr
# 1.42's SuperNode creates the task before it pulls the message's objects, and when the run
# stops meanwhile (a SuperLink restarted mid-round) it only logs "Ignoring message": the task
# stays open and its objects never come. A time limit alone is wrong too: under load (30
# nodes on 2 cores) a live message's objects can take over a minute, and the SuperNode puts
# them all at once. It handles one message at a time, so a newer task means that the current
# message's objects will never come.
DEFAULT_STALL_S = 10.0
STALL_ENV = "CROSSFED_WORKER_STALL_S"


@dataclass
class WorkerState:
    """What survives between tasks: the installed FAB and its loaded ClientApp."""

    fab_hash: str | None = None
    client_app: object | None = None
    tasks_done: int = 0
    task_seconds: list[float] = field(default_factory=list)


def _client(address: str, insecure: bool, root_certificates: bytes | None, token: str | None):  # noqa: ANN202
    """A Runtime API client with Flower's retries (connection errors, 502-504), minus their answer to an
    HTTP 401 (a revoked task token): Flower sends its own process SIGINT, which a warm worker took for its
    SuperNode's exit and stopped for good, its platform silent; here the error reaches the caller (the
    heartbeat sets the task's revoked flag, a task call fails that task only)."""
    import httpx
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    component = "flwr-clientapp" if token else "SuperExec"
    interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    invoker = make_simple_http_retry_invoker()
    flower_giveup = invoker.should_giveup
    assert flower_giveup is not None

    def give_up(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True  # to the caller, no SIGINT
        return flower_giveup(exc)

    invoker.should_giveup = give_up
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=insecure, root_certificates=root_certificates,
        interceptors=interceptors, retry_invoker=invoker,
    )  # fmt: skip


def run_task(address: str, token: str, insecure: bool, root_certificates: bytes | None, state: WorkerState,
             stall_s: float = DEFAULT_STALL_S, superseded: Callable[[], bool] = lambda: False,
             poll_s: float = DEFAULT_POLL_S) -> bool:  # fmt: skip
    """Run one ClientApp task in this process; True if the ClientApp returned a reply.

    Mirrors ``run_clientapp`` (pull input, install FAB, load app, call it, push reply and
    task output) minus the process exit, and with the FAB/app cached by hash.
    """
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    started = time.perf_counter()
    t_pulled = t_loaded = t_ran = None  # a phase that never ended is charged up to the failure
    client = _client(address, insecure, root_certificates, token)
    revoked = threading.Event()  # the SuperNode gave up on this task (its message failed to arrive)
    heartbeat = HeartbeatSender(task_heartbeat_fn(client, revoked))
    message = reply = context = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(
            client, stall_s=stall_s, superseded=lambda: revoked.is_set() or superseded(), wait_cap_s=2 * poll_s
        )
        t_pulled = time.perf_counter()
        if state.fab_hash != fab.hash_str:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            state.client_app = load(run.fab_id, run.fab_version, fab.hash_str)
            state.fab_hash = fab.hash_str
        t_loaded = time.perf_counter()
        reply = state.client_app(message=message, context=context)  # type: ignore[operator]
        t_ran = time.perf_counter()
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - same contract as flwr-clientapp: any failure -> an error reply
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(exc, LoadClientAppError) else (
            ErrorCode.CLIENT_APP_RAISED_EXCEPTION)  # fmt: skip
        details = f"{type(exc)}:<'{exc}'>"
        if message is None:  # the task's message never arrived: nobody is waiting for a reply
            log.error("task abandoned before its message arrived: %s", exc)
        else:
            log.exception("ClientApp raised an exception")
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        t_failed = time.perf_counter()
        t_pulled = t_pulled or t_failed
        t_loaded = t_loaded or t_failed
        t_ran = t_ran or t_failed
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:  # noqa: BLE001 - the task output below still reports the failure
            log.exception("failed to push the reply message")
            sub_status, details = SubStatus.FAILED, "failed to push the reply message"
        if heartbeat.is_running:  # before the output, which revokes the token: no beat may come after it
            heartbeat.stop()
        try:
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        except Exception:  # noqa: BLE001 - the task is over either way; the worker must live on
            log.exception("failed to report the task's outcome to the SuperNode")
        client.close()
    state.tasks_done += 1
    state.task_seconds.append(time.perf_counter() - started)
    log.info(
        "task %d %s in %.2f s (pull %.2f, load %.2f, ClientApp %.2f, push %.2f)", state.tasks_done, sub_status,
        state.task_seconds[-1], t_pulled - started, t_loaded - t_pulled, t_ran - t_loaded, time.perf_counter() - t_ran,
    )  # fmt: skip
    return sub_status == SubStatus.COMPLETED


def pull_task_input(client, initial_backoff_s: float = 0.02, backoff_cap_s: float = 0.1,  # noqa: ANN001, ANN201
                    stall_s: float = DEFAULT_STALL_S, superseded: Callable[[], bool] = lambda: False,
                    wait_cap_s: float = 2 * DEFAULT_POLL_S):  # fmt: skip
    """``flwr.supernode.runtime.run_clientapp.pull_task_input`` with a short object-pull backoff.

    The SuperNode creates the task (which we acquire at once) before it has pulled the
    message's objects from the SuperLink; Flower's default backoff (1 s, then 2 s, ...)
    then adds ~3 s to every message, which a cold ``flwr-clientapp`` hides behind its own
    start-up time but a warm worker does not. No object for ``stall_s`` and a newer task
    waiting (``superseded``): the message is abandoned (see ``DEFAULT_STALL_S``). Until
    the message has reached the SuperNode, only its root object is polled, every
    ``wait_cap_s`` at most (see :func:`wait_for_delivery`).
    """
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    pull = stall_guard(make_pull_object_fn_protobuf(client.PullObject, node, context.run_id), stall_s, superseded)
    wait_for_delivery(pull, tree.object_id, initial_backoff_s, wait_cap_s)
    message = pull_and_inflate_object_from_tree(
        tree,
        pull,
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, max_tries_per_object=None, initial_backoff=initial_backoff_s, backoff_cap=backoff_cap_s,
    )  # fmt: skip
    message.metadata.__dict__["_message_id"] = tree.object_id  # the deflated message lacks its own id
    return message, context, run, fab


def task_heartbeat_fn(client, revoked: threading.Event) -> Callable[[], bool]:  # noqa: ANN001
    """Flower's task heartbeat without its ``SIGINT``: a revoked task sets ``revoked`` instead.

    Why: when the SuperNode fails to receive a message (say the SuperLink answered a pull
    with HTTP 500 under load) it finishes the task and revokes its token. Flower's own
    heartbeat then raises SIGINT, which is right for a one-message ``flwr-clientapp`` but
    stopped the warm worker for good: its SuperNode stayed online and never answered again
    (3 of 30 nodes in the load benchmark). The worker drops that task and goes on.
    """
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611

    def beat() -> bool:
        try:
            res = client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.TransportError:
            return False  # retried by the sender
        except httpx.HTTPStatusError as err:
            if err.response.status_code in (httpx.codes.SERVICE_UNAVAILABLE, httpx.codes.GATEWAY_TIMEOUT):
                return False
            if err.response.status_code == httpx.codes.UNAUTHORIZED:  # token revoked
                revoked.set()
                return True
            raise
        if not res.success:
            revoked.set()
        return True

    return beat


def wait_for_delivery(pull: Callable[[str], bytes], root_id: str, initial_s: float = 0.02, cap_s: float = 0.1,
                      sleep: Callable[[float], None] = time.sleep) -> int:  # fmt: skip
    """Poll ONE object, the message's root, until the SuperNode has it; returns the polls made.

    Why: the SuperNode stores a message's objects all at once, after it pulled them all from
    the SuperLink. Flower's own loop polls every object of the tree from two threads in the
    meantime: with 30 workers on 2 cores that was ~600 requests/s, which starved the very
    SuperNodes doing the pulling (a round-1 message took 260-280 s to arrive, against ~60 s).
    The root is the right one to watch: it is new in every message (its metadata is),
    whereas content the SuperNode already holds (a repeated config) is available at once.
    """
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    delay, polls = initial_s, 0
    while True:
        polls += 1
        try:
            pull(root_id)
            return polls
        except ObjectUnavailableError:
            sleep(delay)
            delay = min(delay * 1.5, cap_s)


def stall_guard(pull_object_fn: Callable[[str], bytes], stall_s: float, superseded: Callable[[], bool],
                clock: Callable[[], float] = time.monotonic) -> Callable[[str], bytes]:  # fmt: skip
    """``pull_object_fn`` that gives up (``ObjectPullError``) on a message that will never arrive.

    That is: no object arrived for ``stall_s`` AND ``superseded()`` says a newer task is
    waiting (asked at most every ``stall_s``). A slow message with no newer task is awaited
    however long it takes; the round's own timeout on the server bounds that.
    """
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

    lock = threading.Lock()  # Flower pulls a message's objects from several threads
    last_progress = [clock()]
    next_check = [clock() + stall_s]

    def pull(object_id: str) -> bytes:
        try:
            content = pull_object_fn(object_id)
        except ObjectUnavailableError:
            with lock:
                now = clock()
                if now >= next_check[0] and now - last_progress[0] >= stall_s:
                    next_check[0] = now + stall_s
                    if superseded():
                        raise ObjectPullError(object_id, f"no object of this message arrived for "
                                              f"{now - last_progress[0]:.0f} s and a newer task is waiting; the run "
                                              "was probably stopped, or the SuperLink restarted, while it was being "
                                              "delivered") from None  # fmt: skip
            raise
        with lock:
            last_progress[0] = clock()
            next_check[0] = last_progress[0] + stall_s
        return content

    return pull


def serve(address: str, insecure: bool, root_certificates_path: str | None, poll_s: float = DEFAULT_POLL_S,
          first_token: str | None = None, max_tasks: int | None = None,
          stall_s: float = DEFAULT_STALL_S) -> WorkerState:  # fmt: skip
    """Acquire ClientApp tasks from the SuperNode forever (or ``max_tasks`` of them)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType

    from deploy.long_poll import sleep_after_empty
    from deploy.supernode_entry import HELD_ACQUIRE_S  # its SuperNode holds an empty AcquireTask

    root = Path(root_certificates_path).read_bytes() if root_certificates_path else None
    state = WorkerState()
    acquirer = _client(address, insecure, root, token=None)
    waiting: list[tuple[str, str]] = []  # (token, FAB hash) acquired while the current task was stalled

    def acquire() -> tuple[str, str] | None:
        res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        if not (res.HasField("task") and res.token):
            return None
        return res.token, (res.task.fab_hash if res.task.HasField("fab_hash") else "")

    def superseded() -> bool:
        if not waiting and (task := acquire()) is not None:
            waiting.append(task)
        return bool(waiting)

    try:
        if first_token:
            run_task(address, first_token, insecure, root, state, stall_s, superseded, poll_s)
        log.info("warm ClientApp worker polling %s every %.2f s", address, poll_s)
        while max_tasks is None or state.tasks_done < max_tasks:
            asked = time.monotonic()
            task = waiting.pop(0) if waiting else acquire()
            if task is None:
                time.sleep(sleep_after_empty(time.monotonic() - asked, poll_s, HELD_ACQUIRE_S))
                continue
            token, task_fab = task
            if state.fab_hash and task_fab and task_fab != state.fab_hash:
                _reexec_with(token)  # a new app version: never run it on stale imported modules
            run_task(address, token, insecure, root, state, stall_s, superseded, poll_s)
    finally:
        acquirer.close()
    return state


def _reexec_with(token: str) -> None:
    log.warning("a task for a different FAB arrived: restarting the worker to import it fresh")
    argv = list(sys.argv[1:])
    if "--first-token" in argv:
        i = argv.index("--first-token")
        del argv[i : i + 2]
    os.execv(sys.executable, [sys.executable, "-m", "deploy.worker", *argv, "--first-token", token])


def exit_with_parent(parent_pid: int, every_s: float = 0.5) -> None:
    """Leave (hard) as soon as the SuperNode is gone: its tasks can no longer be answered.

    Flower's own monitor raises SIGINT, which a blocking HTTP retry loop can swallow; a
    worker outliving its SuperNode would then attach to the next SuperNode on that port.
    """

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if not _alive(parent_pid):
                log.warning("SuperNode %d exited; worker exiting", parent_pid)
                os._exit(0)

    threading.Thread(target=watch, name="parent-monitor", daemon=True).start()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a killed but not yet reaped zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS): the signal probe above is all we have
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.worker", description=__doc__.split("\n")[0])
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    p.add_argument("--insecure", action="store_true", help="the Runtime API has no TLS (loopback only)")
    p.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    p.add_argument("--poll-s", type=float, default=DEFAULT_POLL_S, help="AcquireTask polling interval")
    p.add_argument("--stall-timeout-s", type=float, default=float(os.environ.get(STALL_ENV, DEFAULT_STALL_S)),
                   help=f"after this long without an object of the current message, abandon it if a newer task "
                   f"is waiting (env {STALL_ENV})")  # fmt: skip
    p.add_argument("--first-token", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from common.rpc_trace import trace_rpcs
    from deploy.supernode_entry import node_console

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    node_console()  # plain lines, each once, no Flower DEBUG (the SuperNode's log rules)
    args = build_parser().parse_args(argv)
    if not args.insecure and not args.root_certificates:
        raise SystemExit("deploy.worker: pass --root-certificates, or --insecure for a loopback Runtime API")
    if args.parent_pid:
        exit_with_parent(args.parent_pid)
    trace_rpcs("worker")  # only with CROSSFED_RPC_TRACE=DIR (python -m deploy.bench --trace)
    try:
        serve(args.runtime_api_address, args.insecure, args.root_certificates, args.poll_s, args.first_token,
              stall_s=args.stall_timeout_s)  # fmt: skip
    except KeyboardInterrupt:  # SIGINT from the parent monitor: the SuperNode is gone
        log.info("SuperNode exited; worker stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
