"""``crossfed``: everything that is not a single ``flwr run``.

    crossfed prepare movielens --src ../shared/data/ml-100k --out data/ml100k [--split genre|users]
    crossfed simulate [--data DIR] --out RUN [--rounds R --max-users N --set key=value ...] [--continue-from RUN]
    crossfed recommend | score --run RUN --platform P --user U ... ; crossfed export | serve --run RUN ...
    crossfed compare --data DIR --out RUN --seeds 3 [--size ci|full]
    crossfed tallrec --src ../shared/data/tallrec-movie --out RUN
    crossfed bench secagg [--quick] | crossfed bench deploy [--nodes 30] | crossfed bench recommend [--items N]
    crossfed bench train [--quick] [--json] | crossfed bench scale [--platforms 3,10,100]
    crossfed bench batch [--batches 64,128,256,512] [--lr-rule sqrt] [--quick] [--json] [--out DIR]
    crossfed bench catalogue [--items 1682,10000] [--words 300] [--quick] [--json] [--out DIR]
    crossfed deploy ca | node-key | register | superlink | supernode | submit
    crossfed stop-local                  (the flower-superlink/-superexec daemons `flwr run` left)

Errors a user can fix (bad data, bad config, missing model) print ONE line and exit 2; the first
Ctrl-C prints one line and exits 130 (``simulations.commands.console``). ``--verbose`` shows library logs.
Only the invoked command's module is imported, so ``--help`` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.config import AppConfig, ConfigError, parse_overrides
from common.files import InputFileError
from simulations.commands import console
from simulations.commands.use import USER_ERRORS as USE_ERRORS
from simulations.commands.use import add_parsers as add_use_parsers
from simulations.compare.arms import SIZES
from simulations.datasets.movielens import SPLITS as MOVIELENS_SPLITS

USER_ERRORS = (InputFileError, ConfigError, FileNotFoundError)  # InputFileError: DatasetError's base too
# Errors of modules that load torch, Flower or cryptography: looked up only once a command has loaded them.
LAZY_ERRORS = (
    ("common.modeling", "ModelLoadError"), ("server.checkpoint", "CheckpointError"),
    ("deploy.certs", "CertError"), ("deploy.errors", "DeployError"),
    ("common.secagg.errors", "SecAggError"),  # with the three above = deploy.cli.USER_ERRORS (a roster, a key)
)  # fmt: skip
# Commands whose parsers live in heavy modules: mounted only when invoked (a stub with its help otherwise).
LAZY_COMMANDS = {
    "compare": ("simulations.compare.command", "add_compare_parser",
                "local vs federated vs pooled (+ levers, baselines)"),
    "tallrec": ("simulations.compare.tallrec", "add_tallrec_parser",
                "train + score our model on the TALLRec movie split"),
    "deploy": ("deploy.cli", "add_deploy_parser", "run the federation on real machines (Flower Deployment Engine)"),
}  # fmt: skip
SUPERVISED = frozenset({"simulate", "compare", "tallrec", "bench"})  # long commands: a child process, one Ctrl-C


def simulate_config(args: argparse.Namespace) -> AppConfig:
    """The run's config: defaults (or, with ``--continue-from``, the old run's config) + flags + ``--set``."""
    overrides: dict[str, Any] = dict(SIZES[args.size]) if getattr(args, "size", None) else {}
    overrides.update(parse_overrides(args.set or []))  # --set wins over the size preset
    if args.data:
        overrides["data.dir"] = str(Path(args.data).resolve())
    overrides["out-dir"] = str(Path(args.out).resolve())
    if getattr(args, "tensorboard", None):
        overrides["tensorboard-dir"] = str(Path(args.tensorboard).resolve())
    for flag, key in (("rounds", "num-server-rounds"), ("max_users", "data.max-users"), ("seed", "seed"),
                      ("base_model", "model.base"), ("secagg", "secagg")):  # fmt: skip
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if not getattr(args, "continue_from", None):
        return AppConfig().replace(**overrides)
    from server.warm_start import read_finished_run

    old_dir = Path(args.continue_from).resolve()
    old = read_finished_run(old_dir)
    added = int(overrides.get("num-server-rounds", AppConfig().num_server_rounds))  # --rounds = rounds to add
    # Simulated platforms keep private parameters under <run>/private: the folder as it is now, even if moved.
    overrides.update({"num-server-rounds": int(old["rounds_run"]) + added, "fed.warm-start": str(old_dir),
                      "fed.warm-start-round": 0})  # fmt: skip
    return AppConfig.from_flat({**old["config"], **overrides})


def cmd_simulate(args: argparse.Namespace) -> int:
    from common.run_files import describe_lost
    from simulations.local.simulate import compare_with_local, run_simulated_federation, validate_inputs

    console.quiet_flower(args.verbose)  # Flower is imported now: its handler exists
    cfg = simulate_config(args)
    platforms = validate_inputs(cfg)  # fails fast, before anything is written
    baseline = not cfg.data.dir if args.baseline is None else args.baseline
    summary = run_simulated_federation(cfg, platforms, num_cpus=args.cpus, table=not baseline)
    if summary.get("lost_rounds"):  # degraded (or failed: nothing fused), as a deployed run would end
        print(f"crossfed: run {summary.get('status')}: {describe_lost(summary['lost_rounds'])}; summary: "
              f"{Path(cfg.out_dir) / 'summary.json'}", file=sys.stderr)  # fmt: skip
        return 1
    if baseline:
        compare_with_local(cfg, platforms, summary)
    print(f"summary: {Path(cfg.out_dir) / 'summary.json'}  adapter: {summary['adapter_dir']}")
    return 0


def cmd_stop_local(args: argparse.Namespace) -> int:
    from simulations.local.flwr_daemons import stop_local_daemons

    stopped = stop_local_daemons(args.flwr_home)
    for line in stopped:
        print(line)
    if not stopped:
        print("no flower-superlink/flower-superexec started by `flwr run` for this FLWR_HOME is running")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from common.splits import SplitConfig, split_dataset

    if args.source == "synthetic":
        from common.synthetic import write_synthetic

        dataset = write_synthetic(Path(args.out), seed=args.seed, overwrite=args.overwrite)
    else:
        from simulations.datasets.movielens import convert_movielens

        if not args.src:
            raise ConfigError("`crossfed prepare movielens` needs --src (the ml-100k folder)")
        dataset = convert_movielens(
            Path(args.src), Path(args.out), overwrite=args.overwrite, split=args.split, split_seed=args.split_seed
        )
    # the data as rated: a run's sampled unrated train negatives (data.train-unseen-negatives) are not data
    cfg = SplitConfig(like_threshold=args.like_threshold, train_unseen_negatives=0)
    for name, splits in split_dataset(dataset, cfg).items():
        stats = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in splits.stats().items())
        print(f"{name}: {stats}")
    print(f"wrote {len(dataset)} platforms to {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "secagg":
        from simulations.bench.secagg import main as bench_main

        return bench_main(args.rest) or 0
    if args.what == "recommend":
        from simulations.bench.recommend import main as recommend_bench_main

        return recommend_bench_main(args.rest) or 0
    if args.what == "deploy" and any(a == "--nodes" or a.startswith("--nodes=") for a in args.rest):
        from deploy.loadbench.cli import main as load_bench_main  # the load test

        return load_bench_main(args.rest) or 0
    if args.what == "deploy":
        from deploy.bench import main as deploy_bench_main

        return deploy_bench_main(args.rest) or 0
    if args.what == "train":
        from simulations.bench.train import main as train_bench_main

        return train_bench_main(args.rest) or 0
    if args.what == "scale":
        from simulations.bench.scale import main as scale_bench_main

        return scale_bench_main(args.rest) or 0
    if args.what == "batch":
        from simulations.bench.batch import main as batch_bench_main

        return batch_bench_main(args.rest) or 0
    if args.what == "catalogue":
        from simulations.bench.catalogue import main as catalogue_bench_main

        return catalogue_bench_main(args.rest) or 0
    raise ConfigError(f"unknown benchmark {args.what!r}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``crossfed`` parser. Of :data:`LAZY_COMMANDS` only ``command``'s module is imported (the
    others get a stub with their help line): ``--help`` stays fast, and ``prepare`` and ``compare``
    never import :mod:`deploy` (cryptography, Flower), so they run where those are missing."""
    parser = argparse.ArgumentParser(prog="crossfed", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="library logs (DEBUG), warnings and colours")
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="convert a public dataset into the platform format")
    prep.add_argument("source", choices=["movielens", "synthetic"], help="synthetic = the embedded demo shops")
    prep.add_argument("--src", help="movielens: folder with u.data, u.item, platform_split_genre3.tsv")
    prep.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    prep.add_argument(
        "--split",
        choices=MOVIELENS_SPLITS,
        default="genre",
        help="movielens: genre = three genre platforms with disjoint catalogues (default); "
        "users = three shops of disjoint users, each with the whole catalogue under its own ids",
    )
    prep.add_argument("--split-seed", type=int, default=0, help="movielens --split users: user partition seed")
    prep.add_argument("--out", required=True, help="DATASET folder to create")
    prep.add_argument("--overwrite", action="store_true")
    prep.add_argument("--like-threshold", type=float, default=3.0, help="rating > threshold is a like")
    prep.set_defaults(func=cmd_prepare)

    sim = sub.add_parser("simulate", help="run a whole federation locally (Flower simulation engine)")
    sim.add_argument("--data", help="DATASET folder (default: embedded synthetic data)")
    sim.add_argument("--out", required=True, help="run folder: rounds.jsonl, summary.json, adapter/")
    sim.add_argument("--rounds", type=int)
    sim.add_argument("--max-users", type=int, help="seeded subsample of users per platform")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--base-model", help="'default', 'tiny-random' or a local Hugging Face model path")
    sim.add_argument("--secagg", action=argparse.BooleanOptionalAction, default=None)
    sim.add_argument("--tensorboard", metavar="DIR", help="TensorBoard scalars: the server's aggregate metrics "
                     "in DIR/server, each platform's own in DIR/<platform> (default: the server's in "
                     "<out>/tensorboard)")  # fmt: skip
    sim.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs the simulation may use")
    sim.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key, e.g. lora.r=4")
    sim.add_argument("--size", choices=sorted(SIZES), help="a size preset of `crossfed compare` (cpu: the real model "
                     "on every train row on a CPU; full: one GPU); --rounds and --set win over it")  # fmt: skip
    sim.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="then train each platform alone (same rounds and budget) and print local vs federated "
        "(default: on for the embedded synthetic data)",
    )
    sim.add_argument("--continue-from", metavar="RUN", help="a finished run to keep training on (new) data: its "
                     "config, fused adapter and private parameters are the start; --rounds: rounds to add")  # fmt: skip
    sim.set_defaults(func=cmd_simulate)

    stop = sub.add_parser("stop-local", help="stop the flower-superlink/-superexec daemons that `flwr run` started")
    stop.add_argument("--flwr-home", help="the FLWR_HOME `flwr run` used (default: $FLWR_HOME or ~/.flwr)")
    stop.set_defaults(func=cmd_stop_local)

    bench = sub.add_parser("bench", help="benchmarks that print a table")
    bench.add_argument("what", choices=["secagg", "deploy", "train", "scale", "recommend", "batch", "catalogue"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    bench.set_defaults(func=cmd_bench)

    add_use_parsers(sub)  # recommend, score, export, serve: light parsers (their commands import lazily)
    for name, (module, adder, help_line) in LAZY_COMMANDS.items():
        if name == command:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that print one line and exit 2 (those of heavy modules once a command has loaded them)."""
    loaded = [getattr(sys.modules[m], name) for m, name in (*LAZY_ERRORS, *USE_ERRORS) if m in sys.modules]
    return (*USER_ERRORS, *loaded)


def main(argv: Sequence[str] | None = None) -> int:
    """``crossfed`` itself (``argv`` None) runs long commands under a supervisor (one Ctrl-C ends
    them); a Python caller passing ``argv`` runs every command in its own process."""
    from_shell = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = [a for a in argv if a != "--verbose"]  # anywhere: `crossfed simulate ... --verbose` reads naturally
    command = next((a for a in rest if not a.startswith("-")), None)
    args = build_parser(command).parse_args(rest)
    args.verbose = args.verbose or len(rest) < len(argv)
    console.setup_console(args.verbose)
    if from_shell and args.command in SUPERVISED and not console.supervised():
        return console.supervise(argv)
    try:
        return int(args.func(args))
    except user_errors() as exc:
        print(f"crossfed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(console.INTERRUPTED, file=sys.stderr)
        return console.EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
