"""Round time: simulation vs a real deployment (``crossfed bench deploy``, ``python -m deploy.bench``).

    python -m deploy.bench --out /tmp/bench --rounds 3 --modes sim,cold,warm,memory [--set key=value ...] [--trace]

With ``--nodes N``, ``crossfed bench deploy`` runs the load test instead (:mod:`deploy.loadbench`).

``sim``   ``crossfed simulate`` (Flower's simulation engine, Ray)
``cold``  Flower 1.42 defaults: TLS SuperLink + SuperNodes, ``--isolation subprocess``
          (a new ``flwr-clientapp`` process per message), Flower's 3 s idle polling
``warm``  the same TLS deployment with ``--isolation process`` + :mod:`deploy.worker`
          (one warm ClientApp process per platform) and :mod:`deploy.supernode_entry`
          (short polling); the SuperLink keeps its state in a database file, as the kits run it
``memory``  ``warm`` with the SuperLink's state in memory (no ``--database``: Flower's default; a
          restarted SuperLink then forgets registered nodes and runs)

Every mode runs the same config (default: the tiny test config with secure aggregation
on, as the README's deployment runs it: platforms with their default node_config, i.e.
secure rounds required and metrics summed securely; ``--set secagg=false`` times rounds in
the clear) on the embedded synthetic platforms, each SuperNode capped to its share of the
cores as ``crossfed deploy supernode`` does by default, and is timed from ``rounds.jsonl``: round 1 includes each side's
start-up, rounds >= 2 are steady state. Run the modes back to back on an idle machine;
on a shared one, repeat and compare medians.

``--trace`` also times every Flower HTTP call of the deployed processes (:mod:`common.rpc_trace`)
and prints, per deployed mode, the calls of rounds >= 2 summed per process kind and RPC (``rpc``
in ``bench.json``): where a deployed message's time goes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.config import TINY_PRESET, parse_overrides, toml_value
from common.rpc_trace import TRACE_ENV, format_table, read_trace, rpc_table
from common.run_files import read_rounds
from deploy.commands import REPO_ROOT, base_env
from deploy.federation import Federation

TINY = {**TINY_PRESET, "fed.patience": 0, "secagg": True}
PLATFORMS = ("app", "social_shop", "web_shop")  # the embedded synthetic dataset
CLEAR_ROUNDS = {"require-secagg": False}  # node_config that admits rounds in the clear (`--set secagg=false`)


def round_times(run_dir: Path) -> list[float]:
    rows = read_rounds(run_dir)
    bad = [r["failures"] for r in rows if r.get("failures")]
    if bad:
        raise RuntimeError(f"{run_dir}: rounds with failures: {bad}")
    return [float(r["seconds"]) for r in rows]


def run_sim(out: Path, config: dict[str, Any], rounds: int) -> dict[str, Any]:
    crossfed = shutil.which("crossfed", path=str(Path(sys.executable).parent)) or "crossfed"
    args = [crossfed, "simulate", "--out", str(out), "--rounds", str(rounds), "--cpus", "2"]
    for key, value in config.items():
        args += ["--set", f"{key}={toml_value(value)}"]
    t0 = time.monotonic()
    res = subprocess.run(args, env=base_env(), capture_output=True, text=True, cwd=REPO_ROOT)  # noqa: S603
    if res.returncode != 0:
        raise RuntimeError(f"simulation failed:\n{(res.stdout + res.stderr)[-3000:]}")
    return {"wall": time.monotonic() - t0, "rounds": round_times(out)}


def run_deployed(work: Path, config: dict[str, Any], rounds: int, mode: str, trace: bool = False) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"isolation": "process", "fast_poll_s": 0.25} if mode != "cold" else {
        "isolation": "subprocess", "fast_poll_s": None}  # fmt: skip
    kwargs["superlink_database"] = mode != "memory"
    t0 = time.monotonic()
    node_extra = {"state-dir": str(work / "private"), **({} if config.get("secagg") else CLEAR_ROUNDS)}
    env = {TRACE_ENV: str(work / "rpc")} if trace else None
    with Federation(work, PLATFORMS, node_extra=node_extra, env=env, **kwargs) as fed:
        started = time.monotonic() - t0
        result = fed.run({**config, "num-server-rounds": rounds, "out-dir": str(work / "run")}, timeout_s=1800)
        if not result.ok:
            raise RuntimeError(f"run {result.status}:\n{fed.server_log(result.run_id)[-3000:]}")
    out = {"wall": result.seconds, "startup": started, "rounds": round_times(work / "run")}
    if trace:
        out["rpc"] = rpc_table(read_trace(work / "rpc"), since=steady_start(work / "run"))
    return out


def steady_start(run_dir: Path) -> float:
    """Wall-clock time round 1 was recorded (``rounds.jsonl``'s ``time``, to the second): the steady rounds
    begin there; 0 (everything) when it is missing."""
    from datetime import datetime

    rows = read_rounds(run_dir)
    stamp = rows[0].get("time") if rows else None
    return datetime.fromisoformat(str(stamp)).timestamp() if stamp else 0.0


def summarize(name: str, res: dict[str, Any]) -> str:
    r = res["rounds"]
    steady = statistics.median(r[1:]) if len(r) > 1 else float("nan")
    extra = f", federation start-up {res['startup']:.1f} s" if "startup" in res else ""
    later = ", ".join(f"{x:.2f}" for x in r[1:])
    return (f"{name:6s} round 1 {r[0]:6.1f} s | rounds>=2 median {steady:6.2f} s ({later})"
            f" | submit->finish {res['wall']:.1f} s{extra}")  # fmt: skip


def ratio_lines(results: dict[str, Any]) -> list[str]:
    """Each deployed mode's steady rounds over the simulation's, round by round (needs ``sim`` and 2+ rounds)."""
    sim = results.get("sim", {}).get("rounds", [])
    lines = []
    for mode, res in results.items():
        if mode == "sim" or len(sim) < 2 or len(res["rounds"]) < 2:
            continue
        pairs = list(zip(res["rounds"][1:], sim[1:], strict=False))
        per_round = ", ".join(f"round {i}: {d / s:.1f}x" for i, (d, s) in enumerate(pairs, start=2))
        median = statistics.median(res["rounds"][1:]) / statistics.median(sim[1:])
        lines.append(f"{mode} / sim: {per_round}; rounds>=2 median {median:.1f}x")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m deploy.bench",
        description=__doc__.split("\n")[0],
        epilog="With --nodes N: the load benchmark, see `crossfed bench deploy --nodes N -h`.",
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="sim,cold,warm")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override")
    p.add_argument("--trace", action="store_true", help="time every Flower HTTP call of the deployed modes")
    args = p.parse_args(argv)
    config = {**TINY, **parse_overrides(args.set)}
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        out = args.out / mode
        shutil.rmtree(out, ignore_errors=True)
        if mode == "sim":
            results[mode] = run_sim(out, config, args.rounds)
        elif mode in ("cold", "warm", "memory"):
            results[mode] = run_deployed(out, config, args.rounds, mode, trace=args.trace)
        else:
            raise SystemExit(f"unknown mode {mode!r} (sim, cold, warm, memory)")
        print(summarize(mode, results[mode]), flush=True)
        if "rpc" in results[mode]:
            print(f"{mode}: Flower HTTP calls in rounds >= 2 (all processes of a kind together)")
            print(format_table(results[mode]["rpc"]), flush=True)
    for line in ratio_lines(results):
        print(line, flush=True)
    (args.out / "bench.json").write_text(json.dumps({"config": config, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
