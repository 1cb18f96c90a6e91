"""A federation that dies resumes from its last completed round: nothing lost, nothing counted twice.

The same loop (:func:`server.federation.run_federation`) runs under the ServerApp; here it is
driven in-process with a tiny model so a crash can be injected at an exact point.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from common.config import TINY_PRESET, AppConfig
from common.run_files import ROUNDS_FILE, SUMMARY_FILE
from server.checkpoint import MANIFEST, CheckpointError, load_checkpoint
from server.federation import run_federation
from simulations.compare.inprocess import InProcessTransport, setups_for

TINY = {
    **TINY_PRESET, "train.max-examples": 48, "eval.max-rank-users": 2, "num-server-rounds": 3,
    "fed.patience": 0, "fed.optimizer": "adam", "fed.server-lr": 0.01,
}  # fmt: skip
PLATFORMS = ["app", "social_shop", "web_shop"]


class Crash(RuntimeError):
    """Stands in for the coordinator dying (a kill, a reboot)."""


class CountingTransport(InProcessTransport):
    """The real in-process transport, counting trained rounds; optionally dies in one of them."""

    def __init__(self, cfg: AppConfig, crash_in_round: int | None = None) -> None:
        super().__init__(setups_for(cfg, PLATFORMS, device="cpu"))
        self.crash_in_round = crash_in_round
        self.trained: list[int] = []

    def train_round(self, state, cfg, rnd):  # noqa: ANN001, ANN201
        if rnd == self.crash_in_round:
            raise Crash(f"coordinator killed in round {rnd}")
        self.trained.append(rnd)
        return super().train_round(state, cfg, rnd)


def _cfg(out: Path, **extra: object) -> AppConfig:
    return AppConfig().replace(**{**TINY, "out-dir": str(out), **extra})


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ROUNDS_FILE).read_text().splitlines()]


def _run(cfg: AppConfig, crash_in_round: int | None = None) -> tuple[dict | None, CountingTransport]:
    transport = CountingTransport(cfg, crash_in_round)
    try:
        return run_federation(transport, cfg), transport
    except Crash:
        return None, transport


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("straight")
    summary, transport = _run(_cfg(out))
    assert transport.trained == [1, 2, 3]
    return out, summary


def test_killed_run_resumes_after_last_completed_round(tmp_path: Path, uninterrupted: tuple[Path, dict]) -> None:
    # Prepare: a run killed during round 3's training (rounds 1 and 2 completed)
    straight, straight_summary = uninterrupted
    cfg = _cfg(tmp_path)
    summary, first = _run(cfg, crash_in_round=3)
    assert summary is None and first.trained == [1, 2]
    saved = load_checkpoint(tmp_path, cfg.to_flat())
    assert saved.round == 2 and saved.extra["wall_seconds"] > 0
    # Execute: restart on the same run folder
    summary, second = _run(cfg)
    # Assert: only round 3 was trained again; every round is in rounds.jsonl exactly once, and the
    # resumed run (FedAdam moments, best round, counters restored) ends where the straight one did
    assert second.trained == [3]
    assert [r["round"] for r in _rounds(tmp_path)] == [1, 2, 3]
    assert summary["resumed_after_round"] == 2 and summary["rounds_run"] == 3
    # the run's wall time counts the first start up to its last checkpoint, not only the resumed part
    assert summary["wall_seconds"] >= saved.extra["wall_seconds"] + summary["wall_seconds_this_start"] - 1e-6
    assert summary["best_round"] == straight_summary["best_round"]
    for a, b in zip(_rounds(tmp_path), _rounds(straight), strict=True):
        assert a["train"] == b["train"] and a["eval"] == b["eval"]
    assert summary["test"] == straight_summary["test"]
    resumed = load_checkpoint(tmp_path, cfg.to_flat())
    reference = load_checkpoint(straight, cfg.replace(**{"out-dir": str(straight)}).to_flat())
    for key, value in reference.global_state.items():
        np.testing.assert_array_equal(resumed.global_state[key], value)
    for key, value in reference.optimizer_state.items():
        np.testing.assert_array_equal(resumed.optimizer_state[key], value)


def test_a_line_written_after_the_last_checkpoint_is_not_counted_twice(tmp_path: Path) -> None:
    # Prepare: a run killed after round 2's rounds.jsonl line but before its checkpoint
    cfg = _cfg(tmp_path, **{"num-server-rounds": 1})
    _run(cfg)
    row = _rounds(tmp_path)[0]
    with open(tmp_path / ROUNDS_FILE, "a") as fh:
        fh.write(json.dumps({**row, "round": 2}) + "\n")
    # Execute
    summary, transport = _run(cfg.replace(**{"num-server-rounds": 2}))
    # Assert
    assert transport.trained == [2]
    assert [r["round"] for r in _rounds(tmp_path)] == [1, 2]
    assert summary["rounds_run"] == 2


@pytest.mark.parametrize("damage", ["truncate-tensors", "edit-manifest"])
def test_damaged_checkpoint_is_refused_and_nothing_is_lost(tmp_path: Path, damage: str) -> None:
    # Prepare: one completed round, then a damaged checkpoint
    cfg = _cfg(tmp_path, **{"num-server-rounds": 1})
    _run(cfg)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    if damage == "truncate-tensors":
        tensors = tmp_path / manifest["tensors"]["file"]
        tensors.write_bytes(tensors.read_bytes()[:-100])
    else:
        manifest["state"]["best_round"] = 0
        (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    rounds_before = (tmp_path / ROUNDS_FILE).read_text()
    # Execute / Assert: a clear error naming the file; the finished round's outputs are untouched
    with pytest.raises(CheckpointError, match=r"checkpoint|SHA-256"):
        _run(cfg.replace(**{"num-server-rounds": 2}))
    assert (tmp_path / ROUNDS_FILE).read_text() == rounds_before
    assert (tmp_path / SUMMARY_FILE).exists()


def test_other_config_is_refused_unless_resume_is_off(tmp_path: Path) -> None:
    # Prepare
    cfg = _cfg(tmp_path, **{"num-server-rounds": 1})
    _run(cfg)
    # Execute / Assert: another LoRA rank cannot continue this run ...
    with pytest.raises(CheckpointError, match=r"`lora.r` \(checkpoint 4, now 8\)"):
        _run(cfg.replace(**{"lora.r": 8}))
    # ... and `fed.resume = false` starts the folder over
    summary, transport = _run(cfg.replace(**{"lora.r": 8, "fed.resume": False}))
    assert transport.trained == [1] and summary["resumed_after_round"] is None
    assert [r["round"] for r in _rounds(tmp_path)] == [1]
