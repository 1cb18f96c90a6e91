"""Units of ``crossfed compare``: independent jobs, their records on disk, and the runner.

A comparison is split into units, each (scenario, seed, arms): one trained arm per unit, except
that ``fed+finetune`` shares the ``federated`` unit (it fine-tunes that arm's best state, which
lives in memory), and the cheap arms (no training) form one unit per scenario and seed. Units
are ordered seed first, so a run stopped early still has whole seeds.

Every arm's :class:`~simulations.compare.runner.Record` is written the moment it ends, to
``RUN/records/<scenario>/seed<k>/<arm>.json`` with a fingerprint of everything that decides its
numbers (run config minus paths, arm, scenario data); a rerun skips units whose records all
exist with matching fingerprints. A unit's console output (per-round tables, warnings) goes to
``RUN/logs/<scenario>/seed<k>/<unit>.log``; the console gets one line per finished unit.

``jobs == 1`` runs the units in this process, one after the other; ``jobs > 1`` runs each in its
own process (``spawn``: safe with CUDA, a fresh interpreter per unit, GPU memory freed when it
exits), at most ``jobs`` at a time. A unit that raises, or whose process dies, is reported and
the others go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from common.config import AppConfig
from common.files import atomic_write_text
from common.run_files import clean
from simulations.compare.runner import Arm, ArmRunner, Record

RECORDS_DIR = "records"
LOGS_DIR = "logs"
NOT_IN_FINGERPRINT = ("out-dir", "data.dir")  # paths: moving a RUN folder must not invalidate its records
ERROR_CHARS = 400


@dataclass(frozen=True)
class Unit:
    """One job: these arms, in this order, on one scenario and seed (one :class:`ArmRunner`)."""

    scenario: str
    seed: int
    arms: tuple[Arm, ...]

    @property
    def label(self) -> str:
        return f"{self.scenario}/seed{self.seed}/{','.join(a.name for a in self.arms)}"


@dataclass(frozen=True)
class UnitSpec:
    """Everything a (possibly spawned) process needs to run a unit; picklable."""

    unit: Unit
    cfg: AppConfig  # the scenario's data dir and the seed already set
    platforms: tuple[str, ...]
    out: Path
    implicit: frozenset[str]
    fingerprints: Mapping[str, str]  # arm name -> fingerprint its record carries
    threads: int | None = None  # torch CPU threads in a spawned unit (None: torch's default)
    train_fraction: tuple[tuple[str, float], ...] = ()  # scarce platforms: share of train examples kept


@dataclass(frozen=True)
class Finished:
    """What the console and the caller learn about one unit: per arm (mean test AUC, seconds) or an error."""

    spec: UnitSpec
    seconds: float
    arms: tuple[tuple[str, float, float], ...] = ()
    error: str | None = None


def group_arms(arms: Sequence[Arm]) -> list[tuple[Arm, ...]]:
    """Arms -> unit groups: each trained arm alone, untrained ones together, and the arms built on the
    federated arm's best state in its unit, after it: fine-tuning, and mixing (which also needs
    ``local``, so ``local`` joins that unit, first, when a mixing arm runs)."""
    after = tuple(a for a in arms if a.kind in ("finetune", "mix"))
    local_joins = any(a.kind == "mix" for a in arms)
    cheap = tuple(a for a in arms if not a.trained)
    groups: list[tuple[Arm, ...]] = []
    for arm in arms:
        if not arm.trained or arm in after or (local_joins and arm.name == "local"):
            continue
        if arm.name == "federated":
            local = tuple(a for a in arms if local_joins and a.name == "local")
            groups.append((*local, arm, *after))
        else:
            groups.append((arm,))
    return groups + ([cheap] if cheap else [])


def plan_units(arms: Sequence[Arm], scenarios: Sequence[str], seeds: int) -> list[Unit]:
    """Seed-major order: seed 0 of every scenario and arm first, so an early stop leaves whole seeds."""
    groups = group_arms(arms)
    return [Unit(s, seed, g) for seed in range(seeds) for s in scenarios for g in groups]


def fingerprint(cfg: AppConfig, arm: Arm, scenario: Mapping[str, Any], data: str) -> str:
    """Hash of what decides an arm's numbers: run config (paths left out), arm, scenario data.

    Only config keys away from their defaults enter: a key added later (at a default that keeps
    today's behaviour) leaves every record valid, while a changed default still changes the hash of
    every run that used the old value (it is now away from the new default) or the new one.
    """
    defaults = AppConfig().to_flat()
    flat = {k: v for k, v in cfg.replace(**arm.overrides).to_flat().items()
            if k not in NOT_IN_FINGERPRINT and (k not in defaults or defaults[k] != v)}  # fmt: skip
    spec = {"config": flat, "arm": [arm.name, arm.kind, dict(arm.overrides)],
            "scenario": scenario, "data": data}  # fmt: skip
    return hashlib.sha256(json.dumps(clean(spec), sort_keys=True).encode()).hexdigest()[:16]


# --- records on disk ----------------------------------------------------------------------


def record_path(out: Path, scenario: str, seed: int, arm: str) -> Path:
    return out / RECORDS_DIR / scenario / f"seed{seed}" / f"{arm.replace(os.sep, '_')}.json"


def write_record(out: Path, scenario: str, seed: int, arm: str, fp: str, record: Record) -> Path:
    """One arm's record, written atomically (a killed run never leaves half a file)."""
    path = record_path(out, scenario, seed, arm)
    doc = {"arm": arm, "scenario": scenario, "seed": seed, "fingerprint": fp, "record": dataclasses.asdict(record)}
    atomic_write_text(path, json.dumps(clean(doc), separators=(",", ":")) + "\n")
    return path


def read_record(out: Path, scenario: str, seed: int, arm: str, fp: str) -> Record | None:
    """The arm's record if it exists, parses and carries fingerprint ``fp``; else None."""
    path = record_path(out, scenario, seed, arm)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("fingerprint") != fp:
        return None
    data = doc["record"]
    data["per_platform"] = {p: {k: math.nan if v is None else v for k, v in m.items()}  # JSON null was NaN
                            for p, m in data.get("per_platform", {}).items()}  # fmt: skip
    return Record(**{f.name: data[f.name] for f in dataclasses.fields(Record) if f.name in data})


def load_results(specs: Sequence[UnitSpec]) -> dict[str, dict[str, dict[int, Record]]]:
    """scenario -> arm -> seed -> Record, for every planned arm whose current record is on disk."""
    results: dict[str, dict[str, dict[int, Record]]] = {}
    for spec in specs:
        u = spec.unit
        for arm in u.arms:
            by_seed = results.setdefault(u.scenario, {}).setdefault(arm.name, {})
            record = read_record(spec.out, u.scenario, u.seed, arm.name, spec.fingerprints[arm.name])
            if record is not None:
                by_seed[u.seed] = record
    return results


def is_done(spec: UnitSpec) -> bool:
    u = spec.unit
    return all(read_record(spec.out, u.scenario, u.seed, a.name, spec.fingerprints[a.name]) for a in u.arms)


def forget(spec: UnitSpec) -> None:
    """``--fresh``: drop the unit's records now, so partial reports never mix in the previous run."""
    for arm in spec.unit.arms:
        record_path(spec.out, spec.unit.scenario, spec.unit.seed, arm.name).unlink(missing_ok=True)


# --- running one unit ---------------------------------------------------------------------


def log_path(spec: UnitSpec) -> Path:
    u = spec.unit
    name = "+".join(a.name for a in u.arms).replace(os.sep, "_")
    return spec.out / LOGS_DIR / u.scenario / f"seed{u.seed}" / f"{name}.log"


@contextmanager
def captured(path: Path) -> Iterator[None]:
    """stdout, stderr and every log record go to ``path`` (appended) while the unit runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(path, "a", encoding="utf-8") as fh, redirect_stdout(fh), redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        saved, saved_level = root.handlers[:], logging.getLogger("crossfed").level
        root.handlers = [handler]
        logging.getLogger("crossfed").setLevel(logging.INFO)
        try:
            yield
        finally:
            root.handlers = saved
            logging.getLogger("crossfed").setLevel(saved_level)


def run_unit(spec: UnitSpec) -> tuple[tuple[str, float, float], ...]:
    """Run the unit's arms in order, writing each arm's record as soon as it ends."""
    u = spec.unit
    run_root = spec.out / "runs" / u.scenario / f"seed{u.seed}"
    runner = ArmRunner(
        spec.cfg, list(spec.platforms), run_root, spec.out, set(spec.implicit), dict(spec.train_fraction)
    )
    done = []
    for arm in u.arms:
        try:
            record = runner.run(arm)
        except Exception as exc:
            raise ArmError(f"arm {arm.name}: {type(exc).__name__}: {exc}") from exc
        write_record(spec.out, u.scenario, u.seed, arm.name, spec.fingerprints[arm.name], record)
        done.append((arm.name, record.with_mean()["mean"].get("auc", math.nan), record.wall_s))
    return tuple(done)


class ArmError(Exception):
    """An arm of a unit failed: the message names the arm (a unit may hold several) and the cause."""


def _error(exc: BaseException) -> str:
    return (str(exc) if isinstance(exc, ArmError) else f"{type(exc).__name__}: {exc}")[:ERROR_CHARS]


def run_captured(spec: UnitSpec) -> Finished:
    """Run a unit here with its output in its log; an exception becomes the result's ``error``."""
    t0 = time.time()
    with captured(log_path(spec)):
        try:
            arms = run_unit(spec)
        except Exception as exc:  # one unit's failure must not stop the others
            traceback.print_exc()
            return Finished(spec, time.time() - t0, error=_error(exc))
    return Finished(spec, time.time() - t0, arms)


def _child(spec: UnitSpec, conn: Connection) -> None:
    """Entry point of a spawned unit: send back ("ok", arms) or ("error", message)."""
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    result = run_captured(spec)
    conn.send(("error", result.error) if result.error else ("ok", result.arms))
    conn.close()


# --- running many -------------------------------------------------------------------------


@dataclass
class Outcome:
    finished: list[Finished]
    not_started: list[UnitSpec]

    @property
    def failed(self) -> list[Finished]:
        return [f for f in self.finished if f.error]


def execute(
    specs: Sequence[UnitSpec], jobs: int, deadline: float | None, on_finish: Callable[[Finished], None]
) -> Outcome:
    """Run ``specs`` (``jobs`` at a time); launch nothing after ``deadline`` (time.time()); call
    ``on_finish`` in this process after each unit."""
    if jobs <= 1:
        return _sequential(specs, deadline, on_finish)
    return _parallel(specs, jobs, deadline, on_finish)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def _sequential(specs: Sequence[UnitSpec], deadline: float | None, on_finish: Callable[[Finished], None]) -> Outcome:
    outcome = Outcome([], [])
    for i, spec in enumerate(specs):
        if _past(deadline):
            outcome.not_started = list(specs[i:])
            break
        outcome.finished.append(result := run_captured(spec))
        on_finish(result)
    return outcome


def _parallel(
    specs: Sequence[UnitSpec], jobs: int, deadline: float | None, on_finish: Callable[[Finished], None]
) -> Outcome:
    ctx = mp.get_context("spawn")
    pending = list(reversed(specs))
    running: dict[Any, tuple[Any, Connection, UnitSpec, float]] = {}
    outcome = Outcome([], [])

    def launch() -> None:
        while pending and len(running) < jobs and not _past(deadline):
            spec = pending.pop()
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(spec, writer), name=f"crossfed-unit {spec.unit.label}")
            proc.start()
            writer.close()  # the child holds the only write end: EOF if it dies
            running[proc.sentinel] = (proc, reader, spec, time.time())

    try:
        while pending or running:
            launch()
            if _past(deadline):
                outcome.not_started, pending[:] = list(reversed(pending)), []
            if not running:
                break
            results = []
            for sentinel in wait(list(running)):
                proc, reader, spec, t0 = running.pop(sentinel)
                proc.join()
                results.append(_child_result(proc, reader, spec, time.time() - t0))
            launch()  # the free slots work while on_finish rewrites the report
            for result in results:
                outcome.finished.append(result)
                on_finish(result)
    finally:
        for proc, *_ in running.values():  # interrupted: no orphan units left training
            proc.terminate()
            proc.join()
    return outcome


def _child_result(proc: Any, reader: Connection, spec: UnitSpec, seconds: float) -> Finished:
    try:
        status, payload = reader.recv() if reader.poll() else ("error", None)
    except (EOFError, OSError):
        status, payload = "error", None
    finally:
        reader.close()
    if status == "ok":
        return Finished(spec, seconds, payload)
    return Finished(spec, seconds, error=payload or f"its process died with exit code {proc.exitcode}")


# --- console ------------------------------------------------------------------------------


def progress_line(result: Finished, index: int, total: int) -> str:
    """``[3/24] scarce seed 0 · federated AUC 0.7123 (45 s) · fed+finetune AUC 0.7200 (12 s) · 61 s``."""
    u = result.spec.unit
    head = f"[{index}/{total}] {u.scenario} seed {u.seed}"
    if result.error:
        return f"{head} FAILED {u.label}: {result.error} (log: {log_path(result.spec)})"
    arms = " · ".join(f"{name} AUC {auc_:.4f} ({s:.0f} s)" for name, auc_, s in result.arms)
    return f"{head} · {arms} · {result.seconds:.0f} s"
