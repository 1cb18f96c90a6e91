"""What an operator asks of a running federation: did my run succeed, what is going on now.

Flower 1.42's ``flwr run --stream`` exits 0 whatever became of the run, and ``flwr
supernode ls`` shows node ids only. :func:`run_outcome` turns a finished run into an exit
code and one reason line; :func:`collect_status` gathers runs, platforms (named from
:mod:`deploy.book`) and the latest round of each run whose folder is readable here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.run_files import ROUNDS_FILE, read_rounds
from deploy.book import node_names, read_book
from deploy.flwr_cli import COMPLETED, Connection, flwr_cli, flwr_json, list_nodes, run_log

# a ServerApp log line that says why a run failed: the exception that ended it
REASON = re.compile(r"\b(\w+Error: .*)")


# ---------------------------------------------------------------------------- a run's outcome


def run_outcome(run_id: int, record: Mapping[str, Any], conn: Connection, env: Mapping[str, str]) -> tuple[int, str]:
    """(exit code, one line) for a finished run: 0 only for ``finished:completed``."""
    status = str(record.get("status", "?"))
    if status == COMPLETED:
        return 0, f"run {run_id} completed"
    reason = failure_reason(run_log(run_id, conn, env)) or str(record.get("status-details") or "no reason given")
    return 1, f"run {run_id} {status}: {reason}"


def failure_reason(log_text: str) -> str:
    """The last error line of a ServerApp log (the exception that ended it), or ''."""
    found = REASON.findall(log_text)
    return found[-1].strip() if found else ""


# ---------------------------------------------------------------------------- status


def collect_status(conn: Connection, env: Mapping[str, str], limit: int = 5) -> dict[str, Any]:
    """Runs (latest first, with their latest round when the run folder is readable) and platforms."""
    names = node_names(conn.flwr_home, conn.name)
    nodes = [
        {"platform": names.get(str(n["node-id"]), f"node {n['node-id']}"), "node-id": int(n["node-id"]),
         "status": n.get("status"), "online-at": n.get("online-at"), "offline-at": n.get("offline-at")}
        for n in list_nodes(conn, env)
    ]  # fmt: skip
    listed = flwr_json(flwr_cli(["ls", conn.name, "--format", "json"], env, check=False), "listing runs")
    runs_book = read_book(conn.flwr_home).get(conn.name, {}).get("runs", {})
    runs = []
    for record in sorted(listed.get("runs", []), key=lambda r: str(r.get("pending-at") or ""), reverse=True)[:limit]:
        run_id = str(record.get("run-id"))
        out_dir = (runs_book.get(run_id) or {}).get("out-dir")
        runs.append({
            "run-id": int(run_id), "status": record.get("status"), "elapsed": record.get("elapsed"),
            "out-dir": out_dir, **latest_round(out_dir),
        })  # fmt: skip
    return {"federation": conn.name, "superlink": conn.address, "platforms": nodes, "runs": runs}


def latest_round(out_dir: str | None) -> dict[str, Any]:
    """Current round, its mean metrics and failures from ``<out-dir>/rounds.jsonl``, if readable."""
    if not out_dir:
        return {}
    run_dir = Path(out_dir).expanduser()
    try:
        if not (run_dir / ROUNDS_FILE).is_file():
            return {}
        rows = read_rounds(run_dir)
    except OSError:
        return {}
    last = rows[-1] if rows else None
    if not isinstance(last, dict):
        return {"round": 0}
    out: dict[str, Any] = {"round": last.get("round"), "failures": list(last.get("failures") or [])}
    if last.get("aborted"):
        out["failures"].append(f"round aborted: {last['aborted']}")
    mean = last.get("mean") or {}
    out["metrics"] = {k: v for k, v in mean.items() if k.startswith("valid.") and not k.endswith((".n", "-users"))}
    if last.get("cohort") is not None:
        out["cohort"] = last["cohort"]
    return out


def format_status(status: Mapping[str, Any]) -> str:
    """The status as a few lines for a person."""
    lines = [f"federation {status['federation']} at {status['superlink']}"]
    platforms: Sequence[Mapping[str, Any]] = status["platforms"]
    online = [p for p in platforms if p["status"] == "online"]
    lines.append(f"platforms: {len(online)} of {len(platforms)} online")
    for p in sorted(platforms, key=lambda p: str(p["platform"])):
        since = p.get("online-at") if p["status"] == "online" else p.get("offline-at")
        lines.append(f"  {p['platform']:<20} node {p['node-id']:<22} {p['status']:<10} {since or ''}".rstrip())
    lines.append("runs (latest first):" if status["runs"] else "runs: none")
    for run in status["runs"]:
        elapsed = run.get("elapsed")
        took = f"{elapsed:.0f} s" if isinstance(elapsed, int | float) else str(elapsed or "")
        head = f"  run {run['run-id']}  {run['status']}  {took}".rstrip()
        if run.get("round") is not None:
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(run.get("metrics", {}).items()) if v is not None)
            head += f"  round {run['round']}" + (f"  {metrics}" if metrics else "")
        lines.append(head)
        lines += [f"    failure: {f}" for f in run.get("failures", [])]
    return "\n".join(lines)
