"""Benchmark of federation size: peak memory and round time against the number of platforms.

    python -m simulations.bench.scale --platforms 3,10,100                # tiny-random base, CPU
    python -m simulations.bench.scale --platforms 10 --base default --json
    crossfed bench scale --platforms 3,10,100 [--out DIR]                  # the same, from the CLI
    crossfed bench scale --engine flower --platforms 3,10,100 --rounds 1   # Flower's Simulation Engine (Ray)

For each N, a fresh child process (so that peak RSS is that run's own) writes N synthetic shops
(:func:`make_shops`: the embedded generator's shops, repeated under new names with their own
users and catalogues) and runs ``--rounds`` federated rounds over them with the in-process
transport (:mod:`simulations.compare.inprocess`: the comparison harness's engine, every platform in this
one process, one cached base model). It reports:

* peak RSS of the process (and peak GPU memory on CUDA) against the budget
  ``base model + N x adapter + 1.5 GiB`` (the issue's target: memory grows by adapters, not by
  base models);
* seconds per round, and the part of it spent outside local training and evaluation
  (:func:`clients.trainer.train` / :func:`clients.trainer.evaluate`, timed around the calls):
  data loading, tokenising, (de)serialising states, fusion, checkpoints. Target: <= 5 % at 10.

``--engine flower`` runs the same N shops the way ``crossfed simulate`` does, in Flower's
Simulation Engine: the same client code in a few Ray worker processes, each caching one base
model (:func:`common.modeling.load_scorer`), so there too memory should grow per worker, not per
platform. Its memory is summed over the child's whole process tree (Ray's daemons and workers
included) and checked against its own budget: :mod:`simulations.bench.scale_flower`.
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


def scale_config(platforms: int, base: str, rounds: int, overrides: dict[str, Any], seed: int,
                 tmp: Path) -> tuple[Any, list[str]]:  # fmt: skip
    """Write ``platforms`` synthetic shops under ``tmp``/data; the run's config and the platform names."""
    from common.config import AppConfig
    from common.data import write_dataset

    data_dir = tmp / "data"
    shops = make_shops(platforms, seed)
    write_dataset(data_dir, shops.values())
    cfg = AppConfig().replace(**{
        "model.base": base, "data.dir": str(data_dir), "out-dir": str(tmp / "run"), "seed": seed,
        "num-server-rounds": rounds, "fed.patience": 0, **overrides,
    })  # fmt: skip
    return cfg, sorted(shops)


def model_sizes(cfg: Any) -> tuple[int, int]:
    """Bytes of the base model's parameters and of one adapter state (what a platform sends)."""
    from common.modeling import build_scorer, get_trainable_state, load_base

    encoder, _ = load_base(cfg.model.base, cfg.seed)
    base_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
    adapter = get_trainable_state(build_scorer(cfg.model, cfg.lora, cfg.seed)[0])
    return base_bytes, sum(v.nbytes for v in adapter.values())


def run_flower_child(platforms: int, base: str, rounds: int, overrides: dict[str, Any], seed: int,
                     cpus: int) -> dict[str, Any]:  # fmt: skip
    """The child of ``--engine flower``: the federation in Flower's Simulation Engine; the parent samples memory."""
    from simulations.bench.scale_flower import run_simulated

    with tempfile.TemporaryDirectory(prefix="crossfed-scale-") as tmp:
        cfg, names = scale_config(platforms, base, rounds, overrides, seed, Path(tmp))
        base_bytes, adapter_bytes = model_sizes(cfg)
        out = run_simulated(platforms, cfg, names, cpus)
    seconds = [r["seconds"] for r in out["rounds"]]
    return {"platforms": platforms, "base": base, "engine": "flower", "cpus": cpus, **out,
            "round_s": sum(seconds) / len(seconds) if seconds else None,
            "base_bytes": base_bytes, "adapter_bytes": adapter_bytes}  # fmt: skip


def run_one(platforms: int, base: str, rounds: int, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """One federation of ``platforms`` shops in this process; returns memory and time figures."""
    with tempfile.TemporaryDirectory(prefix="crossfed-scale-") as tmp:
        cfg, names = scale_config(platforms, base, rounds, overrides, seed, Path(tmp))
        base_bytes, adapter_bytes = model_sizes(cfg)
        out = measure_federation(cfg, names)
    budget = base_bytes + platforms * adapter_bytes + BUDGET_SLACK
    return {"platforms": platforms, "base": base, "engine": "inprocess", **out, "base_bytes": base_bytes,
            "adapter_bytes": adapter_bytes, "budget_bytes": budget,
            "within_budget": out["peak_rss_bytes"] <= budget}  # fmt: skip


def measure_federation(cfg: Any, names: list[str]) -> dict[str, Any]:
    """Run ``cfg``'s federation over ``names`` in this process (the in-process transport); per-round
    seconds (train, evaluate, the rest), wall time, and peak memory (RSS; CUDA's peak when on a GPU)."""
    import numpy as np
    import torch

    from common.modeling import pick_device
    from server.federation import run_federation
    from simulations.compare.inprocess import InProcessTransport, setups_for

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
    overhead = [r["overhead_s"] / r["seconds"] for r in rounds_out]
    return {
        "rounds": rounds_out, "wall_s": wall, "peak_rss_bytes": _peak_rss(), "rss_before_federation_bytes": rss_start,
        "gpu_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "round_s": float(np.mean([r["seconds"] for r in rounds_out])) if rounds_out else None,
        "overhead_share": float(np.mean(overhead)) if overhead else None,
    }  # fmt: skip


def mean_round_split(result: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per round in local training and in evaluation (means, as ``round_s``)."""
    rounds = result["rounds"] or [{"train_s": 0.0, "evaluate_s": 0.0}]
    return {k: sum(x[k] for x in rounds) / len(rounds) for k in ("train_s", "evaluate_s")}


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(platforms: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one N in a fresh interpreter, so that each N's peak memory is its own.

    ``inprocess``: the child reports its own peak RSS. ``flower``: the child runs the simulation
    and this process samples the child's whole process tree (Ray's daemons and workers too).
    """
    sets = [x for kv in args.set or [] for x in ("--set", kv)]
    cmd = [sys.executable, "-m", "simulations.bench.scale", "--child", str(platforms), "--base", args.base,
           "--rounds", str(args.rounds), "--seed", str(args.seed), "--engine", args.engine, "--cpus", str(args.cpus),
           *sets]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.engine == "flower":
        from simulations.bench.scale_flower import flower_budget, sample_child

        with tempfile.TemporaryDirectory(prefix="crossfed-scale-log-") as tmp:
            try:
                result, memory = sample_child(cmd, env, Path(tmp) / "child.log")
            except RuntimeError as exc:
                raise RuntimeError(f"bench scale (flower) with {platforms} platforms failed: {exc}") from None
        # one ClientApp actor per Ray CPU (each asks for 1): the processes that load a base model
        budget = flower_budget(args.cpus, platforms, result["base_bytes"], result["adapter_bytes"], BUDGET_SLACK)
        return {**result, **memory, "budget_bytes": budget, "within_budget": memory["peak_sum_rss_bytes"] <= budget}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench scale with {platforms} platforms failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: Sequence[dict[str, Any]]) -> str:
    mib = 1024**2
    lines = [f"{'platforms':>9} {'peak RSS MiB':>12} {'budget MiB':>10} {'ok':>3} {'GPU MiB':>8} {'round s':>8} "
             f"{'train s':>8} {'eval s':>7} {'overhead':>8}"]  # fmt: skip
    for r in results:
        last = mean_round_split(r)
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
    parser.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess",
                        help="inprocess: every platform in one process (default); flower: Flower's Simulation "
                        "Engine as `crossfed simulate` runs it, memory summed over its Ray processes")  # fmt: skip
    parser.add_argument("--cpus", type=int, default=2, help="flower: Ray CPUs = ClientApp workers (default 2)")
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
        if args.engine == "flower":
            result = run_flower_child(args.child, args.base, args.rounds, overrides, args.seed, args.cpus)
        else:
            result = run_one(args.child, args.base, args.rounds, overrides, args.seed)
        print(json.dumps(result))
        return 0
    if args.cpus < 1:
        parser.error(f"`--cpus` must be positive, got {args.cpus}")
    counts = int_list(parser, "--platforms", args.platforms, minimum=1)
    results = run_each(counts, f"platforms ({args.engine})", lambda n: run_child(n, args))
    payload = {"command": " ".join(["crossfed bench scale", *(argv if argv is not None else sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engine": args.engine,
               "overrides": overrides, "cpu_count": os.cpu_count(), "results": results}  # fmt: skip
    if args.engine == "flower":
        from simulations.bench.scale_flower import format_flower_table

        table = format_flower_table(results)
    else:
        table = format_table(results)
    name = "bench_scale" if args.engine == "inprocess" else f"bench_scale_{args.engine}"
    emit(payload, table, args.json, args.out, name)
    return 0


def int_list(parser: argparse.ArgumentParser, flag: str, text: str, minimum: int) -> list[int]:
    """``"3,10,100"`` -> ``[3, 10, 100]``; anything else (or a value below ``minimum``) is a usage error."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"`{flag}` must be comma-separated integers, got {text!r}")
    if not values or min(values) < minimum:
        parser.error(f"`{flag}` must be at least {minimum}, got {text!r}")
    return values


def run_each(values: Sequence[int], label: str, run: Any) -> list[dict[str, Any]]:
    """``run(n)`` for each value in turn, with a progress line before and after each (on stderr)."""
    results = []
    for n in values:
        print(f"{n} {label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results.append(run(n))
        print(f"{n} {label} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return results


def emit(payload: dict[str, Any], table: str, as_json: bool, out: Path | None, name: str) -> None:
    """Print the table (or the JSON), and write ``name``.json and ``name``.txt under ``out`` when given."""
    print(json.dumps(payload, indent=2) if as_json else table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
        (out / f"{name}.txt").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
