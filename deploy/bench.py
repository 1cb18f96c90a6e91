"""Round time: simulation vs a real deployment (``crossfed bench deploy``, ``python -m deploy.bench``).

    python -m deploy.bench --out /tmp/bench --rounds 3 --modes sim,cold,warm [--set key=value ...]

With ``--nodes N``, ``crossfed bench deploy`` runs the load test instead (:mod:`deploy.loadbench`).

``sim``   ``crossfed simulate`` (Flower's simulation engine, Ray)
``cold``  Flower 1.42 defaults: TLS SuperLink + SuperNodes, ``--isolation subprocess``
          (a new ``flwr-clientapp`` process per message), Flower's 3 s idle polling
``warm``  the same TLS deployment with ``--isolation process`` + :mod:`deploy.worker`
          (one warm ClientApp process per platform) and :mod:`deploy.supernode_entry`
          (short polling)

Every mode runs the same config (default: the tiny test config with secure aggregation
on, as the README's deployment runs it: platforms with their default node_config, i.e.
secure rounds required and metrics summed securely; ``--set secagg=false`` times rounds in
the clear) on the embedded synthetic platforms, each SuperNode capped to its share of the
cores as ``crossfed deploy supernode`` does by default, and is timed from ``rounds.jsonl``: round 1 includes each side's
start-up, rounds >= 2 are steady state. Run the modes back to back on an idle machine;
on a shared one, repeat and compare medians.
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


def run_deployed(work: Path, config: dict[str, Any], rounds: int, warm: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"isolation": "process", "fast_poll_s": 0.25} if warm else {
        "isolation": "subprocess", "fast_poll_s": None}  # fmt: skip
    t0 = time.monotonic()
    node_extra = {"state-dir": str(work / "private"), **({} if config.get("secagg") else CLEAR_ROUNDS)}
    with Federation(work, PLATFORMS, node_extra=node_extra, **kwargs) as fed:
        started = time.monotonic() - t0
        result = fed.run({**config, "num-server-rounds": rounds, "out-dir": str(work / "run")}, timeout_s=1800)
        if not result.ok:
            raise RuntimeError(f"run {result.status}:\n{fed.server_log(result.run_id)[-3000:]}")
    return {"wall": result.seconds, "startup": started, "rounds": round_times(work / "run")}


def summarize(name: str, res: dict[str, Any]) -> str:
    r = res["rounds"]
    steady = statistics.median(r[1:]) if len(r) > 1 else float("nan")
    extra = f", federation start-up {res['startup']:.1f} s" if "startup" in res else ""
    later = ", ".join(f"{x:.2f}" for x in r[1:])
    return (f"{name:5s} round 1 {r[0]:6.1f} s | rounds>=2 median {steady:6.2f} s ({later})"
            f" | submit->finish {res['wall']:.1f} s{extra}")  # fmt: skip


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
    args = p.parse_args(argv)
    config = {**TINY, **parse_overrides(args.set)}
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        out = args.out / mode
        shutil.rmtree(out, ignore_errors=True)
        if mode == "sim":
            results[mode] = run_sim(out, config, args.rounds)
        elif mode in ("cold", "warm"):
            results[mode] = run_deployed(out, config, args.rounds, warm=mode == "warm")
        else:
            raise SystemExit(f"unknown mode {mode!r} (sim, cold, warm)")
        print(summarize(mode, results[mode]), flush=True)
    (args.out / "bench.json").write_text(json.dumps({"config": config, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
