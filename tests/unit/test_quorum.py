"""``server.quorum``: whom a round waits for, and the run's status from its lost rounds.

The Grid is an in-test double whose node list follows a script on a fake clock (what a
SuperLink's ``get_nodes`` says as SuperNodes die, expire and come back); what is tested is the
real waiting policy of the federation. The real SuperLink is exercised by tests/deploy.
"""

from __future__ import annotations

import logging

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF
from flwr.proto.node_pb2 import NodeInfo
from flwr.supercore.task_identity import TaskIdentity

from common.config import AppConfig
from common.payload import INFO
from common.run_files import COMPLETED, DEGRADED, FAILED, describe_lost, lost_rounds, run_status
from server.federation import FederationError, RoundAborted
from server.quorum import POLL_S, Quorum, largest_cohort

NAMES = {1: "app", 2: "social_shop", 3: "web_shop"}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take their run and source from the running task's identity, which Flower sets."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class ScriptedGrid:
    """``get_nodes`` as a SuperLink answers it: from each script time on, node id -> its online_until."""

    def __init__(self, script: list[tuple[float, dict[int, float]]], heartbeat_s: float = 10.0) -> None:
        self.script, self.heartbeat_s, self.now = script, heartbeat_s, 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def get_nodes(self) -> list[NodeInfo]:
        online = [nodes for at, nodes in self.script if at <= self.now][-1]
        return [NodeInfo(node_id=n, online_until=until, heartbeat_interval=self.heartbeat_s)
                for n, until in online.items()]  # fmt: skip


def _cfg(**overrides: object) -> AppConfig:
    return AppConfig().replace(**{"secagg": True, "fed.min-nodes": 3, "fed.node-wait-s": 120.0, **overrides})


def _setup_reply(min_cohort: int) -> Message:
    asked = Message(RecordDict(), dst_node_id=1, message_type="train", group_id="1")
    return Message(RecordDict({INFO: ConfigRecord({"platform": "x", "min-cohort": min_cohort})}), reply_to=asked)


def _started(names: dict[int, str], min_cohort: dict[int, int]) -> Quorum:
    """A run past its first round, whose platforms declared their minimum cohorts in their replies."""
    quorum = Quorum(dict(names), started=True, known=set(names))
    quorum.learn({n: _setup_reply(c) for n, c in min_cohort.items()})
    return quorum


@pytest.mark.parametrize(
    ("live", "min_cohorts", "need", "expected"),
    [
        ([1, 2, 3], {}, 2, [1, 2, 3]),  # nobody asks more than the run: everyone
        ([1, 2], {1: 3, 2: 3}, 2, []),  # the README's platforms (3 each) with one of three gone: wait
        ([1, 2, 3], {1: 3, 2: 3, 3: 3}, 2, [1, 2, 3]),
        ([1, 2, 3, 4], {1: 3, 2: 3, 3: 3, 4: 5}, 2, [1, 2, 3]),  # one asks for 5 of 4: left out, not a stall
        ([1, 2, 3], {}, 4, []),  # fewer than the run's own quorum
        ([5, 6, 7], {5: 3, 6: 3, 7: 3}, 3, [5, 6, 7]),  # 5 platforms, 2 gone for good: go on with 3
    ],
)
def test_largest_cohort_every_member_accepts(live, min_cohorts, need, expected) -> None:
    assert largest_cohort(live, min_cohorts, need) == expected


def test_a_killed_node_is_waited_for_until_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: the README's three platforms (each requires a cohort of 3); web_shop died in round 2 and
    # said nothing: the SuperLink lists it online until its heartbeats are overdue (t = 20), then not at
    # all, until its restart activates it again at t = 35 (online_until moves to 55)
    grid = ScriptedGrid([(0.0, {1: 30.0, 2: 30.0, 3: 20.0}), (20.0, {1: 40.0, 2: 40.0}),
                         (35.0, {1: 50.0, 2: 50.0, 3: 55.0})])  # fmt: skip
    quorum = _started(NAMES, {1: 3, 2: 3, 3: 3})
    quorum.fell_silent(grid, [3])  # round 2's exchange: no reply from node 3
    # Execute
    with caplog.at_level(logging.INFO, logger="crossfed.server"):
        cohort = quorum.wait(grid, _cfg(), 3, clock=grid.clock, sleep=grid.sleep)  # type: ignore[arg-type]
    # Assert: round 3 starts with all three, once web_shop is back, not before; the wait said whom it awaited
    assert cohort == [1, 2, 3]
    assert 35.0 <= grid.now < 35.0 + 2 * POLL_S
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("round 3: waiting for 3 platform(s) (`fed.min-round-nodes` 2, app (node 1) requires 3")
    assert "2 there: app (node 1), social_shop (node 2); missing: web_shop (node 3) (silent since it failed" in lines[0]
    assert lines[-1].startswith("round 3: going ahead after 35 s with 3 platform(s)")
    assert not quorum.silent  # heard from again: an ordinary node from now on


def test_a_node_that_was_only_slow_counts_at_its_next_heartbeat() -> None:
    # node 3 missed an exchange but is alive: its next heartbeat (t = 8) moves online_until from 20 to 28
    grid = ScriptedGrid([(0.0, {1: 20.0, 2: 20.0, 3: 20.0}), (8.0, {1: 28.0, 2: 28.0, 3: 28.0})])
    quorum = _started(NAMES, {1: 3, 2: 3, 3: 3})
    quorum.fell_silent(grid, [3])
    assert quorum.wait(grid, _cfg(), 3, clock=grid.clock, sleep=grid.sleep) == [1, 2, 3]  # type: ignore[arg-type]
    assert 8.0 <= grid.now < 8.0 + 2 * POLL_S


def test_no_quorum_loses_the_round_naming_whom_it_waited_for() -> None:
    grid = ScriptedGrid([(0.0, {1: 1e9, 2: 1e9})])
    quorum = _started(NAMES, {1: 3, 2: 3})
    with pytest.raises(RoundAborted) as lost:
        quorum.wait(grid, _cfg(**{"fed.node-wait-s": 30.0}), 4, clock=grid.clock, sleep=grid.sleep)  # type: ignore[arg-type]
    assert str(lost.value).startswith("no quorum after 30 s: round 4: waiting for 3 platform(s)")
    assert "missing: web_shop (node 3)" in str(lost.value) and lost.value.failures
    assert 30.0 <= grid.now < 30.0 + 2 * POLL_S


def test_a_run_that_cannot_start_fails_as_before() -> None:
    grid = ScriptedGrid([(0.0, {1: 1e9, 2: 1e9})])
    with pytest.raises(FederationError, match=r"only 2 platform\(s\) connected after 5 s, `fed.min-nodes` = 3"):
        Quorum(dict(NAMES)).wait(grid, _cfg(**{"fed.node-wait-s": 5.0}), 1, clock=grid.clock, sleep=grid.sleep)  # type: ignore[arg-type]


def test_five_platforms_two_gone_for_good_go_on_with_three() -> None:
    # min cohort 3 everywhere; nodes 4 and 5 were killed and their SuperLink entries expired
    names = {**NAMES, 4: "shop4", 5: "shop5"}
    grid = ScriptedGrid([(0.0, {1: 1e9, 2: 1e9, 3: 1e9})])
    quorum = _started(names, dict.fromkeys(names, 3))
    quorum.fell_silent(grid, [4, 5])
    assert quorum.wait(grid, _cfg(**{"fed.min-nodes": 5}), 6, clock=grid.clock, sleep=grid.sleep) == [1, 2, 3]  # type: ignore[arg-type]
    assert grid.now == 0.0  # no wait at all
    assert set(quorum.silent) == {4, 5}  # still not heard from: never sent a message while silent


def test_simulated_nodes_without_heartbeats_are_never_held_back() -> None:
    grid = ScriptedGrid([(0.0, {1: 0.0, 2: 0.0, 3: 0.0})], heartbeat_s=HEARTBEAT_INTERVAL_INF)
    quorum = _started(NAMES, {})
    quorum.fell_silent(grid, [3])
    assert quorum.wait(grid, _cfg(), 2, clock=grid.clock, sleep=grid.sleep) == [1, 2, 3]  # type: ignore[arg-type]


def test_in_the_clear_declared_minimums_do_not_apply() -> None:
    grid = ScriptedGrid([(0.0, {1: 1e9, 2: 1e9})])
    quorum = _started(NAMES, {1: 3, 2: 3})
    assert quorum.wait(grid, _cfg(secagg=False), 2, clock=grid.clock, sleep=grid.sleep) == [1, 2]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("aborted", "status"),
    [([], COMPLETED), ([2], DEGRADED), ([2, 3], DEGRADED), ([1, 2, 3], FAILED)],
)
def test_run_status_from_lost_rounds(aborted: list[int], status: str) -> None:
    records = [{"round": r, **({"aborted": f"why {r}"} if r in aborted else {"mean": {}})} for r in (1, 2, 3)]
    assert run_status(records) == status
    assert lost_rounds(records) == [{"round": r, "reason": f"why {r}"} for r in aborted]


def test_lost_rounds_are_named_with_their_reasons() -> None:
    lost = [{"round": 2, "reason": "secure aggregation aborted"}, {"round": 3, "reason": "no quorum"}]
    assert describe_lost(lost) == "rounds 2, 3 lost (round 2: secure aggregation aborted; round 3: no quorum)"
    assert describe_lost(lost[:1]) == "round 2 lost (round 2: secure aggregation aborted)"
