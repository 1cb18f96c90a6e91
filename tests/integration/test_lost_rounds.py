"""A run that lost rounds says so: summary.json ``status`` "degraded" or "failed", the lost rounds named.

The loop (:func:`server.federation.run_federation`) is the one the ServerApp runs, driven here by the
real in-process transport with a tiny model; a round is lost the way a deployed one is, by RoundAborted.
"""

import json
from pathlib import Path

import pytest

from common.config import TINY_PRESET, AppConfig
from common.run_files import ADAPTER_DIR, SUMMARY_FILE
from server.federation import FederationError, RoundAborted, run_federation
from simulations.compare.inprocess import InProcessTransport, setups_for

PLATFORMS = ["app", "social_shop", "web_shop"]
TINY = {**TINY_PRESET, "train.max-examples": 16, "eval.max-rank-users": 2, "num-server-rounds": 3, "fed.patience": 0}


class LosingTransport(InProcessTransport):
    """The real in-process transport, whose chosen rounds are lost (as a deployed round without quorum)."""

    def __init__(self, cfg: AppConfig, lose: set[int]) -> None:
        super().__init__(setups_for(cfg, PLATFORMS, device="cpu"))
        self.lose = lose

    def train_round(self, state, cfg, rnd):  # noqa: ANN001, ANN201
        if rnd in self.lose:
            raise RoundAborted(f"no quorum after 1 s: round {rnd}: waiting for 3 platform(s)", ["web_shop"])
        return super().train_round(state, cfg, rnd)


def _cfg(out: Path) -> AppConfig:
    return AppConfig().replace(**{**TINY, "out-dir": str(out)})


def test_a_lost_round_makes_the_run_degraded_and_is_named(tmp_path: Path) -> None:
    # Execute: round 2 of 3 is lost
    summary = run_federation(LosingTransport(_cfg(tmp_path), {2}), _cfg(tmp_path), table=False)
    # Assert: the run still saves its best fused round, and says which round it lost and why
    assert summary["status"] == "degraded"
    assert summary["lost_rounds"] == [{"round": 2, "reason": "no quorum after 1 s: round 2: waiting for 3 platform(s)"}]
    assert summary["best_round"] in (1, 3) and (tmp_path / ADAPTER_DIR).is_dir()
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["status"] == "degraded"


def test_no_fused_round_is_failed_with_a_summary_and_no_adapter(tmp_path: Path) -> None:
    with pytest.raises(FederationError, match=r"no round fused: rounds 1, 2, 3 lost \(round 1: no quorum"):
        run_federation(LosingTransport(_cfg(tmp_path), {1, 2, 3}), _cfg(tmp_path), table=False)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed" and [r["round"] for r in summary["lost_rounds"]] == [1, 2, 3]
    assert not (tmp_path / ADAPTER_DIR).exists()
