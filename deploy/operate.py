"""What an operator asks of a running federation: did my run succeed, what is going on now, stop it.

Flower 1.42's ``flwr run --stream`` exits 0 whatever became of the run, and ``flwr
supernode ls`` shows node ids only. :func:`run_outcome` turns a finished run into an exit
code and one reason line; :func:`collect_status` gathers runs, platforms (named from
:mod:`deploy.book`) and the latest round of each run whose folder is readable here.

One run at a time: two runs on one federation would compete for the same platforms (each
platform's worker takes one message at a time, so both runs slow down and time out), so
:func:`refuse_if_active` stops a second submit and :func:`stop_runs` ends a run through
the SuperLink (``flwr stop``), leaving its last completed round's checkpoint to resume from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.run_files import COMPLETED as RUN_COMPLETED
from common.run_files import ROUNDS_FILE, RunFileError, describe_lost, lost_rounds, read_rounds, read_summary
from deploy.book import node_names, read_book
from deploy.errors import DeployError
from deploy.flwr_cli import (
    COMPLETED,
    Connection,
    is_active,
    list_nodes,
    list_runs,
    run_log,
    run_status,
    stop_run,
    wait_run,
)

# a ServerApp log line that says why a run failed: the exception that ended it
REASON = re.compile(r"\b(\w+Error: .*)")


# ---------------------------------------------------------------------------- a run's outcome


def run_outcome(run_id: int, record: Mapping[str, Any], conn: Connection, env: Mapping[str, str]) -> tuple[int, str]:
    """(exit code, one line) for a finished run: 0 only for ``finished:completed``."""
    status = str(record.get("status", "?"))
    written = run_summary(run_out_dir(conn, run_id))  # the run's own word, when its folder is readable here
    if status == COMPLETED and written.get("status", RUN_COMPLETED) == RUN_COMPLETED:
        return 0, f"run {run_id} completed"
    if written.get("lost_rounds"):  # degraded, or failed with nothing fused: which rounds and why
        return 1, f"run {run_id} {status}: {written.get('status')}: {describe_lost(written['lost_rounds'])}"
    reason = failure_reason(run_log(run_id, conn, env)) or str(record.get("status-details") or "no reason given")
    return 1, f"run {run_id} {status}: {reason}"


def run_summary(out_dir: str | None) -> dict[str, Any]:
    """The run's summary.json (status, lost rounds...) when its folder is readable here, else {}."""
    if not out_dir:
        return {}
    try:
        return read_summary(Path(out_dir).expanduser()) or {}
    except (OSError, RunFileError):
        return {}


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
    runs = []
    for record in sorted(list_runs(conn, env), key=lambda r: str(r.get("pending-at") or ""), reverse=True)[:limit]:
        run_id = str(record.get("run-id"))
        out_dir = run_out_dir(conn, run_id)
        runs.append({
            "run-id": int(run_id), "status": record.get("status"), "elapsed": record.get("elapsed"),
            "out-dir": out_dir, **latest_round(out_dir),
        })  # fmt: skip
    return {"federation": conn.name, "superlink": conn.address, "platforms": nodes, "runs": runs}


def run_out_dir(conn: Connection, run_id: int | str) -> str | None:
    """The run's ``out-dir`` as ``deploy submit`` recorded it in the book (None for a run submitted otherwise)."""
    runs_book = read_book(conn.flwr_home).get(conn.name, {}).get("runs", {})
    return (runs_book.get(str(run_id)) or {}).get("out-dir")


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
    lost = lost_rounds(rows)
    if lost:
        out["lost-rounds"] = [r["round"] for r in lost]
    written = run_summary(out_dir)
    if written.get("status"):  # the run has ended: completed, degraded or failed
        out["run-status"] = written["status"]
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
        if run.get("run-status") or run.get("lost-rounds"):
            lost = run.get("lost-rounds") or []
            head += f"  {run.get('run-status', 'running')}" + (f": lost round(s) {', '.join(map(str, lost))}"
                                                              if lost else "")  # fmt: skip
        lines.append(head)
        lines += [f"    failure: {f}" for f in run.get("failures", [])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- one run at a time, stop


def active_runs(conn: Connection, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The runs that have not finished (pending, starting, running), oldest first."""
    return sorted((r for r in list_runs(conn, env) if is_active(r)), key=lambda r: str(r.get("pending-at") or ""))


def run_label(record: Mapping[str, Any]) -> str:
    """``run 123 (running since 2026-12-06 23:40:01Z)``: its status and when it entered it."""
    status = str(record.get("status", "?"))
    since = record.get(f"{status.split(':', 1)[0]}-at") or record.get("pending-at")
    return f"run {record.get('run-id')} ({status}" + (f" since {since})" if since else ")")


def refuse_if_active(conn: Connection, env: Mapping[str, str]) -> None:
    """DeployError naming the active run(s) of this federation, if any (``deploy submit`` without --replace)."""
    active = active_runs(conn, env)
    if active:
        names = ", ".join(run_label(r) for r in active)
        raise DeployError(
            f"{names} is active on federation {conn.name}; one run at a time (two would compete for the same "
            f"platforms): wait for it, stop it (`crossfed deploy stop --federation {conn.name}`) or submit with "
            "--replace"
        )


def stop_runs(conn: Connection, env: Mapping[str, str], run_id: int | None = None,
              timeout_s: float = 120.0) -> list[str]:  # fmt: skip
    """Stop ``run_id`` (default: every active run) and wait until the SuperLink says it finished.

    One line per run for the operator: how it ended and, when its run folder is readable here,
    the last completed round its checkpoint holds and how to resume from it. A run stopped
    mid-round loses only that round: the checkpoint is written after each completed round.
    """
    if run_id is None:
        targets = [int(r["run-id"]) for r in active_runs(conn, env)]
        if not targets:
            return [f"no active run on federation {conn.name}: nothing to stop"]
    else:
        record = run_status(run_id, conn, env)
        if not is_active(record):
            return [f"run {run_id} already {record.get('status')}: nothing to stop"]
        targets = [run_id]
    lines = []
    for target in targets:
        stop_run(target, conn, env)
        record = wait_run(target, conn, env, timeout_s=timeout_s, poll_s=0.5)
        lines.append(f"run {target} {record.get('status')}" + resume_hint(run_out_dir(conn, target)))
    return lines


def resume_hint(out_dir: str | None) -> str:
    """``; its checkpoint holds round 2 of ...: resume with ...`` when the run folder is readable here."""
    from server.checkpoint import CheckpointError, saved_round  # numpy: only when a run is stopped

    if not out_dir:
        return ""
    try:
        done = saved_round(Path(out_dir))
    except (OSError, CheckpointError) as exc:
        return f"; its checkpoint is unreadable here ({exc})"
    if done is None:
        return f"; no completed round in {out_dir} (a new submit starts it over)"
    return (f"; its checkpoint in {out_dir} holds round {done}: resume with the same run config "
            f"(out-dir='{out_dir}'), fed.resume = true")  # fmt: skip
