"""A load run's report for people: the console tables and ``rounds.png`` (round times, memory over time)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy.loadbench.memory import KINDS


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
