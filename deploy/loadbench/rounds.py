"""What a load run's rounds say: per round who trained, evaluated and failed, and whether a kill explains it.

Reads the run's ``rounds.jsonl`` / ``summary.json`` records (:mod:`common.run_files`) against the kill
events; :func:`problems` lists what was lost (empty: nothing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.run_files import read_summary
from deploy.flwr_cli import COMPLETED
from deploy.loadbench.kills import KillEvent

NODE_RE = re.compile(r"node (\d+)")
# Flower's error reply for a node that missed its heartbeats comes from the SuperLink (node id 1),
# so that failure line names no platform; the node's own id follows as "no reply".
UNAVAILABLE = "Node Unavailable"


def _down(kill: KillEvent, start: float, end: float) -> bool:
    """Was the platform down (killed and not yet back online) at some point in [start, end]?"""
    back = kill.t_online if math.isfinite(kill.t_online) else math.inf
    return kill.t_kill <= end and back >= start


def summarize_rounds(rows: Sequence[Mapping[str, Any]], ends: Mapping[int, float], node_platform: Mapping[int, str],
                     kills: Sequence[KillEvent], t_start: float = 0.0) -> list[dict[str, Any]]:  # fmt: skip
    """Per round: seconds, who trained / evaluated, failures and whether a kill explains each.

    ``ends``: when each round's row was seen (seconds since submit); a round starts where
    the previous one ended (round 1 at ``t_start``). ``node_platform``: node id -> platform.
    """
    out = []
    for row in rows:
        rnd = int(row["round"])
        start, end = ends.get(rnd - 1, t_start), ends.get(rnd, math.inf)
        train = row.get("train") or {}
        secure = train.get("secure-aggregation") if isinstance(train, Mapping) else None
        down = {k.platform for k in kills if _down(k, start, end)}
        failed, other = set(), []
        for line in row.get("failures") or []:
            node = NODE_RE.search(line)
            if node and int(node.group(1)) in node_platform:
                failed.add(node_platform[int(node.group(1))])
            elif not (down and UNAVAILABLE in line):  # the SuperLink's reply for a node it declared dead
                other.append(line)
        failed = sorted(failed)
        out.append({
            "round": rnd, "seconds": round(float(row.get("seconds", math.nan)), 2),
            "aborted": row.get("aborted"),
            "trained": int(secure["survivors"]) if secure else len(train),
            "evaluated": len(row.get("eval") or {}),
            "evaluated_platforms": sorted(row.get("eval") or {}),
            "trained_platforms": None if secure else sorted(train),
            "failed_platforms": failed, "unexplained_failures": [p for p in failed if p not in down] + other,
            "down": sorted(down),
        })  # fmt: skip
    return out


def mark_rejoins(kills: Sequence[KillEvent], rounds: Sequence[Mapping[str, Any]]) -> None:
    """Each kill's first later round in which the platform trained or evaluated."""
    for kill in kills:
        kill.rejoined_round = None
        for r in rounds:
            if r["round"] <= kill.round:
                continue
            took_part = kill.platform in r["evaluated_platforms"] or kill.platform in (r["trained_platforms"] or [])
            if took_part:
                kill.rejoined_round = r["round"]
                break


def final_test_missing(run_dir: Path, platforms: Sequence[str]) -> list[str] | None:
    """Platforms without test metrics in ``summary.json`` (the best round's final test); None: no summary."""
    summary = read_summary(run_dir)
    if summary is None:
        return None
    tested = {p for p, metrics in (summary.get("test") or {}).items() if metrics}
    return [p for p in platforms if p not in tested]


def problems(rounds: Sequence[Mapping[str, Any]], requested: int, kills: Sequence[KillEvent], status: str,
             untested: Sequence[str] | None = ()) -> list[str]:  # fmt: skip
    """What was lost: empty means every round completed and every killed node came back."""
    out = [] if status == COMPLETED else [f"run status {status}"]
    if untested:
        out.append(f"final test evaluation has no metrics from {', '.join(untested)}")
    if len(rounds) < requested:
        out.append(f"{len(rounds)} of {requested} rounds ran")
    out += [f"round {r['round']} aborted: {r['aborted']}" for r in rounds if r["aborted"]]
    out += [f"round {r['round']}: unexplained failure: {p}" for r in rounds for p in r["unexplained_failures"]]
    last = max((r["round"] for r in rounds), default=0)
    out += [f"{k.platform} (killed in round {k.round}) never took part again" for k in kills
            if k.rejoined_round is None and k.round < last]  # fmt: skip
    return out
