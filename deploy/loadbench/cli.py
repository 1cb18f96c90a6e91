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
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config import parse_overrides
from common.run_files import read_rounds, to_json
from deploy.bench import TINY
from deploy.federation import Federation
from deploy.loadbench.dataset import write_bench_dataset
from deploy.loadbench.driver import BenchAborted, RunState, drive, polling, say
from deploy.loadbench.kills import HEARTBEAT_PATIENCE_S, REJOIN_POLICIES, kill_schedule
from deploy.loadbench.memory import MemorySampler, federation_roots
from deploy.loadbench.report import plot, render_tables
from deploy.loadbench.rounds import final_test_missing, mark_rejoins, problems, summarize_rounds


def _terminated(signum: int, frame: object) -> None:
    raise BenchAborted("stopped: SIGTERM")


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
    fed = Federation(work / "fed", names, data_dir=work / "data", node_extra=node_extra, fast_poll_s=poll_s,
                         worker_poll_s=worker_poll_s, start_timeout_s=max(90.0, 8.0 * args.nodes))  # fmt: skip
    say(t0, f"starting {args.nodes} SuperNodes ({'secure aggregation' if args.secagg else 'clear'}, polling "
             f"{poll_s:g} s, workers {worker_poll_s:g} s) in {work}")  # fmt: skip
    sampler = MemorySampler(lambda: federation_roots(fed), t0, min_free_mib=args.min_free_gib * 1024)
    state, startup_s, error = RunState(), math.nan, None
    sampler.start()
    previous = signal.signal(signal.SIGTERM, _terminated)  # stop every process, as on Ctrl-C, and report
    try:
        with fed:
            startup_s = time.monotonic() - t0
            say(t0, f"federation up: {len(fed.nodes)} SuperNodes online after {startup_s:.1f} s")
            drive(fed, run_dir, config, plan, state, rejoin_after_s=args.rejoin_after_s, rejoin=args.rejoin,
                  first_round_s=2.0 * args.nodes, timeout_s=args.timeout_s, sampler=sampler, t0=t0)  # fmt: skip
    except (BenchAborted, KeyboardInterrupt) as exc:
        error = str(exc) or "stopped: interrupted"
        say(t0, error)
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
