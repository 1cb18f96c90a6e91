"""Benchmark of federation size: peak memory and round time against the number of platforms.

    python -m simulations.bench_scale --platforms 3,10,100                # tiny-random base, CPU
    python -m simulations.bench_scale --platforms 10 --base default --json
    crossfed bench scale --platforms 3,10,100 [--out DIR]                  # the same, from the CLI

For each N, a fresh child process (so that peak RSS is that run's own) writes N synthetic shops
(:func:`make_shops`: the embedded generator's shops, repeated under new names with their own
users and catalogues) and runs ``--rounds`` federated rounds over them with the in-process
transport (:mod:`simulations.inprocess`: the comparison harness's engine, every platform in this
one process, one cached base model). It reports:

* peak RSS of the process (and peak GPU memory on CUDA) against the budget
  ``base model + N x adapter + 1.5 GiB`` (the issue's target: memory grows by adapters, not by
  base models);
* seconds per round, and the part of it spent outside local training and evaluation
  (:func:`clients.trainer.train` / :func:`clients.trainer.evaluate`, timed around the calls):
  data loading, tokenising, (de)serialising states, fusion, checkpoints. Target: <= 5 % at 10.

The Flower simulation (``crossfed simulate``) runs the same client code in a few Ray worker
processes; each worker caches one base model (:func:`common.modeling.load_scorer`), so there
too memory grows per worker, not per platform.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GIB = 1024**3
BUDGET_SLACK = 1.5 * GIB
OVERHEAD_GOAL = 0.05


def make_shops(count: int, seed: int = 0, users: int = 30) -> dict[str, Any]:
    """``count`` synthetic shops in memory: the generator's shop kinds, cycled, each with its own ids."""
    from common.synthetic import SHOPS, ShopSpec, SyntheticSpec, make_synthetic

    shops = tuple(ShopSpec(f"shop{i:03d}", users, SHOPS[i % len(SHOPS)].items, SHOPS[i % len(SHOPS)].categories)
                  for i in range(count))  # fmt: skip
    return make_synthetic(seed, SyntheticSpec(shops=shops))


def _timed_calls(timings: dict[str, float]) -> None:
    """Accumulate the seconds spent inside local training and evaluation (as :mod:`clients.tasks` calls them)."""
    import clients.tasks as tasks

    def wrap(name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

        return timed

    tasks.train = wrap("train", tasks.train)
    tasks.evaluate = wrap("evaluate", tasks.evaluate)


def run_one(platforms: int, base: str, rounds: int, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """One federation of ``platforms`` shops in this process; returns memory and time figures."""
    import numpy as np
    import torch

    from common.config import AppConfig
    from common.data import write_dataset
    from common.modeling import build_scorer, get_trainable_state, load_base, pick_device
    from server.federation import run_federation
    from simulations.inprocess import InProcessTransport, setups_for

    with tempfile.TemporaryDirectory(prefix="crossfed-scale-") as tmp:
        data_dir = Path(tmp) / "data"
        shops = make_shops(platforms, seed)
        write_dataset(data_dir, shops.values())
        names = sorted(shops)
        del shops
        cfg = AppConfig().replace(**{
            "model.base": base, "data.dir": str(data_dir), "out-dir": str(Path(tmp) / "run"), "seed": seed,
            "num-server-rounds": rounds, "fed.patience": 0, **overrides,
        })  # fmt: skip
        encoder, _ = load_base(base, seed)
        base_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
        adapter_bytes = sum(v.nbytes for v in get_trainable_state(build_scorer(cfg.model, cfg.lora, seed)[0]).values())
        rss_start = _peak_rss()
        timings: dict[str, float] = {}
        _timed_calls(timings)
        device = pick_device()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rounds_out: list[dict[str, Any]] = []

        class TimedTransport(InProcessTransport):
            def train_round(self, state, cfg, rnd):  # type: ignore[no-untyped-def]
                timings.clear()
                self._t0 = time.perf_counter()
                return super().train_round(state, cfg, rnd)

            def evaluate_round(self, state, cfg, rnd, splits):  # type: ignore[no-untyped-def]
                out = super().evaluate_round(state, cfg, rnd, splits)
                if "valid" in splits:  # a round's end (the final test pass is not a round)
                    wall = time.perf_counter() - self._t0
                    local = timings.get("train", 0.0) + timings.get("evaluate", 0.0)
                    rounds_out.append({"round": rnd, "seconds": wall, "train_s": timings.get("train", 0.0),
                                       "evaluate_s": timings.get("evaluate", 0.0),
                                       "overhead_s": wall - local})  # fmt: skip
                return out

        t0 = time.perf_counter()
        run_federation(TimedTransport(setups_for(cfg, names)), cfg)
        wall = time.perf_counter() - t0
        peak = _peak_rss()
        budget = base_bytes + platforms * adapter_bytes + BUDGET_SLACK
        overhead = [r["overhead_s"] / r["seconds"] for r in rounds_out]
        return {
            "platforms": platforms, "base": base, "rounds": rounds_out, "wall_s": wall,
            "peak_rss_bytes": peak, "rss_before_federation_bytes": rss_start,
            "gpu_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "base_bytes": base_bytes, "adapter_bytes": adapter_bytes, "budget_bytes": budget,
            "within_budget": peak <= budget,
            "round_s": float(np.mean([r["seconds"] for r in rounds_out])),
            "overhead_share": float(np.mean(overhead)) if overhead else None,
        }  # fmt: skip


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(platforms: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`run_one` in a fresh interpreter, so that each N's peak RSS is its own."""
    sets = [x for kv in args.set or [] for x in ("--set", kv)]
    cmd = [sys.executable, "-m", "simulations.bench_scale", "--child", str(platforms), "--base", args.base,
           "--rounds", str(args.rounds), "--seed", str(args.seed), *sets]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench scale with {platforms} platforms failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: Sequence[dict[str, Any]]) -> str:
    mib = 1024**2
    lines = [f"{'platforms':>9} {'peak RSS MiB':>12} {'budget MiB':>10} {'ok':>3} {'GPU MiB':>8} {'round s':>8} "
             f"{'train s':>8} {'eval s':>7} {'overhead':>8}"]  # fmt: skip
    for r in results:
        rounds = r["rounds"] or [{"train_s": 0.0, "evaluate_s": 0.0}]
        last = {k: sum(x[k] for x in rounds) / len(rounds) for k in ("train_s", "evaluate_s")}  # means, as round_s
        gpu = f"{r['gpu_peak_bytes'] / mib:8.0f}" if r["gpu_peak_bytes"] is not None else "     n/a"
        share = f"{100 * r['overhead_share']:7.1f}%" if r["overhead_share"] is not None else "     n/a"
        lines.append(f"{r['platforms']:>9} {r['peak_rss_bytes'] / mib:>12.0f} {r['budget_bytes'] / mib:>10.0f} "
                     f"{'yes' if r['within_budget'] else 'NO':>3} {gpu} {r['round_s']:>8.2f} {last['train_s']:>8.2f} "
                     f"{last['evaluate_s']:>7.2f} {share}")  # fmt: skip
    if results:
        r = results[0]
        lines.append(f"base model {r['base_bytes'] / mib:.1f} MiB, adapter {r['adapter_bytes'] / mib:.2f} MiB; "
                     f"budget = base + N x adapter + 1.5 GiB; overhead = round - (train + evaluate), goal <= "
                     f"{100 * OVERHEAD_GOAL:.0f}% at 10")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crossfed bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--platforms", default="3,10,100", help="comma-separated platform counts (default 3,10,100)")
    parser.add_argument("--base", default="tiny-random", help="base model: tiny-random (default), default, a path")
    parser.add_argument("--rounds", type=int, default=2, help="federated rounds per run (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="run-config key, e.g. train.max-examples=64"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON payload instead of the table")
    parser.add_argument("--out", type=Path, help="also write bench_scale.json and bench_scale.txt here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from common.config import parse_overrides

    overrides = parse_overrides(args.set or [])
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.base, args.rounds, overrides, args.seed)))
        return 0
    try:
        counts = [int(x) for x in args.platforms.split(",") if x.strip()]
    except ValueError:
        parser.error(f"`--platforms` must be comma-separated integers, got {args.platforms!r}")
    if not counts or min(counts) < 1:
        parser.error(f"`--platforms` must be positive, got {args.platforms!r}")
    results = []
    for n in counts:
        print(f"{n} platforms ...", file=sys.stderr)
        results.append(run_child(n, args))
    payload = {"command": " ".join(["crossfed bench scale", *(argv if argv is not None else sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "overrides": overrides,
               "cpu_count": os.cpu_count(), "results": results}  # fmt: skip
    emit(payload, format_table(results), args.json, args.out, "bench_scale")
    return 0


def emit(payload: dict[str, Any], table: str, as_json: bool, out: Path | None, name: str) -> None:
    """Print the table (or the JSON), and write ``name``.json and ``name``.txt under ``out`` when given."""
    print(json.dumps(payload, indent=2) if as_json else table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
        (out / f"{name}.txt").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
