"""Round r's metrics on round r + 1's training messages (``folds_evaluation``): same rounds, one round late.

Under secure aggregation each exchange with the platforms costs five round trips, so the
secure transport evaluates round r's adapter on round r + 1's training messages and the last
round's in one closing evaluation (issue 23 item 8). The loop must then produce the same
rounds.jsonl, best round and summary as evaluating every round at once, resume correctly from
a checkpoint taken while a round waits for its metrics, and stop early one round later. Here
the real in-process transport folds its evaluation the same way, so the loop's bookkeeping is
checked exactly and in seconds (the secure transport itself: tests/secagg/test_attacks.py).
"""

import json
from pathlib import Path

import pytest

from common.config import TINY_PRESET, AppConfig
from common.run_files import ROUNDS_FILE
from server.checkpoint import load_checkpoint
from server.federation import RoundAborted, TrainedAndEvaluated, run_federation
from simulations.compare.inprocess import InProcessTransport, setups_for

TINY = {**TINY_PRESET, "train.max-examples": 48, "eval.max-rank-users": 2, "num-server-rounds": 3, "fed.patience": 0}
PLATFORMS = ["app", "social_shop", "web_shop"]


class Crash(RuntimeError):
    """Stands in for the coordinator dying (a kill, a reboot)."""


class Folding(InProcessTransport):
    """The in-process transport, evaluating round r's adapter in round r + 1's call as the secure one does.

    ``calls`` records every call: ("train", r, evaluated round or None) or ("evaluate", r).
    """

    folds_evaluation = True

    def __init__(self, cfg: AppConfig, crash_in_round: int | None = None, abort_round: int | None = None) -> None:
        super().__init__(setups_for(cfg, PLATFORMS, device="cpu"))
        self.crash_in_round, self.abort_round = crash_in_round, abort_round
        self.calls: list[tuple] = []

    def train_and_evaluate(self, state, cfg, rnd, evaluate, splits):  # noqa: ANN001, ANN201
        if rnd == self.crash_in_round:
            raise Crash(f"coordinator killed in round {rnd}")
        self.calls.append(("train", rnd, evaluate))
        evaluation = None if evaluate is None else super().evaluate_round(state, cfg, evaluate, splits)
        if rnd == self.abort_round:
            exc = RoundAborted(f"round {rnd}: secure aggregation aborted in stage masked_input")
            exc.evaluation = evaluation
            raise exc
        fused, info, failures = super().train_round(state, cfg, rnd)
        return TrainedAndEvaluated(fused, info, failures, evaluation)

    def evaluate_round(self, state, cfg, rnd, splits):  # noqa: ANN001, ANN201
        self.calls.append(("evaluate", rnd))
        return super().evaluate_round(state, cfg, rnd, splits)


def _cfg(out: Path, **extra: object) -> AppConfig:
    return AppConfig().replace(**{**TINY, "out-dir": str(out), **extra})


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ROUNDS_FILE).read_text().splitlines()]


def _same_rounds(a: Path, b: Path) -> None:
    ra, rb = _rounds(a), _rounds(b)
    assert [r["round"] for r in ra] == [r["round"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys(), (x.keys(), y.keys())
        for key in ("train", "eval", "mean", "cohort", "failures", "improved"):
            assert x[key] == y[key], (x["round"], key)


@pytest.fixture(scope="module")
def at_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The reference: every round evaluated right after its training (the plain loop)."""
    out = tmp_path_factory.mktemp("at-once")
    cfg = _cfg(out)
    return out, run_federation(InProcessTransport(setups_for(cfg, PLATFORMS, device="cpu")), cfg, table=False)


def test_folded_evaluation_gives_the_same_rounds_and_best_round(tmp_path: Path, at_once: tuple[Path, dict]) -> None:
    # Prepare
    cfg = _cfg(tmp_path)
    transport = Folding(cfg)
    # Execute
    summary = run_federation(transport, cfg, table=False)
    # Assert: round r's metrics come with round r + 1's training, the last round's in one closing
    # evaluation, then the best round's test; rounds.jsonl and the summary are the plain loop's
    reference, reference_summary = at_once
    assert transport.calls == [("train", 1, None), ("train", 2, 1), ("train", 3, 2), ("evaluate", 3),
                               ("evaluate", reference_summary["best_round"])]  # fmt: skip
    _same_rounds(tmp_path, reference)
    for key in ("best_round", "rounds_run", "mean", "test", "valid", "status"):
        assert summary[key] == reference_summary[key], key
    assert load_checkpoint(tmp_path, cfg.to_flat()).extra["pending"] is None  # nothing left waiting


def test_a_run_killed_while_a_round_awaits_its_metrics_resumes_without_gaps(
    tmp_path: Path, at_once: tuple[Path, dict]
) -> None:
    # Prepare: killed in round 3 before anything was sent; round 2 is checkpointed, its metrics not yet in
    cfg = _cfg(tmp_path)
    with pytest.raises(Crash):
        run_federation(Folding(cfg, crash_in_round=3), cfg, table=False)
    saved = load_checkpoint(tmp_path, cfg.to_flat())
    assert saved.round == 2 and saved.extra["pending"]["round"] == 2
    assert [r["round"] for r in _rounds(tmp_path)] == [1]
    # ... and a line for round 2 written just before the kill (after round 2's checkpoint)
    with open(tmp_path / ROUNDS_FILE, "a") as fh:
        fh.write(json.dumps({**_rounds(tmp_path)[0], "round": 2}) + "\n")
    # Execute: restart on the same run folder
    resumed = Folding(cfg)
    summary = run_federation(resumed, cfg, table=False)
    # Assert: round 3 evaluates round 2 on its way; every round once, as in the plain loop
    assert resumed.calls[:2] == [("train", 3, 2), ("evaluate", 3)]
    _same_rounds(tmp_path, at_once[0])
    assert summary["best_round"] == at_once[1]["best_round"] and summary["resumed_after_round"] == 2


def test_an_aborted_round_still_brings_the_previous_rounds_metrics(tmp_path: Path, at_once: tuple[Path, dict]) -> None:
    # Prepare: round 2's training aborts after its messages carried round 1's metric sum
    cfg = _cfg(tmp_path)
    transport = Folding(cfg, abort_round=2)
    # Execute
    run_federation(transport, cfg, table=False)
    # Assert: round 1 is complete, round 2 is recorded as aborted, round 3 trains from round 1's adapter
    rounds = _rounds(tmp_path)
    assert [r["round"] for r in rounds] == [1, 2, 3] and "aborted" in rounds[1]
    assert rounds[0]["eval"] == _rounds(at_once[0])[0]["eval"] and rounds[0]["mean"]
    assert transport.calls[:4] == [("train", 1, None), ("train", 2, 1), ("train", 3, None), ("evaluate", 3)]


def test_early_stopping_trains_one_round_more(tmp_path: Path) -> None:
    # Prepare: patience 1 on a metric that soon stops improving (hr@10 over a handful of candidates)
    cfg = _cfg(tmp_path, **{"fed.patience": 1, "fed.metric": "hr@10", "num-server-rounds": 5})
    transport = Folding(cfg)
    # Execute
    summary = run_federation(transport, cfg, table=False)
    # Assert: the plain loop stops after the first round k without improvement; here round k's
    # metrics arrive with round k + 1's training, so round k + 1 is trained (and evaluated) too
    rounds = _rounds(tmp_path)
    k = [r["improved"] for r in rounds].index(False) + 1
    assert k < 5, rounds  # the case this test is about: an early stop
    assert [r["round"] for r in rounds] == list(range(1, k + 2)) and summary["rounds_run"] == k + 1
    assert transport.calls[-2:] == [("evaluate", k + 1), ("evaluate", summary["best_round"])]
