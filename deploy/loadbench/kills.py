"""Which nodes the load benchmark kills, when, and when a killed node may start again.

A seeded schedule (:func:`kill_schedule`) picks distinct victims and a point in a round for each;
:func:`restart_due` is the rejoin rule, and :class:`KillEvent` what happened to each kill.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

HEARTBEAT_PATIENCE_S = 20.0  # deploy.supernode_entry: 10 s heartbeat, the SuperLink waits 2 x that
REJOIN_POLICIES = ("after-round", "after-delay")


@dataclass(frozen=True)
class PlannedKill:
    platform: str
    round: int  # the round it is killed in
    phase: float  # how far into that round, as a fraction of its expected length


def kill_count(n: int, fraction: float) -> int:
    """``ceil(fraction * n)`` without float noise (0.2 * 30 is 6.000000000000001)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the kill fraction must be in [0, 1), got {fraction}")
    return math.ceil(round(fraction * n, 9))


def kill_schedule(platforms: Sequence[str], fraction: float, rounds: int, seed: int = 0) -> list[PlannedKill]:
    """Distinct seeded victims, each in a round of 1 .. R-2 (a later round is left to rejoin)."""
    count = kill_count(len(platforms), fraction)
    if count > len(platforms) - 2:
        raise ValueError(f"killing {count} of {len(platforms)} platforms leaves fewer than 2")
    rng = random.Random(seed)
    victims = rng.sample(sorted(platforms), count)
    last = max(1, rounds - 2)
    kills = [PlannedKill(p, rng.randint(1, last), round(rng.random(), 3)) for p in victims]
    return sorted(kills, key=lambda k: (k.round, k.phase, k.platform))


@dataclass
class KillEvent:
    platform: str
    planned_round: int
    round: int = 0  # the round that was running when it was killed
    t_kill: float = math.nan  # seconds since the run was submitted
    t_restart: float = math.nan
    t_online: float = math.nan  # the restarted SuperNode got its node id back
    rejoined_round: int | None = None


def restart_due(event: KillEvent, now: float, rounds_done: int, rejoin_after_s: float, policy: str) -> bool:
    """May the killed node start again? ``after-round`` also waits for the round it was killed in to end.

    Why: a node killed after it pulled its message, and back under the same node id before
    the ServerApp polled while it was marked offline, is online again, so the SuperLink
    never answers that message with "node unavailable" and the round waits for the full
    ``fed.round-timeout-s`` (seen with 30 nodes on 2 cores). Once the round has ended every
    message the dead node had pulled has been settled.
    """
    if not math.isnan(event.t_restart) or now < event.t_kill + rejoin_after_s:
        return False
    return policy == "after-delay" or rounds_done >= event.round
