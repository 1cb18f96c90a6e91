"""Driving a load run: the federation under load, its polling, the run, the kills and restarts as rounds go by.

:func:`drive` submits the run, executes the kill plan, restarts killed nodes by the rejoin rule
(:func:`deploy.loadbench.kills.restart_due`) and waits for the end; what it saw stays in a
:class:`RunState` even when it stops early (:class:`BenchAborted`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.run_files import SUMMARY_FILE, read_rounds
from deploy.federation import Federation
from deploy.flwr_cli import COMPLETED, run_status
from deploy.loadbench.kills import KillEvent, PlannedKill, restart_due
from deploy.loadbench.memory import MemorySampler

STATUS_EVERY_S = 30.0  # `flwr ls` (a subprocess) this often while the run goes on


def polling(nodes: int, poll_s: float | None = None, worker_poll_s: float | None = None) -> tuple[float, float]:
    """Idle polling intervals: (SuperNode -> SuperLink, worker -> SuperNode), unless given.

    Up to 10 nodes, what :class:`Federation` uses (0.25 s, 0.05 s); beyond, both grow with
    N (capped at 1 s and 0.25 s) so that idle polling costs the one-process SuperLink and
    the 2 cores about what 10 nodes cost (~40 pulls/s), at the price of up to one interval
    more latency per message.
    """
    scale = max(1.0, nodes / 10)
    return (poll_s if poll_s is not None else round(min(1.0, 0.25 * scale), 3),
            worker_poll_s if worker_poll_s is not None else round(min(0.25, 0.05 * scale), 3))  # fmt: skip


class BenchAborted(RuntimeError):
    """The benchmark stopped itself (low memory, time limit)."""


def say(t0: float, text: str) -> None:
    """One progress line, stamped with the seconds since the benchmark began."""
    print(f"[{time.monotonic() - t0:7.1f} s] {text}", flush=True)


@dataclass
class RunState:
    """What :func:`drive` has seen so far (kept when it stops early)."""

    run_id: int | None = None
    submitted_at: float = math.nan  # seconds after the benchmark began
    status: str = "not started"
    run_s: float = math.nan
    ends: dict[int, float] = field(default_factory=dict)  # round -> seen done, seconds since submit
    seconds: dict[int, float] = field(default_factory=dict)  # round -> its own seconds (rounds.jsonl)
    kills: list[KillEvent] = field(default_factory=list)
    server_log_tail: str = ""


def drive(fed: Federation, run_dir: Path, config: dict[str, Any], plan: Sequence[PlannedKill], state: RunState, *,
          rejoin_after_s: float, rejoin: str, first_round_s: float, timeout_s: float,
          sampler: MemorySampler | None, t0: float) -> None:  # fmt: skip
    """Submit the run, execute the kill plan as rounds go by, restart the killed nodes; wait for the end."""
    from concurrent.futures import ThreadPoolExecutor

    rounds = int(config["num-server-rounds"])
    state.run_id = fed.submit(config)
    state.status = "running"
    t_submit = time.monotonic()
    state.submitted_at = t_submit - t0
    say(t0, f"run {state.run_id} submitted: {rounds} rounds, {len(plan)} planned kills")
    pending = list(plan)
    down: dict[str, KillEvent] = {}  # killed, not yet back online
    next_status, status = STATUS_EVERY_S, None
    with ThreadPoolExecutor(1) as pool:  # `flwr ls` can take many seconds on a loaded machine: off the loop
        while True:
            now = time.monotonic() - t_submit
            state.run_s = now
            if sampler is not None and sampler.low_memory:
                raise BenchAborted(f"stopped: {sampler.low_memory}")
            if now > timeout_s:
                raise BenchAborted(f"stopped: the run did not finish within {timeout_s:.0f} s")
            record_rounds(run_dir, state, now, t0)
            current = len(state.ends) + 1
            start = state.ends.get(current - 1, 0.0)
            expected = state.seconds.get(current - 1, first_round_s)
            while pending and current <= rounds and (pending[0].round < current or (
                    pending[0].round == current and now >= start + pending[0].phase * expected)):  # fmt: skip
                planned = pending.pop(0)
                fed.kill_node(planned.platform)
                event = KillEvent(planned.platform, planned.round, round=current, t_kill=time.monotonic() - t_submit)
                state.kills.append(event)
                down[planned.platform] = event
                say(t0, f"killed {planned.platform} in round {current} ({now - start:.1f} s into it)")
            for name, event in list(down.items()):
                if restart_due(event, now, len(state.ends), rejoin_after_s, rejoin):
                    fed.start_node(name)
                    event.t_restart = time.monotonic() - t_submit
                    say(t0, f"restarted {name}")
                elif not math.isnan(event.t_restart) and "SuperNode ID:" in fed.nodes[name].log_text():
                    event.t_online = now
                    del down[name]
                    say(t0, f"{name} is back online")
            finished = len(state.ends) >= rounds and (run_dir / SUMMARY_FILE).is_file()
            if status is None and (finished or now >= next_status):
                status = pool.submit(run_status, state.run_id, fed.conn, fed.env)
                next_status = now + STATUS_EVERY_S
            if status is not None and status.done():
                state.status = str(status.result().get("status", "unknown"))
                status = None
                if state.status.startswith("finished"):
                    break
            time.sleep(0.25)
    state.run_s = time.monotonic() - t_submit
    say(t0, f"run {state.run_id} {state.status} after {state.run_s:.1f} s")
    if state.status != COMPLETED:
        state.server_log_tail = fed.server_log(state.run_id)[-4000:]


def record_rounds(run_dir: Path, state: RunState, now: float, t0: float) -> None:
    for row in read_rounds(run_dir)[len(state.ends) :]:
        rnd = int(row["round"])
        state.ends[rnd], state.seconds[rnd] = now, float(row.get("seconds", math.nan))
        what = "ABORTED" if row.get("aborted") else f"{len(row.get('failures') or [])} failures"
        say(t0, f"round {rnd} done in {state.seconds[rnd]:.1f} s ({what})")
