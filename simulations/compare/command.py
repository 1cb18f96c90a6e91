"""``crossfed compare``: every arm x scenario x seed as units, then the report; the command's parser.

    crossfed compare --data DIR --out RUN --seeds 3 [--size ci|full] [--scenario NAME[,NAME...]|both|all]

What the arms and scenarios are: :mod:`simulations.compare.runner`; how units run and are recorded:
:mod:`simulations.compare.jobs`; the report: :mod:`simulations.compare.report`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import AppConfig, ConfigError, parse_overrides
from common.data import discover_platforms, write_dataset
from simulations.compare.arms import (
    ARMS,
    DEFAULT_ARMS,
    DEFAULT_LARGE,
    KINDS,
    REPLOT_S,
    SCARCE_FRACTION,
    SCENARIO_OVERRIDES,
    SCENARIOS,
    SIZES,
    Arm,
    parse_scenarios,
    resolve_arms,
)
from simulations.compare.report import RECOMMENDED, summary_table, write_report


@dataclass
class CompareOptions:
    out: str
    data: str | None = None
    seeds: int = 3
    size: str = "full"
    scenario: str = "both"  # one name, a comma list, both (full, scarce) or all
    base_model: str | None = None
    arms: Sequence[str] = DEFAULT_ARMS
    levers: Sequence[str] = ()
    extra_arms: Sequence[Arm] = ()  # arms built in code (any kind), after ``arms`` and ``levers``
    overrides: Mapping[str, Any] = field(default_factory=dict)
    scarce_fraction: float | None = None
    large_platform: str | None = None
    kind: str = "cross"  # cross: cross-domain (genre) platforms, same: same-domain shops; picks the targets
    jobs: int = 1  # units at a time; 1 = in this process, one after the other
    fresh: bool = False  # rerun units whose records already exist
    budget_s: float | None = None  # launch no unit after this many seconds; the report is still written
    recommended: str = RECOMMENDED  # the arm the report's targets are about (one of the arms run)


def base_config(opts: CompareOptions) -> AppConfig:
    if opts.size not in SIZES:
        raise ConfigError(f"`--size` must be one of {', '.join(SIZES)}, got {opts.size!r}")
    overrides = dict(SIZES[opts.size])
    if opts.base_model:
        overrides["model.base"] = opts.base_model
    overrides.update(opts.overrides)
    return AppConfig().replace(**overrides)


def run_compare(opts: CompareOptions) -> dict[str, Any]:
    """Train and score every arm x scenario x seed as independent units (see
    :mod:`simulations.compare.jobs`); rewrite RUN/report.{json,md,png} and rounds.png after each.

    The report's ``meta`` lists the ``missing`` arms (scenario/seed/arm without a record: failed,
    not started within ``budget_s``, or still to run) and the ``failed`` units with their error.
    """
    from simulations.compare import jobs  # the arms' code (torch): not for `compare --help`
    from simulations.compare.runner import (
        code_version,
        hardware,
        large_platform,
        load_source,
        scenario_data,
        train_fractions,
    )

    if opts.seeds < 1:
        raise ConfigError(f"`--seeds` must be positive, got {opts.seeds}")
    if opts.jobs < 1:
        raise ConfigError(f"`--jobs` must be positive, got {opts.jobs}")
    if opts.kind not in KINDS:
        raise ConfigError(f"`--kind` must be one of {', '.join(KINDS)}, got {opts.kind!r}")
    scenarios = parse_scenarios(opts.scenario)
    cfg0 = base_config(opts)
    arms = resolve_arms(opts.arms, opts.levers, opts.extra_arms)
    if opts.recommended != RECOMMENDED and opts.recommended not in {a.name for a in arms}:  # asked for, not run
        raise ConfigError(f"`--recommended` {opts.recommended!r} is not among the arms run "
                          f"({', '.join(a.name for a in arms)})")  # fmt: skip
    for arm in arms:
        cfg0.replace(**arm.overrides)  # every arm's config is valid before anything runs
    for scenario in scenarios:
        cfg0.replace(**SCENARIO_OVERRIDES.get(scenario, {}))  # so is every scenario's (cold-start split keys)
    source = load_source(opts.data)
    large = large_platform(source, opts.large_platform)
    fraction = opts.scarce_fraction if opts.scarce_fraction is not None else SCARCE_FRACTION.get(opts.size, 0.1)
    out = Path(opts.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    data_dirs: dict[str, Path] = {}
    scenario_info: dict[str, Any] = {}
    for scenario in scenarios:
        data = scenario_data(source, scenario, large, fraction)
        data_dirs[scenario] = out / "data" / scenario
        write_dataset(data_dirs[scenario], data.values(), overwrite=True)
        scenario_info[scenario] = {
            "users": {n: d.num_users for n, d in data.items()},
            "interactions": {n: len(d.interactions) for n, d in data.items()},
            "large_platform": large if scenario == "scarce" else None,
            "scarce_fraction": fraction if scenario == "scarce" else None,  # of train examples
            **({"overrides": SCENARIO_OVERRIDES[scenario]} if scenario in SCENARIO_OVERRIDES else {}),
        }
    implicit = frozenset(n for n, d in source.items() if d.feedback == "implicit")
    threads = max(1, (os.cpu_count() or 1) // opts.jobs) if opts.jobs > 1 else None
    specs = []
    for unit in jobs.plan_units(arms, scenarios, opts.seeds):
        # the scenario's split keys (cold start) are in the config, hence in the fingerprint
        cfg = cfg0.replace(**{**SCENARIO_OVERRIDES.get(unit.scenario, {}), "seed": unit.seed,
                              "data.dir": str(data_dirs[unit.scenario])})  # fmt: skip
        fps = {a.name: jobs.fingerprint(cfg, a, scenario_info[unit.scenario], opts.data or "") for a in unit.arms}
        platforms = tuple(discover_platforms(data_dirs[unit.scenario]))
        fractions = tuple(sorted(train_fractions(platforms, unit.scenario, large, fraction).items()))
        specs.append(jobs.UnitSpec(unit, cfg, platforms, out, implicit, fps, threads, fractions))
    if opts.fresh:
        for spec in specs:
            jobs.forget(spec)
    todo = [s for s in specs if not jobs.is_done(s)]
    if len(todo) < len(specs):
        print(f"{len(specs) - len(todo)} of {len(specs)} units already have their records in {out / jobs.RECORDS_DIR}: "
              "skipped (--fresh reruns them)", flush=True)  # fmt: skip
    meta = {
        "size": opts.size, "kind": opts.kind, "seeds": list(range(opts.seeds)), "config": cfg0.to_flat(),
        "data": opts.data or "", "scenarios": scenario_info, "arms": {a.name: {"kind": a.kind,
        "overrides": dict(a.overrides), "trained": a.trained, "about": a.about}
        for a in arms}, "hardware": hardware(), "code": code_version(), "jobs": opts.jobs,
        "recommended": opts.recommended,
    }  # fmt: skip
    failed: list[dict[str, str]] = []
    plotted = [0.0]  # when the plots were last drawn

    def report(not_started: Sequence[Any] = (), final: bool = True) -> dict[str, Any]:
        results = jobs.load_results(specs)
        missing = [f"{s}/seed{k}/{a}" for s, by_arm in results.items() for a, by in by_arm.items()
                   for k in range(opts.seeds) if k not in by]  # fmt: skip
        extra = {"total_wall_s": time.time() - started, "missing": missing, "failed": failed,
                 "not_started": [s.unit.label for s in not_started]}  # fmt: skip
        plots = final or time.time() - plotted[0] >= REPLOT_S
        plotted[0] = time.time() if plots else plotted[0]
        return write_report(out, results, {**meta, **extra}, plots=plots)

    done: list[Any] = []

    def finished(result: Any) -> None:
        if result.error:
            failed.append({"unit": result.spec.unit.label, "error": result.error})
        # a failure is one line on stderr (naming the unit and its exception), progress one on stdout
        print(jobs.progress_line(result, len(done) + 1, len(todo)), file=sys.stderr if result.error else sys.stdout,
              flush=True)  # fmt: skip
        done.append(result)
        report(final=False)

    deadline = started + opts.budget_s if opts.budget_s is not None else None
    outcome = jobs.execute(todo, opts.jobs, deadline, finished)
    if outcome.not_started:
        print(f"budget of {opts.budget_s:.0f} s spent: {len(outcome.not_started)} units not started", flush=True)
    return report(outcome.not_started)


# --- command line -------------------------------------------------------------------------


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="local vs federated vs pooled (+ levers, baselines incl. content), "
        "warm and cold-start scenarios: report.md/json/png",
    )
    p.add_argument("--data", help="DATASET folder (default: the embedded synthetic shops)")
    p.add_argument("--out", required=True, help="RUN folder: report.json/md/png, rounds.png, data/, runs/")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (model init, sampling, training order)")
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="ci: minutes on a CPU; full: one GPU")
    p.add_argument(
        "--scenario",
        default="both",
        help=f"comma list of {', '.join(SCENARIOS)}; both = full,scarce; all = every one. full: the data as "
        "given; scarce: the small platforms keep a share of their train examples; new-items: a seeded 20 %% of "
        "each catalogue never in train, tested on; new-users: users absent from train, tested with their first "
        "1, 3, 5 interactions as history (the content baseline shows what training adds over frozen text)",
    )
    p.add_argument("--base-model", help="'default' (MiniLM), 'tiny-random' or a local Hugging Face model path")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument(
        "--lever",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="an extra federated arm with these run-config overrides, e.g. wd0:train.weight-decay=0",
    )
    p.add_argument("--scarce-fraction", type=float, help="share of users the small platforms keep (scarce)")
    p.add_argument("--large-platform", help=f"the platform that keeps every user (default {DEFAULT_LARGE} or largest)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key, e.g. train.lr=1e-3")
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="cross",
        help="cross: cross-domain platforms (genres), same: same-domain shops; decides the targets",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="units (scenario x seed x arm) at a time, each in its own process; 1: in this process",
    )
    p.add_argument("--fresh", action="store_true", help="rerun units whose records already exist in RUN/records")
    p.add_argument("--recommended", default=RECOMMENDED,
                   help=f"the arm the report's targets are about (default {RECOMMENDED}; e.g. fed+mix)")  # fmt: skip
    p.add_argument("--budget-s", type=float, help="launch no unit after this many seconds (the report is written)")
    p.set_defaults(func=cmd_compare)
    return p  # fmt: skip


def cmd_compare(args: argparse.Namespace) -> int:
    opts = CompareOptions(
        out=args.out, data=args.data, seeds=args.seeds, size=args.size, scenario=args.scenario,
        base_model=args.base_model, arms=[a.strip() for a in args.arms.split(",") if a.strip()],
        levers=args.lever, overrides=parse_overrides(args.set or []), scarce_fraction=args.scarce_fraction,
        large_platform=args.large_platform, kind=args.kind, jobs=args.jobs, fresh=args.fresh,
        budget_s=args.budget_s, recommended=args.recommended,
    )  # fmt: skip
    report = run_compare(opts)
    meta = report["meta"]
    print(summary_table(report), end="")
    print(f"report: {Path(args.out) / 'report.md'}  ({meta['total_wall_s']:.0f} s, "
          f"{len(meta['missing'])} arm runs missing, {len(meta['failed'])} units failed)")  # fmt: skip
    return 1 if meta["failed"] else 0
