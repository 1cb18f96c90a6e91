"""``server.messaging.exchange``: the straggler cut-off and the one-time re-send.

The Grid here is an in-test double that answers on a schedule (the real Grids are exercised
by the simulation and deployment tests); what is tested is the waiting policy itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.config import ConfigError, FedSpec
from server.messaging import Stragglers, broadcast, exchange, stragglers_for
from server.quorum import base_quorum


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take their run and source from the running task's identity, which Flower sets."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class ScheduledGrid:
    """Answers message i to node n ``delays[n]`` s after its push; ``lose`` = first copies never answered."""

    def __init__(self, delays: dict[int, float], lose: Iterable[int] = ()) -> None:
        self.delays, self.lose = delays, set(lose)
        self.pushes: list[list[int]] = []  # destination nodes of each push_messages call
        self._due: dict[str, tuple[float, Message]] = {}
        self._seen: set[int] = set()

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages, ids = list(messages), []
        self.pushes.append([m.metadata.dst_node_id for m in messages])
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            node = m.metadata.dst_node_id
            first = node not in self._seen
            self._seen.add(node)
            if not (first and node in self.lose):
                reply = Message(RecordDict({"info": ConfigRecord({"node": node})}), reply_to=m)
                self._due[m.metadata.message_id] = (time.monotonic() + self.delays[node], reply)
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        now, out = time.monotonic(), []
        for mid in message_ids:
            due = self._due.get(mid)
            if due and due[0] <= now:
                out.append(self._due.pop(mid)[1])
        return out


def _messages(nodes: Iterable[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="evaluate", group_id="1") for n in nodes]


def test_patience_is_factor_times_half_time_but_never_below_the_minimum() -> None:
    assert Stragglers(factor=3.0, min_s=60.0).patience_s(10.0) == 60.0
    assert Stragglers(factor=3.0, min_s=60.0).patience_s(30.0) == 90.0
    assert Stragglers(factor=0.5, min_s=0.0).patience_s(4.0) == 2.0


def test_policy_comes_from_the_fed_config_and_resend_can_be_refused() -> None:
    fed = FedSpec(straggler_factor=2.0, straggler_min_s=5.0, resend_stragglers=True)
    assert stragglers_for(fed) == Stragglers(2.0, 5.0, True)
    assert stragglers_for(fed, resend=False) == Stragglers(2.0, 5.0, False)
    assert stragglers_for(FedSpec(resend_stragglers=False)).resend is False
    with pytest.raises(ConfigError, match="fed.straggler-factor"):
        FedSpec(straggler_factor=-1.0)


def test_a_lost_message_is_sent_again_once_and_its_copy_answers() -> None:
    # Prepare: node 3's first message is lost (no reply, no error), as a restarted SuperNode loses it
    grid = ScheduledGrid({1: 0.01, 2: 0.02, 3: 0.01}, lose=[3])
    # Execute
    t0 = time.monotonic()
    replies = exchange(grid, _messages([1, 2, 3]), timeout_s=30.0, stragglers=Stragglers(2.0, 0.1, resend=True))
    # Assert: everyone answered, node 3 through the copy, long before the timeout
    assert sorted(replies) == [1, 2, 3]
    assert grid.pushes == [[1, 2, 3], [3]]
    assert replies[3].metadata.reply_to_message_id != ""
    assert time.monotonic() - t0 < 5.0


def test_without_resend_a_silent_node_is_left_out_after_the_patience() -> None:
    grid = ScheduledGrid({1: 0.01, 2: 0.01, 3: 0.01}, lose=[3])
    t0 = time.monotonic()
    replies = exchange(grid, _messages([1, 2, 3]), timeout_s=30.0, stragglers=Stragglers(2.0, 0.2, resend=False))
    elapsed = time.monotonic() - t0
    assert sorted(replies) == [1, 2]
    assert grid.pushes == [[1, 2, 3]]
    assert 0.2 <= elapsed < 5.0


def test_a_slow_node_within_the_patience_is_waited_for_not_resent() -> None:
    # half answer at ~0.05 s; patience max(0.5, 20 * 0.05) ~ 1 s; node 3 answers at 0.3 s
    grid = ScheduledGrid({1: 0.05, 2: 0.05, 3: 0.3})
    replies = exchange(grid, _messages([1, 2, 3]), timeout_s=30.0, stragglers=Stragglers(20.0, 0.5, resend=True))
    assert sorted(replies) == [1, 2, 3]
    assert grid.pushes == [[1, 2, 3]]


def test_factor_zero_waits_for_the_timeout() -> None:
    grid = ScheduledGrid({1: 0.01, 2: 0.01}, lose=[2])
    t0 = time.monotonic()
    replies = exchange(grid, _messages([1, 2]), timeout_s=0.4, stragglers=Stragglers(0.0, 0.0, resend=True))
    assert sorted(replies) == [1]
    assert grid.pushes == [[1, 2]]
    assert time.monotonic() - t0 >= 0.4


def test_broadcast_names_the_node_left_out_and_the_wait() -> None:
    grid = ScheduledGrid({1: 0.01, 2: 0.01}, lose=[2])
    replies = broadcast(grid, [1, 2], RecordDict(), "evaluate", 1, 30.0, Stragglers(1.0, 0.1, resend=False))
    assert sorted(replies.ok) == [1]
    assert len(replies.failures) == 1 and replies.failures[0].startswith("node 2: no reply after ")


@pytest.mark.parametrize(
    ("min_nodes", "min_round", "secure", "started", "expected"),
    [
        (3, 2, None, False, (3, "fed.min-nodes")),  # the README's start: all three platforms
        (3, 2, None, True, (2, "fed.min-round-nodes")),  # later rounds survive one dead platform
        (3, 2, 2, True, (2, "fed.min-round-nodes")),  # ... under secure aggregation too (t = 2 of 3)
        (3, 1, 2, True, (2, "secure.min-cohort")),  # never below what secure aggregation can sum
        (2, 5, None, True, (2, "fed.min-round-nodes")),  # capped at min-nodes
    ],
)
def test_quorum_to_start_and_to_go_on(min_nodes, min_round, secure, started, expected) -> None:
    fed = FedSpec(min_nodes=min_nodes, min_round_nodes=min_round)
    assert base_quorum(fed, secure, started) == expected


def test_learn_names_keeps_a_known_name_when_a_reply_carries_none() -> None:
    from server.messaging import learn_names, node_label

    # Prepare: node 7 named at registration (fed.node-names); node 8 unknown
    names = {7: "web_shop"}
    asked = _messages([7, 8, 9])
    replies = {
        7: Message(RecordDict({"info": ConfigRecord({"round": 3})}), reply_to=asked[0]),  # a stage reply: no name
        8: Message(RecordDict({"info": ConfigRecord({"platform": "app"})}), reply_to=asked[1]),
    }
    # Execute
    learn_names(names, replies)
    # Assert
    assert names == {7: "web_shop", 8: "app"}
    assert [node_label(n, names) for n in (7, 8, 9)] == ["web_shop (node 7)", "app (node 8)", "node 9"]
