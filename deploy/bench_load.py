"""Load benchmark: many SuperNodes on loopback, nodes killed mid-run (``crossfed bench deploy --nodes N``).

    crossfed bench deploy --nodes 30 [--rounds 5] [--kill-fraction 0.2] [--rejoin-after-s 25]
                          [--secagg | --no-secagg] [--seed 0] [--out DIR] [--set KEY=VALUE ...]

What it does:

* writes an N-platform dataset under ``OUT/work/data``: ``platform_00`` .. ``platform_NN``,
  platform i is shop ``i % 3`` of the embedded synthetic dataset generated with seed
  ``seed + i // 3`` (so every platform has its own users and ratings);
* starts a :class:`deploy.federation.Federation`: TLS SuperLink with node authentication, one
  SuperNode + one warm ClientApp worker (:mod:`deploy.worker`) per platform, tiny model
  (:data:`deploy.bench.TINY`);
* runs ``--rounds`` rounds and kills ``ceil(kill-fraction * N)`` distinct nodes (SuperNode
  and its worker, SIGKILL: a crash) at seeded random points (:func:`kill_schedule`):
  each in a round drawn from 1 .. R-2, at a random fraction of that round's expected
  length (the previous round's, or 2 s per node for round 1);
* restarts every killed node (same key, same node id) once ``--rejoin-after-s`` have
  passed (more than the SuperLink's 2 x 10 s heartbeat patience) AND the round it was
  killed in has ended (``--rejoin after-round``, the default; :func:`restart_due` says
  why); ``--rejoin after-delay`` drops the second condition and shows the hazard;
* samples the RSS of every process of the federation every 0.5 s (``psutil``) by kind:
  ``superlink``, ``superexec`` (the SuperLink's ServerApp launcher), ``serverapp``,
  ``supernode``, ``clientapp`` (warm worker);
* reports rounds completed / requested, per round: seconds, platforms that trained
  (secure aggregation: survivors), platforms that evaluated, failures and whether each
  is explained by a kill; per kill: when, and the round the node took part in again;
  peak memory per process kind (largest single process, largest sum). Writes
  ``OUT/bench.json``, ``OUT/rounds.png`` and the run folder ``OUT/run``.

"Nothing lost" = every round completed (none aborted), every failure is a platform that
was down during that round, every killed node took part again in a later round, and
the final test evaluation (``summary.json``) has metrics from every platform.

Secure aggregation is on by default (``--no-secagg``: rounds in the clear); it completes
with 30 nodes on 2 cores. With ``fed.min-nodes = N - kills`` a round starts once at most
the kill budget is missing. Idle polling slows down beyond 10 nodes (:func:`polling`).
A guard stops the benchmark (and every process) when the machine's available memory
drops below ``--min-free-gib``: each warm worker holds ~0.36 GiB of its own memory
(torch + peft), each SuperNode ~0.1 GiB; 30 nodes took ~14 GiB (20 GiB of summed RSS,
which counts the shared libraries once per process). SIGTERM stops everything and
still writes the report. Measured results and what Flower 1.42 did under this load:
``results/bench-deploy-2026-11-28/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform as host_platform
import random
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import parse_overrides
from common.data import PlatformData, write_dataset
from deploy.bench import TINY
from deploy.errors import DeployError
from deploy.federation import Federation
from deploy.flwr_cli import run_status
from deploy.processes import Daemon, start_supernode

KINDS = ("superlink", "superexec", "serverapp", "supernode", "clientapp", "other")
HEARTBEAT_PATIENCE_S = 20.0  # deploy.supernode_entry: 10 s heartbeat, the SuperLink waits 2 x that
MIB = 1024 * 1024
STATUS_EVERY_S = 30.0  # `flwr ls` (a subprocess) this often while the run goes on


# ---------------------------------------------------------------------------- dataset


def platform_names(n: int) -> list[str]:
    """``platform_00`` .. ``platform_{n-1}`` (zero-padded to keep the sorted order numeric)."""
    width = max(2, len(str(n - 1)))
    return [f"platform_{i:0{width}d}" for i in range(n)]


def bench_platforms(n: int, seed: int = 0) -> list[PlatformData]:
    """N platforms: platform i is synthetic shop ``i % 3`` generated with seed ``seed + i // 3``."""
    from common.synthetic import SHOPS, make_synthetic

    if n < 1:
        raise ValueError(f"need at least one platform, got {n}")
    generated: dict[int, dict[str, PlatformData]] = {}
    out = []
    for i, name in enumerate(platform_names(n)):
        copy = i // len(SHOPS)
        if copy not in generated:
            generated[copy] = make_synthetic(seed + copy)
        out.append(dataclasses.replace(generated[copy][SHOPS[i % len(SHOPS)].name], name=name))
    return out


def write_bench_dataset(root: Path, n: int, seed: int = 0) -> list[str]:
    """Write :func:`bench_platforms` as a dataset folder (replacing ``root``); returns the names."""
    platforms = bench_platforms(n, seed)
    write_dataset(root, platforms, overwrite=True)
    return [p.name for p in platforms]


# ---------------------------------------------------------------------------- kills


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


# ---------------------------------------------------------------------------- polling


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


class LoadFederation(Federation):
    """A :class:`Federation` whose warm workers poll their SuperNode every ``worker_poll_s``."""

    def __init__(self, *args: Any, worker_poll_s: float = 0.05, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker_poll_s = worker_poll_s

    def start_node(self, platform: str, **overrides: Any) -> Daemon:
        if platform in self.nodes and self.nodes[platform].alive():
            raise DeployError(f"SuperNode {platform} is already running")
        spec = self.node_spec(platform, **overrides)
        self.nodes[platform] = start_supernode(spec, self.logs, self.env, worker_poll_s=self.worker_poll_s)
        return self.nodes[platform]


# ---------------------------------------------------------------------------- memory


def process_kind(cmdline: Sequence[str]) -> str:
    """Which part of the federation a process is, from its command line."""
    text = " ".join(cmdline)
    for needle, kind in (("flwr-serverapp", "serverapp"), ("flower-superexec", "superexec"),
                         ("flower-superlink", "superlink"), ("deploy.worker", "clientapp"),
                         ("flwr-clientapp", "clientapp"), ("deploy.supernode_entry", "supernode"),
                         ("flower-supernode", "supernode")):  # fmt: skip
        if needle in text:
            return kind
    return "other"


@dataclass
class MemoryPeaks:
    """Running maxima (MiB) per process kind over snapshots of ``(kind, rss, anon)`` bytes.

    ``rss`` is VmRSS (what ``top`` shows; shared library pages count in every process),
    ``anon`` its anonymous part (RSS minus file-backed pages: the process's own heap), so
    the sum of ``anon`` plus the libraries counted once is what the processes really take.
    """

    process: dict[str, float] = field(default_factory=dict)  # the largest single process (RSS)
    total: dict[str, float] = field(default_factory=dict)  # the largest sum of RSS over one snapshot
    anon: dict[str, float] = field(default_factory=dict)  # the largest sum of anonymous RSS
    processes: dict[str, int] = field(default_factory=dict)  # the most processes at once
    all_total: float = 0.0  # the largest sum of everything (RSS)
    all_anon: float = 0.0
    samples: int = 0

    def add(self, snapshot: Iterable[tuple[str, int, int]]) -> dict[str, float]:
        """Fold one snapshot in; returns its per-kind RSS sums (MiB)."""
        sums: dict[str, float] = {}
        anon: dict[str, float] = {}
        counts: dict[str, int] = {}
        for kind, rss, private in snapshot:
            sums[kind] = sums.get(kind, 0.0) + rss / MIB
            anon[kind] = anon.get(kind, 0.0) + private / MIB
            counts[kind] = counts.get(kind, 0) + 1
            self.process[kind] = max(self.process.get(kind, 0.0), rss / MIB)
        for kind, mib in sums.items():
            self.total[kind] = max(self.total.get(kind, 0.0), mib)
            self.anon[kind] = max(self.anon.get(kind, 0.0), anon[kind])
            self.processes[kind] = max(self.processes.get(kind, 0), counts[kind])
        self.all_total = max(self.all_total, sum(sums.values()))
        self.all_anon = max(self.all_anon, sum(anon.values()))
        self.samples += 1
        return sums

    def as_dict(self) -> dict[str, Any]:
        order = [k for k in KINDS if k in self.process]
        return {
            "peak_process_mib": {k: round(self.process[k], 1) for k in order},
            "peak_total_mib": {k: round(self.total[k], 1) for k in order},
            "peak_anon_total_mib": {k: round(self.anon[k], 1) for k in order},
            "max_processes": {k: self.processes[k] for k in order},
            "peak_all_mib": round(self.all_total, 1), "peak_all_anon_mib": round(self.all_anon, 1),
            "samples": self.samples,
        }  # fmt: skip


class MemorySampler(threading.Thread):
    """Every ``every_s``: RSS of each process tree of the federation, folded into :class:`MemoryPeaks`.

    Also keeps a coarse timeline (one point per ``timeline_s``) and sets ``low_memory``
    when the machine's available memory drops below ``min_free_mib``.
    """

    def __init__(self, fed: Federation, t0: float, every_s: float = 0.5, timeline_s: float = 2.0,
                 min_free_mib: float = 1024.0) -> None:  # fmt: skip
        super().__init__(name="memory-sampler", daemon=True)
        self.fed, self.t0, self.every_s, self.timeline_s, self.min_free_mib = fed, t0, every_s, timeline_s, min_free_mib
        self.peaks = MemoryPeaks()
        self.timeline: list[dict[str, float]] = []
        self.min_available_mib = math.inf
        self.low_memory: str | None = None
        self._kinds: dict[tuple[int, float], str] = {}
        self._cpu: dict[tuple[int, float], float] = {}  # last seen user+system seconds per process
        self.other_commands: set[str] = set()
        self._halt = threading.Event()

    def roots(self) -> list[int]:
        daemons = [d for d in (self.fed.superlink, *list(self.fed.nodes.values())) if d is not None]
        return [p.pid for d in daemons for p in (d.proc, *d.companions)]

    def snapshot(self) -> list[tuple[str, int, int]]:
        import psutil

        seen: set[int] = set()
        out = []
        for root in self.roots():
            try:
                top = psutil.Process(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    key = (proc.pid, proc.create_time())
                    if key not in self._kinds:
                        cmdline = proc.cmdline()
                        self._kinds[key] = process_kind(cmdline)
                        if self._kinds[key] == "other":
                            self.other_commands.add(" ".join(cmdline)[:200])
                    times = proc.cpu_times()
                    self._cpu[key] = times.user + times.system
                    mem = proc.memory_info()  # Linux: rss and shared (file-backed) from /proc/PID/statm
                    out.append((self._kinds[key], mem.rss, mem.rss - getattr(mem, "shared", 0)))
                except psutil.Error:
                    continue
        return out

    def run(self) -> None:
        import psutil

        next_point = 0.0
        while not self._halt.is_set():
            sums = self.peaks.add(self.snapshot())
            available = psutil.virtual_memory().available / MIB
            self.min_available_mib = min(self.min_available_mib, available)
            if available < self.min_free_mib and self.low_memory is None:
                self.low_memory = f"available memory {available:.0f} MiB < {self.min_free_mib:.0f} MiB"
            now = time.monotonic() - self.t0
            if now >= next_point:
                self.timeline.append({"t": round(now, 1), **{k: round(v, 1) for k, v in sums.items()},
                                      "available": round(available, 1)})  # fmt: skip
                next_point = now + self.timeline_s
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per kind, as last seen (a process's final moments after a sample are missed)."""
        out: dict[str, float] = {}
        for key, seconds in self._cpu.items():
            out[self._kinds[key]] = out.get(self._kinds[key], 0.0) + seconds
        return {k: round(out[k], 1) for k in KINDS if k in out}


# ---------------------------------------------------------------------------- rounds


NODE_RE = re.compile(r"node (\d+)")
# Flower's error reply for a node that missed its heartbeats comes from the SuperLink (node id 1),
# so that failure line names no platform; the node's own id follows as "no reply".
UNAVAILABLE = "Node Unavailable"


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "rounds.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return rows


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
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    tested = {p for p, metrics in (json.loads(path.read_text()).get("test") or {}).items() if metrics}
    return [p for p in platforms if p not in tested]


def problems(rounds: Sequence[Mapping[str, Any]], requested: int, kills: Sequence[KillEvent], status: str,
             untested: Sequence[str] | None = ()) -> list[str]:  # fmt: skip
    """What was lost: empty means every round completed and every killed node came back."""
    out = [] if status == "finished:completed" else [f"run status {status}"]
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


# ---------------------------------------------------------------------------- the run


class BenchAborted(RuntimeError):
    """The benchmark stopped itself (low memory, time limit)."""


def _terminated(signum: int, frame: object) -> None:
    raise BenchAborted("stopped: SIGTERM")


def _say(t0: float, text: str) -> None:
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


REJOIN_POLICIES = ("after-round", "after-delay")


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
    _say(t0, f"run {state.run_id} submitted: {rounds} rounds, {len(plan)} planned kills")
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
            _record_rounds(run_dir, state, now, t0)
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
                _say(t0, f"killed {planned.platform} in round {current} ({now - start:.1f} s into it)")
            for name, event in list(down.items()):
                if restart_due(event, now, len(state.ends), rejoin_after_s, rejoin):
                    fed.start_node(name)
                    event.t_restart = time.monotonic() - t_submit
                    _say(t0, f"restarted {name}")
                elif not math.isnan(event.t_restart) and "SuperNode ID:" in fed.nodes[name].log_text():
                    event.t_online = now
                    del down[name]
                    _say(t0, f"{name} is back online")
            finished = len(state.ends) >= rounds and (run_dir / "summary.json").is_file()
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
    _say(t0, f"run {state.run_id} {state.status} after {state.run_s:.1f} s")
    if state.status != "finished:completed":
        state.server_log_tail = fed.server_log(state.run_id)[-4000:]


def _record_rounds(run_dir: Path, state: RunState, now: float, t0: float) -> None:
    for row in read_rounds(run_dir)[len(state.ends) :]:
        rnd = int(row["round"])
        state.ends[rnd], state.seconds[rnd] = now, float(row.get("seconds", math.nan))
        what = "ABORTED" if row.get("aborted") else f"{len(row.get('failures') or [])} failures"
        _say(t0, f"round {rnd} done in {state.seconds[rnd]:.1f} s ({what})")


# ---------------------------------------------------------------------------- report


def render_tables(report: Mapping[str, Any]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    buf = StringIO()
    console = Console(file=buf, width=120, force_terminal=False)
    mode = "secure aggregation" if report["secagg"] else "in the clear"
    console.print(f"{report['nodes']} SuperNodes, {mode}: {report['rounds_completed']}/{report['rounds_requested']} "
                  f"rounds completed, run {report['status']} in {_num(report['run_s'])} s "
                  f"(federation start-up {_num(report['startup_s'])} s)")  # fmt: skip
    rounds = Table(title="rounds")
    for col in ("round", "seconds", "trained", "evaluated", "failed (killed)", "unexplained", "aborted"):
        rounds.add_column(col, justify="right" if col in ("round", "seconds", "trained", "evaluated") else "left")
    n = report["nodes"]
    for r in report["rounds"]:
        rounds.add_row(str(r["round"]), _num(r["seconds"]), f"{r['trained']}/{n}", f"{r['evaluated']}/{n}",
                       ", ".join(r["failed_platforms"]) or "-", ", ".join(r["unexplained_failures"]) or "-",
                       str(r["aborted"] or "-"))  # fmt: skip
    console.print(rounds)
    missing = report.get("final_test_missing")
    if missing is not None:
        console.print(f"final test evaluation of the best round: {n - len(missing)}/{n} platforms"
                      + (f" (none from {', '.join(missing)})" if missing else ""))  # fmt: skip
    kills = Table(title="kills")
    for col in ("platform", "killed in round", "killed at s", "restarted at s", "online at s", "took part again"):
        kills.add_column(col)
    for k in report["kills"]:
        kills.add_row(k["platform"], str(k["round"]), _num(k["t_kill"]), _num(k["t_restart"]), _num(k["t_online"]),
                      f"round {k['rejoined_round']}" if k["rejoined_round"] else "-")  # fmt: skip
    console.print(kills)
    mem = report["memory"]
    table = Table(title="peak memory (RSS, MiB) and CPU time per process kind")
    for col in ("process kind", "processes", "largest process", "sum of the kind", "sum, anonymous only", "CPU s"):
        table.add_column(col, justify="left" if col == "process kind" else "right")
    cpu = report["cpu_s"]
    for kind in (k for k in KINDS if k in mem["peak_process_mib"]):
        table.add_row(kind, str(mem["max_processes"][kind]), _num(mem["peak_process_mib"][kind], 0),
                      _num(mem["peak_total_mib"][kind], 0), _num(mem["peak_anon_total_mib"][kind], 0),
                      _num(cpu.get(kind), 0))  # fmt: skip
    table.add_row("all", "", "", _num(mem["peak_all_mib"], 0), _num(mem["peak_all_anon_mib"], 0),
                  _num(sum(cpu.values()), 0))  # fmt: skip
    console.print(table)
    console.print(f"lowest available memory on the machine: {_num(mem['min_available_mib'], 0)} MiB")
    console.print("nothing lost" if report["ok"] else "LOST: " + "; ".join(report["problems"]))
    return buf.getvalue()


def _num(x: float | None, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def plot(report: Mapping[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    rounds = [r for r in report["rounds"] if r["seconds"] is not None]
    ax1.bar([r["round"] for r in rounds], [r["seconds"] for r in rounds], color="tab:blue")
    for r in rounds:
        ax1.annotate(f"{r['trained']}/{report['nodes']}", (r["round"], r["seconds"]), ha="center", va="bottom")
    ax1.set_xticks([r["round"] for r in rounds])
    ax1.set(xlabel="round", ylabel="seconds", title=f"round time, {report['nodes']} nodes (label: trained)")
    timeline = report["memory_timeline"]
    for kind in KINDS:
        points = [(p["t"], p[kind] / 1024) for p in timeline if kind in p]
        if points:
            ax2.plot(*zip(*points, strict=True), label=kind)
    for k in report["kills"]:
        if k["t_kill"] is not None and report["submitted_at_s"] is not None:
            ax2.axvline(k["t_kill"] + report["submitted_at_s"], color="grey", lw=0.5, ls="--")
    ax2.set(xlabel="seconds since the benchmark began (dashed: kills)", ylabel="GiB (sum per kind)", title="RSS")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossfed bench deploy", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, required=True, help="SuperNodes (platforms) to start")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kill-fraction", type=float, default=0.2, help="share of the nodes killed during the run")
    p.add_argument("--rejoin-after-s", type=float, default=25.0, help="restart a killed node this long after")
    p.add_argument("--rejoin", choices=REJOIN_POLICIES, default="after-round",
                   help="after-round: also wait for the end of the round it died in (see restart_due)")  # fmt: skip
    p.add_argument("--secagg", action=argparse.BooleanOptionalAction, default=True, help="secure aggregation")
    p.add_argument("--seed", type=int, default=0, help="dataset and kill schedule")
    p.add_argument("--out", type=Path, help="output folder (default runs/bench-deploy-nN)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="give up on the run after this long")
    p.add_argument("--min-free-gib", type=float, default=1.0, help="stop everything below this available memory")
    p.add_argument("--poll-s", type=float, help="SuperNode idle polling of the SuperLink (default: see polling())")
    p.add_argument("--worker-poll-s", type=float, help="worker polling of its SuperNode (default: see polling())")
    return p


def run_config(nodes: int, kills: int, rounds: int, secagg: bool, seed: int, out: Path,
               overrides: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        **TINY, "num-server-rounds": rounds, "seed": seed, "secagg": secagg, "out-dir": str(out),
        "fed.min-nodes": max(2, nodes - kills), "fed.node-wait-s": 300.0, "fed.round-timeout-s": 600.0,
        **overrides,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    import psutil

    from server.outputs import to_json

    args = build_parser().parse_args(argv)
    logging.getLogger("crossfed.deploy").setLevel(logging.WARNING)  # not one line per started process
    if args.nodes < 3:
        raise SystemExit("--nodes must be at least 3")
    if args.kill_fraction and args.rejoin_after_s <= HEARTBEAT_PATIENCE_S:
        raise SystemExit(f"--rejoin-after-s must exceed the {HEARTBEAT_PATIENCE_S:.0f} s heartbeat patience")
    out = (args.out or Path("runs") / f"bench-deploy-n{args.nodes}").resolve()
    shutil.rmtree(out, ignore_errors=True)
    work, run_dir = out / "work", out / "run"
    t0 = time.monotonic()
    names = write_bench_dataset(work / "data", args.nodes, args.seed)
    plan = kill_schedule(names, args.kill_fraction, args.rounds, args.seed)
    config = run_config(args.nodes, len(plan), args.rounds, args.secagg, args.seed, run_dir, parse_overrides(args.set))
    node_extra = {"require-secagg": bool(args.secagg), "share-metrics": True}
    poll_s, worker_poll_s = polling(args.nodes, args.poll_s, args.worker_poll_s)
    fed = LoadFederation(work / "fed", names, data_dir=work / "data", node_extra=node_extra, fast_poll_s=poll_s,
                         worker_poll_s=worker_poll_s, start_timeout_s=max(90.0, 8.0 * args.nodes))  # fmt: skip
    _say(t0, f"starting {args.nodes} SuperNodes ({'secure aggregation' if args.secagg else 'clear'}, polling "
             f"{poll_s:g} s, workers {worker_poll_s:g} s) in {work}")  # fmt: skip
    sampler = MemorySampler(fed, t0, min_free_mib=args.min_free_gib * 1024)
    state, startup_s, error = RunState(), math.nan, None
    sampler.start()
    previous = signal.signal(signal.SIGTERM, _terminated)  # stop every process, as on Ctrl-C, and report
    try:
        with fed:
            startup_s = time.monotonic() - t0
            _say(t0, f"federation up: {len(fed.nodes)} SuperNodes online after {startup_s:.1f} s")
            drive(fed, run_dir, config, plan, state, rejoin_after_s=args.rejoin_after_s, rejoin=args.rejoin,
                  first_round_s=2.0 * args.nodes, timeout_s=args.timeout_s, sampler=sampler, t0=t0)  # fmt: skip
    except (BenchAborted, KeyboardInterrupt) as exc:
        error = str(exc) or "stopped: interrupted"
        _say(t0, error)
    finally:
        sampler.stop()
        signal.signal(signal.SIGTERM, previous)
    rounds = summarize_rounds(read_rounds(run_dir), state.ends, {v: k for k, v in fed.node_ids.items()}, state.kills)
    mark_rejoins(state.kills, rounds)
    untested = final_test_missing(run_dir, names)
    lost = problems(rounds, args.rounds, state.kills, state.status, untested) + ([error] if error else [])
    report = {
        "command": "crossfed bench deploy " + " ".join(sys.argv[1:] if argv is None else argv),
        "nodes": args.nodes, "secagg": args.secagg, "seed": args.seed, "config": config,
        "host": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
                 "platform": host_platform.platform(), "python": host_platform.python_version()},
        "startup_s": round(startup_s, 1), "submitted_at_s": round(state.submitted_at, 1),
        "run_s": round(state.run_s, 1), "status": state.status, "poll_s": poll_s, "worker_poll_s": worker_poll_s,
        "rejoin": args.rejoin, "rejoin_after_s": args.rejoin_after_s,
        "rounds_requested": args.rounds, "rounds_completed": sum(1 for r in rounds if not r["aborted"]),
        "rounds": rounds, "final_test_missing": untested, "kills": [dataclasses.asdict(k) for k in state.kills],
        "planned_kills": [dataclasses.asdict(k) for k in plan],
        "memory": {**sampler.peaks.as_dict(), "min_available_mib": round(sampler.min_available_mib, 1)},
        "cpu_s": sampler.cpu_seconds(), "other_processes": sorted(sampler.other_commands),
        "memory_timeline": sampler.timeline, "problems": lost, "ok": not lost,
        "server_log_tail": state.server_log_tail,
    }  # fmt: skip
    report = json.loads(to_json(report))  # NaN/inf -> null, as it will be read back
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render_tables(report)
    (out / "table.txt").write_text(text)
    plotted = plot(report, out / "rounds.png")
    print(text, flush=True)
    print(f"wrote {out / 'bench.json'}" + (f", {out / 'rounds.png'}" if plotted else ""), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
