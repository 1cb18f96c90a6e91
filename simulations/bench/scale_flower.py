"""``crossfed bench scale --engine flower``: N platforms in Flower's Simulation Engine, memory of its process tree.

This is the path users run (``crossfed simulate``, :func:`simulations.local.simulate.run_simulated_federation`:
``flwr.simulation.run_simulation`` with the Ray backend). Its memory is spread over processes: the
driver (this bench's child: the ServerApp thread and Ray's client), Ray's ``gcs_server`` and
``raylet``, Ray's helper agents, and the Ray worker processes that host the ClientApp actors
(``--cpus`` of them; each runs every platform that lands on it, one after another). So the child's
own peak RSS says little: the parent samples the RSS of every process of the child's tree every
0.5 s (:class:`deploy.loadbench.memory.MemorySampler`) and reports the peak of the sum, the peak of
the summed anonymous RSS (RSS minus file-backed pages: shared libraries such as torch's are counted
in every process's RSS, but held once), the largest single process, and the most Ray workers at once.

Budget: ``(actors + 1) x base model + N x adapter + 1.5 GiB``. Each Ray worker that hosts a
ClientApp actor caches one base model (:func:`common.modeling.load_scorer`, one per process,
reused for every platform the worker runs) and the driver holds one more (the ServerApp's scorer,
for the initial adapter and the saved one); what grows with N is one adapter state per platform
(the fused state and the clients' updates), never a base model. ``actors`` is ``--cpus`` (each
actor asks for one CPU), not N; the table's ``workers`` is what was measured: every Ray worker
process seen at once, idle ones included (they hold no model). The 1.5 GiB slack is the issue's
for everything that is not a model (Python, torch, Ray's daemons); since every worker imports
torch, the fixed part is larger here than in one process, and the table shows by how much.
``MiB/platform`` (the growth of the peak sum per added platform against the first row) is the
figure to hold against the adapter's size.

GPU memory is not sampled here: :func:`~simulations.local.simulate.run_simulated_federation` gives each
actor ``num_gpus = 0``, and Ray then hides the GPUs from it (``CUDA_VISIBLE_DEVICES=""``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy.loadbench.memory import FORK, MIB, MemorySampler

RAY_KINDS = ("driver", "worker", "raylet", "gcs", "ray-agent", FORK, "other")
WORKER = "worker"


def ray_process_kind(cmdline: Sequence[str]) -> str:
    """Which part of a Ray-backed Flower simulation a process is, from its command line.

    Ray workers rename themselves (``ray::IDLE``, ``ray::ClientAppActor.run``), and so do the
    raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``); the daemons keep their
    binaries' names; the bench's child runs ``-m simulations.bench.scale --child``.
    """
    text = " ".join(cmdline)
    if text.startswith("ray::") and text.split()[0].endswith("Agent"):
        return "ray-agent"
    if text.startswith("ray::") or "default_worker.py" in text:
        return WORKER
    if "simulations.bench.scale" in text:
        return "driver"
    for needle, kind in (("gcs_server", "gcs"), ("raylet", "raylet")):
        if any(Path(arg).name == needle for arg in cmdline[:1]) or f"/{needle} " in f"{text} ":
            return kind
    if "/ray/" in text or "ray._private" in text:  # dashboard agent, runtime-env agent, log monitor
        return "ray-agent"
    return "other"


def flower_budget(actors: int, platforms: int, base_bytes: int, adapter_bytes: int, slack: float) -> int:
    """Bytes allowed: one base per ClientApp actor and one in the driver, one adapter per platform, plus slack."""
    return int((actors + 1) * base_bytes + platforms * adapter_bytes + slack)


def per_platform_growth(results: Sequence[dict[str, Any]], key: str = "peak_sum_rss_bytes") -> list[float | None]:
    """Bytes added per extra platform, each row against the first (the smallest N measured first)."""
    if not results:
        return []
    first = results[0]
    return [
        None if r["platforms"] == first["platforms"] else (r[key] - first[key]) / (r["platforms"] - first["platforms"])
        for r in results
    ]


def run_simulated(platforms: int, cfg: Any, names: list[str], num_cpus: int) -> dict[str, Any]:
    """In the child: the federation as ``crossfed simulate`` runs it; returns round times from rounds.jsonl."""
    from common.run_files import read_rounds
    from simulations.commands.console import quiet_flower
    from simulations.local.simulate import run_simulated_federation

    quiet_flower(False)
    t0 = time.perf_counter()
    summary = run_simulated_federation(cfg, names, num_cpus=num_cpus, table=False)
    wall = time.perf_counter() - t0
    rounds = [{"round": r["round"], "seconds": r["seconds"], "failures": len(r.get("failures", []))}
              for r in read_rounds(Path(cfg.out_dir))]  # fmt: skip
    if any(r["failures"] for r in rounds) or len(summary.get("test", {})) != platforms:
        raise RuntimeError(f"the simulated federation lost platforms: {rounds}, tested {sorted(summary['test'])}")
    return {"rounds": rounds, "wall_s": wall}


def sample_child(cmd: list[str], env: dict[str, str], log_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the child ``cmd`` while sampling its whole process tree; returns (its JSON line, memory figures).

    The child's stderr (Flower's and Ray's logs) goes to ``log_path``, its stdout beside it. When the machine runs low
    on memory, or on any error here, the child's whole tree is stopped (Ray's daemons too).
    """
    from deploy.processes import Daemon

    t0 = time.monotonic()
    out_path = log_path.with_suffix(".out")  # a file, not a pipe: nothing blocks while this polls
    with log_path.open("wb") as log, out_path.open("wb") as out:  # own session: stopping it stops its tree only
        child = subprocess.Popen(cmd, stdout=out, stderr=log, env=env, start_new_session=True)
        sampler = MemorySampler(lambda: [child.pid], t0, classify=ray_process_kind, kinds=RAY_KINDS)
        sampler.start()
        try:
            while child.poll() is None:
                if sampler.low_memory:
                    raise RuntimeError(f"stopped: {sampler.low_memory}")
                time.sleep(0.5)
        finally:
            sampler.stop()
            if child.poll() is None:  # Ray's daemons do not all die with their driver: stop the whole tree
                Daemon("bench scale child", child, log_path).stop()
    if child.returncode != 0:
        raise RuntimeError(f"child failed ({child.returncode}):\n{log_path.read_text()[-3000:]}")
    peaks = sampler.peaks.as_dict()
    memory = {
        "peak_sum_rss_bytes": int(sampler.peaks.all_total * MIB),
        "peak_sum_anon_bytes": int(sampler.peaks.all_anon * MIB),
        "peak_process_rss_bytes": int(max(sampler.peaks.process.values(), default=0.0) * MIB),
        "processes_max": sum(peaks["max_processes"].values()),
        "workers": peaks["max_processes"].get(WORKER, 0),
        "by_kind": peaks, "min_available_mib": round(sampler.min_available_mib, 1),
        "other_processes": sorted(sampler.other_commands),
    }  # fmt: skip
    return json.loads(out_path.read_text().strip().splitlines()[-1]), memory


COLUMNS = ("platforms", "sum RSS MiB", "sum anon MiB", "max proc MiB", "procs", "workers", "budget MiB", "ok",
           "round s", "MiB/platform")  # fmt: skip


def format_flower_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per N (columns :data:`COLUMNS`, right-aligned to their titles) and a line on the budget."""
    rows = [
        [r["platforms"], f"{r['peak_sum_rss_bytes'] / MIB:.0f}", f"{r['peak_sum_anon_bytes'] / MIB:.0f}",
         f"{r['peak_process_rss_bytes'] / MIB:.0f}", r["processes_max"], r["workers"], f"{r['budget_bytes'] / MIB:.0f}",
         "yes" if r["within_budget"] else "NO", f"{r['round_s']:.2f}", "" if g is None else f"{g / MIB:.2f}"]
        for r, g in zip(results, per_platform_growth(results), strict=True)
    ]  # fmt: skip
    lines = [" ".join(f"{cell:>{len(title)}}" for cell, title in zip(row, COLUMNS, strict=True))
             for row in [list(COLUMNS), *rows]]  # fmt: skip
    if results:
        first = results[0]
        lines.append(f"Flower Simulation Engine (Ray), memory summed over the process tree every 0.5 s; base model "
                     f"{first['base_bytes'] / MIB:.1f} MiB, adapter {first['adapter_bytes'] / MIB:.2f} MiB; budget = "
                     f"({first['cpus']} actors (--cpus) + 1) x base + N x adapter + 1.5 GiB; MiB/platform: growth "
                     f"of the sum per added platform vs the first row")  # fmt: skip
    return "\n".join(lines)
