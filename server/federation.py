"""The federation loop, independent of how messages travel.

Each round: the transport trains the global adapter on every platform and returns the
example-weighted fusion, the server optimiser applies it, the transport evaluates the
new global adapter on every platform. The best round by the mean validation metric is
kept and exported as a PEFT folder; training stops early after ``fed.patience`` rounds
without improvement. The ServerApp drives this over a Flower Grid; the comparison
harness drives the very same loop in-process.

A transport that ``folds_evaluation`` (secure aggregation: each exchange is five round trips)
evaluates round r's adapter on round r + 1's training messages, and the last round's in one
closing evaluation: round r's metrics, its rounds.jsonl line, the best-round choice and the
early-stopping count then come one round later, so early stopping trains one round more.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.progress import Progress

from common.config import AppConfig
from common.fusion import server_update
from common.metrics import mean_metrics, strip_test_prefix
from common.modeling import build_scorer, get_trainable_state, save_adapter
from common.privacy import saved_rates
from common.run_files import (
    ADAPTER_DIR,
    FAILED,
    ROUNDS_FILE,
    describe_lost,
    lost_rounds,
    read_rounds,
    run_status,
    trim_rounds,
    write_summary,
)
from server.checkpoint import (
    CheckpointError,
    RunState,
    checkpoint_key,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from server.outputs import RoundLog, platform_table, server_tensorboard_dir
from server.privacy_budget import PrivacyLedger
from server.warm_start import prepare_warm_start

log = logging.getLogger("crossfed.server")

Tensors = Mapping[str, np.ndarray]
PerPlatform = dict[str, dict[str, float]]
# evaluate_round's key for the cohort's mean metrics when the platforms keep their own private
# (secure aggregation): the platforms are then listed with no metrics, or those they chose to share.
AGGREGATE = "*"


class FederationError(RuntimeError):
    """The federation cannot go on (too few platforms, every platform failed...)."""


class LostRoundsError(FederationError):
    """The run finished, but some rounds fused nothing (summary.json ``status`` "degraded").

    Raised by the deployed ServerApp after everything is written, so that Flower ends the run
    ``finished:failed`` and ``crossfed deploy submit`` exits non-zero with this line.
    """


class RoundAborted(RuntimeError):
    """This round produced no fused update (e.g. secure aggregation lost too many platforms).

    ``failures`` names the platforms that dropped out of it and why, for the round's record.
    """

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)
        # TrainedAndEvaluated.evaluation of the round, when the previous round's metric sum went on
        self.evaluation: tuple[PerPlatform, list[str]] | None = None


@dataclass
class TrainedAndEvaluated:
    """A training round and, on the same messages, the previous round's evaluation (``folds_evaluation``).

    ``evaluation``: (per-platform metrics, failure lines) of the adapter the round started from, as
    ``Transport.evaluate_round`` returns them; None when none was asked for.
    """

    fused: OrderedDict[str, np.ndarray]
    info: PerPlatform
    failures: list[str]
    evaluation: tuple[PerPlatform, list[str]] | None = None


class Transport(Protocol):
    """How one round reaches the platforms: over a Flower Grid, or in-process."""

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        """Fused (example-weighted) adapter, per-platform train metrics, failure lines."""
        ...

    def evaluate_round(
        self, state: Tensors, cfg: AppConfig, rnd: int, splits: Sequence[str]
    ) -> tuple[PerPlatform, list[str]]:
        """Per-platform ``<split>.*`` metrics of ``state`` for the given splits, failure lines."""
        ...


class FoldingTransport(Transport, Protocol):
    """A transport that evaluates round r's adapter on round r + 1's training messages."""

    folds_evaluation: bool

    def train_and_evaluate(
        self, state: Tensors, cfg: AppConfig, rnd: int, evaluate: int | None, splits: Sequence[str]
    ) -> TrainedAndEvaluated:
        """Round ``rnd``'s training and the evaluation of ``state`` as round ``evaluate``'s adapter (None: none).

        RoundAborted when the training fused nothing, with ``evaluation`` set when the evaluation went on.
        """
        ...


@dataclass
class Best:
    """The best round so far by the mean validation metric, among comparable rounds.

    Comparable: the round's evaluation cohort is every platform that has evaluated in this
    run so far. A round that misses a platform (dropped, late, restarted) is recorded but
    never becomes the best and counts as a stale round for early stopping: its mean is over
    other platforms, so it may beat a full round only because the weakest one was absent.
    When the federation grows, the first round with the larger cohort becomes the best
    (the earlier ones are no longer comparable). A round is taken only provisionally, with
    no score, while no comparable round with a metric exists, so a run always saves one.
    """

    round: int = 0
    score: float = -np.inf
    state: Mapping[str, np.ndarray] | None = None
    per_platform: dict[str, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    cohort: list[str] = field(default_factory=list)

    def improved_by(self, score: float, cohort: Sequence[str], platforms: set[str]) -> bool:
        """Whether a round with this (signed) score and evaluation cohort becomes the best."""
        if set(cohort) != platforms or not np.isfinite(score):
            return self.state is None  # provisional: nothing better to keep yet
        return sorted(cohort) != sorted(self.cohort) or not np.isfinite(self.score) or score > self.score


def run_federation(transport: Transport, cfg: AppConfig, table: bool = True) -> dict[str, Any]:
    """R rounds of train -> fuse -> evaluate; writes rounds.jsonl, summary.json and the adapter.

    summary.json's ``status`` says whether every round fused ("completed"), some were lost
    ("degraded", ``lost_rounds`` names each with its reason) or none fused ("failed": no adapter,
    FederationError); the caller decides what a degraded run means for its exit.

    ``table``: print the per-platform test table at the end (a caller that prints its own, such as
    ``crossfed simulate`` with its local baseline, turns it off).

    After every round the run state is checkpointed in the run folder; a run started on a
    folder that holds a checkpoint (``fed.resume = true``, the default) continues after its
    last completed round instead of starting over.
    """
    cfg, warm = prepare_warm_start(cfg)  # before anything is written: a bad `fed.warm-start` loses nothing
    out_dir = Path(cfg.out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # A fresh scorer, not the per-process cache: a cached one may carry another run's adapter.
    scorer, _ = build_scorer(cfg.model, cfg.lora, cfg.seed)
    initial_state = get_trainable_state(scorer) if warm is None else warm.state
    key = checkpoint_key(outside=out_dir)  # read once: a bad key stops the run before round 1
    loop = _start_or_resume(out_dir, cfg, initial_state, key, 0 if warm is None else warm.rounds_run)
    loop.started = started
    sign = -1.0 if cfg.fed.metric == "logloss" else 1.0
    # Test metrics (and the costly ranking) are only needed for the best round: by default
    # rounds evaluate validation only, and the best adapter is tested once at the end.
    round_splits = ("valid", "test") if cfg.eval.test_every_round else ("valid",)
    log.info("crossfed: %d rounds, %d adapter+head parameters", cfg.num_server_rounds, _size(loop.global_state))
    ledger = None
    if cfg.privacy.enabled:
        ledger = PrivacyLedger.start(cfg, loop.global_state, loop.privacy, loop.privacy_rates)
    if ledger is not None:
        loop.privacy, loop.privacy_rates = ledger.multipliers, ledger.rates  # the checkpoint saves what it spends
        log.info("differential privacy: (%.3g, %.3g)-DP over %d rounds: noise multiplier %.4g, clip %g, noise std "
                 "%.4g from >= %d platforms, users sampled at rate %g", ledger.target, ledger.mech.delta,
                 ledger.mech.rounds, ledger.mech.noise_multiplier, ledger.mech.clip, ledger.mech.sigma,
                 ledger.mech.n_min, ledger.mech.user_rate)  # fmt: skip
    rounds_log = RoundLog(out_dir, cfg.num_server_rounds, server_tensorboard_dir(out_dir, cfg.tensorboard_dir))
    folded = bool(getattr(transport, "folds_evaluation", False))
    with Progress(transient=False) as progress, rounds_log:
        task = progress.add_task("federated rounds", total=cfg.num_server_rounds, completed=loop.done)

        def close(line: dict[str, Any], evaluated: PerPlatform, eval_failures: list[str], more_s: float) -> None:
            """Round ``line["round"]``'s metrics are in (its adapter is ``loop.global_state``): the best round,
            early stopping and its rounds.jsonl line; ``more_s``: seconds its evaluation took beyond ``line``'s."""
            rnd = int(line["round"])
            per_platform, mean = split_mean(evaluated)
            cohort = sorted(per_platform)
            loop.platforms.update(cohort)
            score = sign * mean.get(f"valid.{cfg.fed.metric}", np.nan)
            improved = loop.best.improved_by(score, cohort, loop.platforms)
            if improved:
                loop.best = Best(rnd, score if np.isfinite(score) else -np.inf, loop.global_state, per_platform, mean,
                                 cohort)  # fmt: skip
                loop.stale = 0
            else:
                loop.stale += 1
                if set(cohort) != loop.platforms:
                    log.info("round %d is not comparable for the best round: %s did not evaluate", rnd,
                             ", ".join(sorted(loop.platforms - set(cohort))))  # fmt: skip
            privacy = {"privacy": line["privacy"]} if "privacy" in line else {}
            rounds_log.append({
                "round": rnd, "train": line["train"], "eval": per_platform, "mean": mean, "cohort": cohort,
                "failures": line["failures"] + eval_failures, "improved": improved,
                "seconds": line["seconds"] + more_s, **privacy,
            })  # fmt: skip
            spent = f", epsilon {privacy['privacy']['epsilon']:.3g}" if privacy else ""
            progress.update(task, description=f"round {rnd}: mean valid {cfg.fed.metric} "
                            f"{mean.get(f'valid.{cfg.fed.metric}', float('nan')):.4f}{spent}")  # fmt: skip

        for rnd in range(loop.done + 1, cfg.num_server_rounds + 1):
            if cfg.fed.patience and loop.stale >= cfg.fed.patience:
                log.info("early stop after round %d: no improvement for %d rounds", loop.done, loop.stale)
                break
            if ledger is not None and not ledger.allows_next():
                log.info("privacy budget: round %d would take epsilon past %g (spent %.4g); stopping", rnd,
                         ledger.target, ledger.epsilon())  # fmt: skip
                break
            t0 = time.time()
            privacy: dict[str, Any] = {}
            pending, loop.pending = loop.pending, None
            try:
                if ledger is not None:  # counted before the round: an aborted round may have released a sum
                    privacy = {"privacy": ledger.spend()}
                    log.info("round %d: epsilon spent %.4g of %g (delta %.3g)", rnd, privacy["privacy"]["epsilon"],
                             ledger.target, ledger.mech.delta)  # fmt: skip
                if folded:
                    done = transport.train_and_evaluate(  # type: ignore[attr-defined]
                        loop.global_state, cfg, rnd, None if pending is None else int(pending["round"]), round_splits
                    )
                    fused, train_info, train_failures = done.fused, done.info, done.failures
                    if pending is not None:  # before the server update: the best round keeps that adapter
                        close(pending, *(done.evaluation or ({}, [])), 0.0)
                else:
                    fused, train_info, train_failures = transport.train_round(loop.global_state, cfg, rnd)
            except RoundAborted as exc:  # nothing fused: keep the adapter, try again next round
                if pending is not None:  # its metrics rode on this round; had they no start, ask for them alone
                    t1 = time.time()
                    evaluation = exc.evaluation or transport.evaluate_round(
                        loop.global_state, cfg, int(pending["round"]), round_splits)  # fmt: skip
                    close(pending, *evaluation, time.time() - t1 if exc.evaluation is None else 0.0)
                log.warning("round %d aborted, keeping the previous adapter: %s", rnd, exc)
                rounds_log.append({"round": rnd, "aborted": str(exc), "failures": exc.failures,
                                   "seconds": time.time() - t0, **privacy})  # fmt: skip
                loop.done = rnd
                save_checkpoint(out_dir, loop.run_state(cfg), key)
                progress.update(task, advance=1, description=f"round {rnd}: aborted")
                continue
            loop.global_state, loop.opt_state = server_update(
                loop.global_state, fused, loop.opt_state, cfg.fed.optimizer, cfg.fed.server_lr,
                cfg.fed.server_momentum, (cfg.fed.adam_beta1, cfg.fed.adam_beta2), cfg.fed.adam_tau,
            )  # fmt: skip
            line = {"round": rnd, "train": train_info, "failures": train_failures, "seconds": time.time() - t0,
                    **privacy}  # fmt: skip
            loop.done = rnd
            if folded:  # its metrics come with the next round's training, or the closing evaluation
                loop.pending = line
                save_checkpoint(out_dir, loop.run_state(cfg), key)  # the commit point of this round
                progress.update(task, advance=1)
                continue
            evaluated, eval_failures = transport.evaluate_round(loop.global_state, cfg, rnd, round_splits)
            close(line, evaluated, eval_failures, time.time() - t0 - line["seconds"])
            save_checkpoint(out_dir, loop.run_state(cfg), key)  # the commit point of this round
            progress.update(task, advance=1)
        if loop.pending is not None:  # the last round trained: its metrics in one closing evaluation
            t1 = time.time()
            evaluated, eval_failures = transport.evaluate_round(loop.global_state, cfg, int(loop.pending["round"]),
                                                                round_splits)  # fmt: skip
            close(loop.pending, evaluated, eval_failures, time.time() - t1)
            loop.pending = None
            save_checkpoint(out_dir, loop.run_state(cfg), key)
    best = loop.best
    records = read_rounds(out_dir)  # this run's rounds, earlier starts included (trimmed to the checkpoint)
    status, lost = run_status(records), lost_rounds(records)
    if status == FAILED:  # nothing fused: no adapter to save, but the run says what happened
        write_summary(out_dir, {"status": status, "lost_rounds": lost, "rounds_run": loop.done, "seed": cfg.seed,
                                "config": cfg.to_flat(), "wall_seconds": loop.wall_seconds()})  # fmt: skip
        raise FederationError(f"no round fused: {describe_lost(lost)}")
    if best.state is None:
        raise FederationError("no round produced a finite validation metric; nothing to save")
    if "test" not in round_splits:
        tested, failures = transport.evaluate_round(best.state, cfg, best.round, ("test",))
        tested, test_mean = split_mean(tested)
        for platform, metrics in tested.items():
            best.per_platform.setdefault(platform, {}).update(metrics)
        best.mean = {**{k: v for k, v in best.mean.items() if not k.startswith("test.")}, **test_mean}
        if failures:
            log.warning("final test evaluation left out: %s", "; ".join(failures))
    save_adapter(scorer, best.state, out_dir / ADAPTER_DIR)
    now = time.time()
    summary = {
        "status": status, "lost_rounds": lost,
        "best_round": best.round, "rounds_run": loop.done, "resumed_after_round": loop.resumed_after,
        "metric": f"valid.{cfg.fed.metric}", "best_cohort": best.cohort,
        "test": {p: strip_test_prefix(m) for p, m in best.per_platform.items()},  # with new users' test-kN.*
        "valid": {p: _split(m, "valid") for p, m in best.per_platform.items()},
        "mean": best.mean, "seed": cfg.seed, "config": cfg.to_flat(),
        "adapter_dir": str(out_dir / ADAPTER_DIR), "wall_seconds": loop.wall_seconds(now),
        "wall_seconds_this_start": now - loop.started,
        "adapter_changed": not _same(initial_state, best.state),
        "continued_from": None if warm is None else {"run": str(warm.run_dir), "after_round": warm.rounds_run,
                                                     "adapter_of_round": warm.best_round},
        "privacy": None if ledger is None else ledger.report(),
    }  # fmt: skip
    write_summary(out_dir, summary)
    if table:
        shared = {p: m for p, m in best.per_platform.items() if m}  # a platform listed with no metrics kept them
        private = sorted(set(best.per_platform) - set(shared))
        title = f"crossfed: test metrics of best round {best.round}"
        if private:
            title += f" (kept private, in the mean only: {', '.join(private)})"
        print(platform_table(shared, best.mean, title), flush=True)
    if lost:
        log.warning("run %s: %s", status, describe_lost(lost))
    log.info("run written to %s", out_dir)
    return summary


@dataclass
class LoopState:
    """What the next round depends on; mirrored to a checkpoint after every round."""

    global_state: Mapping[str, np.ndarray]
    opt_state: Mapping[str, np.ndarray] | None = None  # server optimiser (FedAvgM velocity, FedAdam moments)
    best: Best = field(default_factory=Best)
    stale: int = 0  # rounds without improvement (early stopping)
    done: int = 0  # rounds completed
    resumed_after: int | None = None  # the checkpoint's round when this run resumed
    platforms: set[str] = field(default_factory=set)  # every platform that has evaluated in this run
    wall_before: float = 0.0  # seconds the run had taken before this start (from the checkpoint)
    privacy: list[float] = field(default_factory=list)  # DP: the noise multiplier of every round started
    privacy_rates: list[float] = field(default_factory=list)  # DP: and its user sampling rate
    # folds_evaluation: round ``done``'s rounds.jsonl line without its metrics, which the next round brings
    pending: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)

    def wall_seconds(self, now: float | None = None) -> float:
        """Wall-clock seconds of the whole run: earlier starts (up to their last checkpoint) + this one."""
        return self.wall_before + ((time.time() if now is None else now) - self.started)

    def run_state(self, cfg: AppConfig) -> RunState:
        # The server loop draws no random numbers (platforms seed by seed/platform/round and
        # secure aggregation must take fresh keys), so there is no RNG state to carry over.
        return RunState(
            round=self.done, global_state=_f32(self.global_state), config=cfg.to_flat(),
            optimizer_state=None if self.opt_state is None else OrderedDict(self.opt_state.items()),
            best_round=self.best.round, best_score=float(self.best.score),
            best_state=None if self.best.state is None else _f32(self.best.state),
            best_metrics={"per_platform": self.best.per_platform, "mean": self.best.mean,
                          "cohort": self.best.cohort, "platforms": sorted(self.platforms)},
            stale=self.stale, extra={"wall_seconds": self.wall_seconds(), "privacy_multipliers": list(self.privacy),
                                     "privacy_rates": list(self.privacy_rates), "pending": self.pending},
        )  # fmt: skip


def _start_or_resume(
    out_dir: Path, cfg: AppConfig, initial: Mapping[str, np.ndarray], key: bytes, first_after: int = 0
) -> LoopState:
    """A fresh loop from ``initial`` whose first round is ``first_after + 1`` (a continued run), or the
    one a checkpoint in ``out_dir`` (MAC'ed with ``key``) left (rounds.jsonl trimmed to match)."""
    if not cfg.fed.resume:
        remove_checkpoint(out_dir)
    saved = load_checkpoint(out_dir, cfg.to_flat(), key=key)
    if saved is None:
        (out_dir / ROUNDS_FILE).unlink(missing_ok=True)
        if first_after:
            log.info("continuing %s after its round %d on this run's data", cfg.fed.warm_start, first_after)
        return LoopState(global_state=OrderedDict((k, v.copy()) for k, v in initial.items()), done=first_after)
    if list(saved.global_state) != list(initial) or any(
        saved.global_state[k].shape != v.shape for k, v in initial.items()
    ):
        raise CheckpointError(f"{out_dir}: the checkpoint's adapter does not fit this model; use a new run folder")
    # A crash between a round's rounds.jsonl line and its checkpoint reruns that round: drop its line. A round
    # awaiting its metrics (folds_evaluation) has no line yet: one written after its checkpoint goes too.
    pending = saved.extra.get("pending")
    if pending is not None and (not isinstance(pending, dict) or pending.get("round") != saved.round):
        raise CheckpointError(f"{out_dir}: the checkpoint's round awaiting metrics is not its last round")
    trim_rounds(out_dir, saved.round - 1 if pending is not None else saved.round)
    metrics = saved.best_metrics
    best = Best(saved.best_round, saved.best_score, saved.best_state, dict(metrics.get("per_platform", {})),
                dict(metrics.get("mean", {})), list(metrics.get("cohort", [])))  # fmt: skip
    if saved.round >= cfg.num_server_rounds:
        log.warning("%s already holds all %d rounds of this run: re-testing its best round only (more rounds: "
                    "raise num-server-rounds; a fresh run: a new out-dir or fed.resume=false)", out_dir,
                    saved.round)  # fmt: skip
    else:
        log.info("resuming %s after round %d (best round %d)", out_dir, saved.round, saved.best_round)
    multipliers = [float(z) for z in saved.extra.get("privacy_multipliers", [])]
    return LoopState(saved.global_state, saved.optimizer_state, best, saved.stale, saved.round, saved.round,
                     set(metrics.get("platforms", best.per_platform)),
                     float(saved.extra.get("wall_seconds", 0.0)), privacy=multipliers,
                     privacy_rates=saved_rates(len(multipliers), saved.extra.get("privacy_rates")),
                     pending=pending)  # fmt: skip


def split_mean(evaluated: Mapping[str, Mapping[str, float]]) -> tuple[PerPlatform, dict[str, float]]:
    """(metrics by platform, their mean): the transport's secure mean when it sent one
    (``AGGREGATE``), else the example-weighted mean of the platforms' own metrics."""
    per_platform = {p: dict(m) for p, m in evaluated.items() if p != AGGREGATE}
    mean = dict(evaluated[AGGREGATE]) if AGGREGATE in evaluated else mean_metrics(per_platform)
    return per_platform, mean


def _split(metrics: Mapping[str, float], split: str) -> dict[str, float]:
    return {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{split}.")}


def _size(state: Mapping[str, np.ndarray]) -> int:
    return int(sum(v.size for v in state.values()))


def _f32(state: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in state.items())


def _same(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)
