"""What an operator sees of a real deployed federation: metrics by default, exit codes, status.

Real SuperLink/SuperNode processes on 127.0.0.1 (TLS, node authentication); the platforms keep
their defaults: secure aggregation required and NO per-platform metric sharing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from clients.audit import AUDIT_FILE
from clients.metrics_log import METRICS_LOG
from clients.private_state import private_folder
from common.audit import verify
from common.config import config_string
from common.run_files import ROUNDS_FILE, SUMMARY_FILE
from common.secagg.identity import load_public
from deploy.federation import Federation
from tests.deploy.settings import STATE, TINY

pytestmark = pytest.mark.slow

PAIR = ["app", "web_shop"]


def _cli(fed: Federation, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args, "--federation", fed.conn.name],
                          env=fed.env, capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


def test_default_platforms_give_mean_metrics_exit_codes_and_status(tmp_path: Path) -> None:
    # Prepare: two platforms with default node_config (no share-metrics), secure aggregation on, whose
    # operators accept a cohort of two (a deployed platform requires 3 by default)
    run, failed = tmp_path / "run", tmp_path / "failed"
    config = {**TINY, "num-server-rounds": 1, "fed.min-nodes": 2, "out-dir": str(run)}  # one round keeps CI short
    with Federation(tmp_path / "fed", PAIR, node_extra={**STATE, "secagg-min-cohort": 2}) as fed:
        # Execute: a run that completes, then one that cannot start (3 platforms needed, 2 online)
        ok = _cli(fed, "submit", "--run-config", config_string(config), "--stream")
        bad_config = {**config, "fed.min-nodes": 3, "fed.node-wait-s": 3.0, "out-dir": str(failed)}
        bad = _cli(fed, "submit", "--run-config", config_string(bad_config))
        status = _cli(fed, "status", "--json", timeout_s=60)
        text = _cli(fed, "status", timeout_s=60)
        diagnostics = fed.diagnostics()
    # Assert: exit 0 for the completed run, 1 with the reason for the failed one
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:] + diagnostics
    assert "completed" in ok.stdout
    assert bad.returncode == 1, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert "finished:failed" in bad.stderr and "only 2 platform(s) connected" in bad.stderr, bad.stderr[-2000:]
    # ... the server saw no platform's metrics, yet every round has the cohort's mean
    rounds = [json.loads(line) for line in (run / ROUNDS_FILE).read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1]
    for record in rounds:
        assert record["eval"] == {"app": {}, "web_shop": {}}, record["eval"]
        assert record["cohort"] == PAIR
        assert 0.0 <= record["mean"]["valid.auc"] <= 1.0 and record["mean"]["valid.n"] > 0, record["mean"]
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert math.isfinite(summary["mean"]["test.auc"]) and summary["best_cohort"] == PAIR
    # ... each platform kept its own metrics, every round (and the final test)
    for platform in PAIR:
        log = private_folder(str(run), platform, STATE["state-dir"]) / METRICS_LOG
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [line["round"] for line in lines] == [1, 1] and "valid.auc" in lines[0]["metrics"]  # + final test
        assert "test.auc" in lines[1]["metrics"]
    # ... and each platform's audit log (shared by this session's federations) verifies and has this run's
    # secure sums, once each, signed with the platform's identity
    for platform in PAIR:
        key = load_public(tmp_path / "fed" / "secagg" / f"{platform}.secagg.pub")[1]
        entries = [e for e in verify(Path(STATE["state-dir"]) / platform / AUDIT_FILE).entries if e["run"] == str(run)]
        assert sorted((e["round"], e["kind"]) for e in entries) == [(1, "evaluate-test"), (1, "evaluate-valid"),
                                                                    (1, "train")], entries  # fmt: skip
        assert all(e["key"] == key.hex() and e["cohort"] == 2 and e["epsilon"] is None for e in entries)
    # ... and status names both platforms, both runs, the last round and its mean metrics
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert sorted((p["platform"], p["status"]) for p in data["platforms"]) == [(p, "online") for p in PAIR]
    by_id = {r["out-dir"]: r for r in data["runs"]}
    assert by_id[str(run)]["status"] == "finished:completed" and by_id[str(run)]["round"] == 1
    assert "valid.auc" in by_id[str(run)]["metrics"]
    assert by_id[str(failed)]["status"] == "finished:failed"
    assert "platforms: 2 of 2 online" in text.stdout and "web_shop" in text.stdout, text.stdout
