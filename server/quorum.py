"""Whom a round waits for: enough platforms that are really there, as many as each of them requires.

Why a count of node ids is not enough (issue 23, item 1):

* Under secure aggregation every platform refuses a roster smaller than its own minimum cohort
  (node_config ``secagg-min-cohort``, 3 by default when deployed), a number the run config does not
  hold. A round started with fewer platforms trains for nothing and then aborts.
* Flower lists a SuperNode that was killed as online until its heartbeats are overdue (2 x the
  interval: 20 s under ``crossfed deploy supernode``), and its restart cannot activate before that.
  Just after a death, the SuperLink's node list still holds the dead node.

So before each exchange :meth:`Quorum.wait` polls the Grid until the *live* nodes make a cohort
that every member accepts, at least

* ``fed.min-nodes`` for the run's first round, ``fed.min-round-nodes`` (capped at min-nodes) later;
* under secure aggregation ``secure.min-cohort`` and each member's own minimum cohort, which a
  platform states in every secure reply (``common.payload.INFO_MIN_COHORT``); a platform whose
  minimum exceeds what the others can make is left out of the round rather than stalling it.

A node that failed to answer an exchange counts as live again only once the SuperLink has heard
from it since (its ``online_until`` moved on: a heartbeat, or a restart's activation). While it
waits, it logs every ``STATUS_EVERY_S`` one line naming the platforms it waits for. After
``fed.node-wait-s`` without a quorum, the run's first round ends the run (FederationError: nothing
ran); a later round is lost (RoundAborted, recorded in rounds.jsonl) and the next round waits again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message
from flwr.common.constant import HEARTBEAT_INTERVAL_INF
from flwr.serverapp import Grid

from common.config import AppConfig, FedSpec
from common.payload import INFO, INFO_MIN_COHORT
from server.federation import FederationError, RoundAborted
from server.messaging import node_label

log = logging.getLogger("crossfed.server")

STATUS_EVERY_S = 15.0  # a waiting round says whom it waits for this often
POLL_S = 1.0  # how often the SuperLink's node list is read while waiting


def base_quorum(fed: FedSpec, secure_min_cohort: int | None, started: bool) -> tuple[int, str]:
    """(platforms to wait for, the setting that says so), before the platforms' own minimum cohorts.

    Starting the run needs ``fed.min-nodes``; once it runs, a round goes ahead with
    ``fed.min-round-nodes`` (never more than min-nodes), so a platform that dies does not
    stop the federation until it is back. Under secure aggregation never fewer than
    ``secure.min-cohort``: a smaller cohort could not be summed anyway.
    """
    need, name = (fed.min_nodes, "fed.min-nodes") if not started else (
        min(fed.min_round_nodes, fed.min_nodes), "fed.min-round-nodes")  # fmt: skip
    if secure_min_cohort is not None and secure_min_cohort > need:
        return secure_min_cohort, "secure.min-cohort"
    return need, name


def largest_cohort(live: Iterable[int], min_cohorts: Mapping[int, int], need: int) -> list[int]:
    """The largest set of ``live`` nodes, at least ``need``, whose every member's own minimum cohort
    (``min_cohorts``; none known = no demand of its own) it meets; [] when there is none.

    Taking the nodes by ascending minimum, a prefix of k nodes is acceptable iff k >= need and k >=
    the last one's minimum; the longest such prefix is the answer (any acceptable set of k nodes
    could swap its members for ones with smaller minimums).
    """
    ranked = sorted(live, key=lambda n: (min_cohorts.get(n, 0), n))
    for k in range(len(ranked), 0, -1):
        if k >= max(need, min_cohorts.get(ranked[k - 1], 0)):
            return sorted(ranked[:k])
    return []


@dataclass
class Quorum:
    """What the server knows about who is there: names, minimum cohorts, nodes that fell silent."""

    names: dict[int, str] = field(default_factory=dict)  # node id -> platform (shared with the transport)
    min_cohorts: dict[int, int] = field(default_factory=dict)  # node id -> the minimum cohort it declared
    silent: dict[int, float] = field(default_factory=dict)  # node id -> its online_until when it fell silent
    known: set[int] = field(default_factory=set)  # every node that has been in a cohort: whom to wait for
    started: bool = False  # the run's first round has had its quorum

    def learn(self, replies: Mapping[int, Message]) -> None:
        """Remember the minimum cohort each replying platform declares (secure replies carry it)."""
        for node, reply in replies.items():
            info = None if reply.has_error() else reply.content.get(INFO)
            if isinstance(info, ConfigRecord) and INFO_MIN_COHORT in info:
                self.min_cohorts[node] = int(info[INFO_MIN_COHORT])  # type: ignore[arg-type]

    def fell_silent(self, grid: Grid, nodes: Iterable[int]) -> None:
        """``nodes`` did not answer an exchange: count them again only once the SuperLink hears from them."""
        nodes = set(nodes)
        if nodes:
            seen = {info.node_id: info.online_until for info in grid.get_nodes()}
            self.silent.update({n: seen.get(n, 0.0) for n in nodes})

    def live(self, grid: Grid) -> list[int]:
        """The SuperLink's online nodes, less those silent since they last failed to answer."""
        out = []
        for info in grid.get_nodes():
            node = info.node_id
            if node in self.silent:
                never_beats = info.heartbeat_interval >= HEARTBEAT_INTERVAL_INF  # simulated nodes
                if not never_beats and info.online_until <= self.silent[node]:
                    continue
                del self.silent[node]
            out.append(node)
        return sorted(out)

    def wait(self, grid: Grid, cfg: AppConfig, rnd: int, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> list[int]:  # fmt: skip
        """Block until the live nodes make a cohort (see the module docstring); returns that cohort."""
        need, setting = base_quorum(cfg.fed, cfg.secure.min_cohort if cfg.secagg else None, self.started)
        demands = self.min_cohorts if cfg.secagg else {}
        timeout = cfg.fed.node_wait_s
        start = clock()
        said = None
        while True:
            live = self.live(grid)
            cohort = largest_cohort(live, demands, need)
            now = clock()
            if cohort:
                self._went_ahead(rnd, cohort, live, said is not None, now - start)
                return cohort
            line = self.status_line(rnd, live, need, setting, demands, now - start, timeout)
            if now - start >= timeout:
                if not self.started:  # nothing ran: the run cannot start
                    raise FederationError(f"only {len(live)} platform(s) connected after {timeout:.0f} s, "
                                          f"`{setting}` = {need}; {line}")  # fmt: skip
                raise RoundAborted(f"no quorum after {timeout:.0f} s: {line}", [line])
            if said is None or now - said >= STATUS_EVERY_S:
                log.info("%s", line)
                said = now
            sleep(POLL_S)

    def _went_ahead(self, rnd: int, cohort: Sequence[int], live: Sequence[int], waited: bool, took: float) -> None:
        self.started = True
        self.known.update(cohort)
        left_out = sorted(set(live) - set(cohort))
        if left_out:
            why = ", ".join(f"{self.label(n)} (min cohort {self.min_cohorts.get(n)})" for n in left_out)
            log.warning("round %d: leaving out %s: each requires a larger cohort than the others make", rnd, why)
        if waited:
            log.info("round %d: going ahead after %.0f s with %d platform(s): %s", rnd, took, len(cohort),
                     ", ".join(self.label(n) for n in cohort))  # fmt: skip

    def status_line(self, rnd: int, live: Sequence[int], need: int, setting: str, demands: Mapping[int, int],
                    waited_s: float, timeout_s: float) -> str:  # fmt: skip
        """``round 3: waiting for 3 platform(s) (`fed.min-round-nodes` 2, web_shop requires 3), 2 there: ...;
        missing: web_shop (node 7) (silent since it failed to answer) (40 of 120 s)``."""
        why = [f"`{setting}` {need}"]
        strict = max(((c, -n) for n, c in demands.items() if n in live), default=(0, 0))  # ties: the first node
        if strict[0] > need:
            why.append(f"{self.label(-strict[1])} requires {strict[0]} (`secagg-min-cohort`)")
        wanted = max(need, strict[0])
        there = ", ".join(self.label(n) for n in live) or "none"
        missing = sorted((self.known | set(self.names) | set(self.silent)) - set(live))
        gone = ", ".join(self.label(n) + (" (silent since it failed to answer)" if n in self.silent else "")
                         for n in missing)  # fmt: skip
        return (f"round {rnd}: waiting for {wanted} platform(s) ({', '.join(why)}), {len(live)} there: {there}"
                + (f"; missing: {gone}" if gone else "") + f" ({waited_s:.0f} of {timeout_s:.0f} s)")  # fmt: skip

    def label(self, node: int) -> str:
        return node_label(node, self.names)
