"""Talking to platforms through a Flower Grid: wait for nodes, broadcast, collect replies.

A platform that errors or does not answer within the round timeout is logged and left
out of this round; the round goes on with the others (a federation must survive a
platform that vanishes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.payload import INFO
from server.federation import FederationError

log = logging.getLogger("crossfed.server")


def wait_for_nodes(grid: Grid, min_nodes: int, timeout_s: float, poll_s: float = 1.0) -> list[int]:
    """Block until ``min_nodes`` platforms are connected; all connected ones are returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} platform(s) connected after {timeout_s:.0f} s, `fed.min-nodes` = {min_nodes}"
            )
        time.sleep(poll_s)


@dataclass
class Replies:
    """Good replies by node id, plus one line per platform that failed or stayed silent."""

    ok: dict[int, Message] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def platform(self, node_id: int) -> str:
        info = self.ok[node_id].content.get(INFO)
        return str(info["platform"]) if isinstance(info, ConfigRecord) and "platform" in info else str(node_id)


def exchange(grid: Grid, messages: Sequence[Message], timeout_s: float, poll_s: float = 0.02,
             max_poll_s: float = 0.5) -> dict[int, Message]:  # fmt: skip
    """Push ``messages``, then collect the replies that arrive within ``timeout_s``, by destination node.

    Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls on the Deployment Engine; a
    secure round is five exchanges, so that alone would add ~15 s to every round. Pulling
    after 20 ms, backing off to 0.5 s, costs a few cheap calls instead. Replies are matched
    to the message they answer, so an error the SuperLink writes for an unreachable node
    (whose source is the SuperLink, not the node) still names the right node.
    """
    messages = list(messages)
    pushed = [mid for mid in grid.push_messages(messages) if mid]
    dst = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    pending, replies = set(pushed), {}
    deadline = time.monotonic() + timeout_s
    delay = poll_s
    while pending:
        for reply in grid.pull_messages(list(pending)):
            answered = reply.metadata.reply_to_message_id
            if answered in pending:
                pending.discard(answered)
                replies[dst.get(answered, reply.metadata.src_node_id)] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, max_poll_s)
    return replies


def broadcast(
    grid: Grid,
    nodes: Iterable[int],
    content: RecordDict,
    message_type: str,
    server_round: int,
    timeout_s: float,
) -> Replies:
    """Send the same content to every node and gather what comes back in time."""
    nodes = list(nodes)
    messages = [Message(content, dst_node_id=n, message_type=message_type, group_id=str(server_round)) for n in nodes]
    replies = Replies()
    for node, reply in exchange(grid, messages, timeout_s).items():
        if reply.has_error():
            replies.failures.append(f"node {node}: {reply.error.reason}")
        else:
            replies.ok[node] = reply
    for n in nodes:
        if n not in replies.ok and not any(f.startswith(f"node {n}:") for f in replies.failures):
            replies.failures.append(f"node {n}: no reply within {timeout_s:.0f} s")
    for line in replies.failures:
        log.warning("round %d %s left out: %s", server_round, message_type, line)
    return replies
