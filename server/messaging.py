"""Talking to platforms through a Flower Grid: broadcast, collect replies (whom to wait for: server.quorum).

A platform that errors or does not answer within the round timeout is logged and left
out of this round; the round goes on with the others (a federation must survive a
platform that vanishes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import FedSpec
from common.payload import INFO, INFO_PLATFORM, METRICS

log = logging.getLogger("crossfed.server")


@dataclass
class Replies:
    """Good replies by node id, plus one line per platform that failed or stayed silent."""

    ok: dict[int, Message] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    silent: list[int] = field(default_factory=list)  # nodes that sent nothing at all (dead, or their message lost)

    def platform(self, node_id: int) -> str:
        return platform_of(self.ok[node_id], node_id)


def platform_of(reply: Message, node_id: int) -> str:
    """The platform name a reply carries (its INFO record), else the node id."""
    info = reply.content.get(INFO)
    return str(info[INFO_PLATFORM]) if isinstance(info, ConfigRecord) and INFO_PLATFORM in info else str(node_id)


def node_label(node_id: int, names: Mapping[int, str] | None = None) -> str:
    """``web_shop (node 123)`` once a reply told which platform a node is, else ``node 123``."""
    name = (names or {}).get(node_id)
    return f"{name} (node {node_id})" if name and name != str(node_id) else f"node {node_id}"


def learn_names(names: dict[int, str], replies: Mapping[int, Message]) -> None:
    """Remember which platform each replying node is, for later failure lines."""
    for node_id, reply in replies.items():
        name = None if reply.has_error() else platform_of(reply, node_id)
        if name is not None and name != str(node_id):  # a reply without a name keeps the one known
            names[node_id] = name


def shared_metrics(reply: Message) -> dict[str, float]:
    """The metrics a platform chose to send (none when it keeps them private)."""
    record = reply.content.get(METRICS)
    return {k: float(v) for k, v in record.items()} if isinstance(record, MetricRecord) else {}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Stragglers:
    """When to stop waiting for the last platforms of an exchange, and whether to ask them again.

    Why: a platform whose message was lost never answers and never errors. Flower 1.42 loses
    one when a SuperNode restarts after pulling it, or when the SuperLink's SQLite state is
    locked under load; without a cut-off the round waits for the whole round timeout. The
    cut-off is relative, ``factor`` times the time it took half of the platforms to answer
    (never below ``min_s``), so a slow federation is not cut short: with n platforms queued
    on P equal workers the last answers after about twice the median time. ``resend`` sends
    a fresh copy once before giving up: fine for messages a platform may handle twice (plain
    training and evaluation), never for the stages of a secure round, which hold key state.
    """

    factor: float = 0.0  # 0 = no cut-off: wait for the timeout
    min_s: float = 60.0
    resend: bool = False

    def patience_s(self, half_s: float) -> float:
        return max(self.min_s, self.factor * half_s)


def stragglers_for(fed: FedSpec, resend: bool = True) -> Stragglers:
    """The run's straggler policy; ``resend=False`` for messages a platform must not handle twice."""
    return Stragglers(fed.straggler_factor, fed.straggler_min_s, resend and fed.resend_stragglers)


def exchange(grid: Grid, messages: Sequence[Message], timeout_s: float, stragglers: Stragglers | None = None,
             poll_s: float = 0.02, max_poll_s: float = 0.1) -> dict[int, Message]:  # fmt: skip
    """Push ``messages``, then collect the replies that arrive in time, by destination node.

    Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls on the Deployment Engine; a
    secure round is five exchanges, so that alone would add ~15 s to every round. Pulling
    after 20 ms, backing off to 0.1 s, costs a few cheap calls instead; crossfed's SuperLink
    holds an empty pull up to 0.5 s until a reply can go out (``deploy.superlink_entry``), so
    there a reply is seen as soon as it is in (a longer back-off only delayed a stage's last
    reply). Replies are matched to the message they answer, so an error the SuperLink writes
    for an unreachable node (whose source is the SuperLink, not the node) still names the
    right node. A node's first reply counts; one to a copy sent later (see
    :class:`Stragglers`) is as good.
    """
    messages = list(messages)
    stragglers = stragglers or Stragglers()
    start = time.monotonic()
    deadline = start + timeout_s
    waiting: dict[str, int] = {}  # message id -> destination node
    _push(grid, messages, waiting)
    todo, replies = set(waiting.values()), {}
    half = (len(todo) + 1) // 2
    half_s: float | None = None  # when half of the nodes had answered
    cutoff, resent = math.inf, False
    delay = poll_s
    while todo:
        for reply in grid.pull_messages(list(waiting)):
            node = waiting.pop(reply.metadata.reply_to_message_id, None)
            if node in todo:
                todo.discard(node)
                replies[node] = reply
                waiting = {mid: n for mid, n in waiting.items() if n != node}  # its other copy, if any
        now = time.monotonic()
        if not todo or now >= deadline:
            break
        if half_s is None and stragglers.factor > 0 and len(replies) >= half:
            half_s = now - start
            cutoff = start + stragglers.patience_s(half_s)
        if now >= cutoff:  # finite only once half of the nodes answered
            late = sorted(todo)
            if not stragglers.resend or resent:
                log.warning("stopped waiting for node(s) %s after %.0f s", late, now - start)
                break
            log.warning("no reply from node(s) %s after %.0f s: sending their message again", late, now - start)
            _push(grid, [_copy(m) for m in messages if m.metadata.dst_node_id in todo], waiting)
            cutoff, resent = now + stragglers.patience_s(half_s), True
        time.sleep(min(delay, max(0.0, min(deadline, cutoff) - time.monotonic())))
        delay = min(delay * 1.5, max_poll_s)
    return replies


def _push(grid: Grid, messages: Sequence[Message], waiting: dict[str, int]) -> None:
    """Push ``messages``; record each accepted one's id -> destination in ``waiting``."""
    ids = list(grid.push_messages(messages)) or [""] * len(messages)  # [] = nothing pushed (too large)
    for message, mid in zip(messages, ids, strict=True):
        if mid:
            waiting[mid] = message.metadata.dst_node_id


def _copy(message: Message) -> Message:
    """The same request as a new message (a new creation time, so a new message id)."""
    meta = message.metadata
    return Message(message.content, dst_node_id=meta.dst_node_id, message_type=meta.message_type,
                   group_id=meta.group_id)  # fmt: skip


def broadcast(
    grid: Grid,
    nodes: Iterable[int],
    content: RecordDict,
    message_type: str,
    server_round: int,
    timeout_s: float,
    stragglers: Stragglers | None = None,
    names: dict[int, str] | None = None,
) -> Replies:
    """Send the same content to every node and gather what comes back in time.

    ``names`` (node id -> platform) labels failure lines and learns from this exchange's replies.
    """
    nodes = list(nodes)
    messages = [Message(content, dst_node_id=n, message_type=message_type, group_id=str(server_round)) for n in nodes]
    replies = Replies()
    started = time.monotonic()
    names = {} if names is None else names
    received = exchange(grid, messages, timeout_s, stragglers)
    learn_names(names, received)
    for node, reply in received.items():
        if reply.has_error():
            replies.failures.append(f"{node_label(node, names)}: {reply.error.reason}")
        else:
            replies.ok[node] = reply
    for n in nodes:
        if n not in received:
            replies.silent.append(n)
            replies.failures.append(f"{node_label(n, names)}: no reply after {time.monotonic() - started:.0f} s")
    for line in replies.failures:
        log.warning("round %d %s left out: %s", server_round, message_type, line)
    return replies
