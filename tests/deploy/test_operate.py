"""What an operator sees of a real deployed federation: metrics by default, exit codes, status.

Real SuperLink/SuperNode processes on 127.0.0.1 (TLS, node authentication); the platforms keep
their defaults: secure aggregation required and NO per-platform metric sharing.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clients.audit import AUDIT_FILE
from clients.metrics_log import METRICS_LOG
from clients.private_state import private_folder
from common.audit import verify
from common.config import config_string
from common.run_files import ROUNDS_FILE, SUMMARY_FILE
from common.secagg.identity import load_public
from deploy.errors import DeployError
from deploy.federation import Federation
from deploy.flwr_cli import RunStatusClient, run_status
from server.checkpoint import MANIFEST, saved_round
from tests.deploy.settings import STATE, TINY
from tests.tensorboard_events import read_scalars

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
        # ... and the in-process status `deploy submit` waits with is `flwr ls`'s record, word for word
        with RunStatusClient(fed.conn, fed.env) as client:
            in_process = client.status(_run_id(ok))
            with pytest.raises(DeployError, match="Run ID not found"):
                client.status(12345)
        assert in_process == run_status(_run_id(ok), fed.conn, fed.env)
        assert in_process["status"] == "finished:completed"
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
        assert sorted((e["round"], e["kind"]) for e in entries) == [(1, "evaluate"), (1, "test"),
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


def _run_id(out: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"run (\d+) started", out.stdout)
    assert found, out.stdout[-2000:] + out.stderr[-2000:]
    return int(found.group(1))


def _wait_checkpoint(run_dir: Path, fed: Federation, timeout_s: float = 300.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (done := saved_round(run_dir)) is None:
        assert time.monotonic() < deadline, f"no round checkpointed in {run_dir}\n{fed.diagnostics()}"
        time.sleep(0.5)
    return done


def test_one_run_at_a_time_stop_keeps_the_checkpoint_a_resume_takes(tmp_path: Path) -> None:
    ROUNDS = 8  # noqa: N806
    # Prepare: two platforms that accept a cohort of two and keep their own TensorBoard scalars
    run_a, run_b, tb, own_tb = tmp_path / "a", tmp_path / "b", tmp_path / "tb", tmp_path / "tb-platform"
    # no node dies here: a long stage timeout keeps a loaded CI machine's slow reply from aborting a round
    # 8 rounds: two CLI calls go by between run A's first checkpoint and its stop, and a secure round is 5
    # messages (the metric sum rides on the next round's): with 4 rounds A had checkpointed all of them
    config = {**TINY, "num-server-rounds": ROUNDS, "fed.min-nodes": 2, "out-dir": str(run_a),
              "secure.stage-timeout-s": 180.0}  # fmt: skip
    node_extra = {**STATE, "secagg-min-cohort": 2, "tensorboard-dir": str(own_tb)}
    with Federation(tmp_path / "fed", PAIR, node_extra=node_extra) as fed:
        # Execute: run A; once its round 1 is committed, a second submit, then one with --replace
        first = _cli(fed, "submit", "--run-config", config_string(config), "--detach")
        run_a_id = _run_id(first)
        _wait_checkpoint(run_a, fed)
        refused = _cli(fed, "submit", "--run-config", config_string({**config, "out-dir": str(run_b)}), "--detach")
        replaced = _cli(fed, "submit", "--replace", "--detach",
                        "--run-config", config_string({**config, "out-dir": str(run_b)}))  # fmt: skip
        stopped = _cli(fed, "stop")  # run B, the active one
        nothing = _cli(fed, "stop")
        status = json.loads(_cli(fed, "status", "--json", timeout_s=60).stdout)
        done = saved_round(run_a)
        # a secure round's metrics ride on the next round: A may have stopped with round `done` awaiting them
        pending = json.loads((run_a / MANIFEST).read_text())["state"]["extra"].get("pending") is not None
        # ... then run A again on its folder: it resumes after its last committed round
        resumed = _cli(fed, "submit", "--stream", "--tensorboard", str(tb), "--run-config", config_string(config))
        diagnostics = fed.diagnostics()
        node_logs = {p.name: p.read_text(errors="replace") for p in fed.logs.glob("*node-*.log")}
        node_logs.update({p.name: p.read_text(errors="replace") for p in fed.logs.glob("worker-*.log")})
    # Assert: the second submit was refused with exit 2, naming run A and since when
    assert first.returncode == 0, first.stderr[-2000:] + diagnostics
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert f"run {run_a_id} (running since 20" in refused.stderr and "--replace" in refused.stderr, refused.stderr
    # ... --replace stopped A (its checkpoint named), then started B; `stop` stopped B, a second one had nothing
    assert replaced.returncode == 0, replaced.stdout[-2000:] + replaced.stderr[-2000:] + diagnostics
    assert f"run {run_a_id} finished:stopped; its checkpoint in {run_a} holds round" in replaced.stdout
    run_b_id = _run_id(replaced)
    assert stopped.returncode == 0 and f"run {run_b_id} finished:stopped" in stopped.stdout, stopped.stdout
    assert nothing.returncode == 0 and "no active run on federation crossfed-test" in nothing.stdout, nothing.stdout
    by_id = {r["run-id"]: r["status"] for r in status["runs"]}
    assert by_id[run_a_id] == by_id[run_b_id] == "finished:stopped", by_id
    # ... A's checkpoint holds its last completed round (1 or more), and the resumed run started after it
    assert done is not None and 1 <= done < ROUNDS
    summary = json.loads((run_a / SUMMARY_FILE).read_text())
    assert summary["resumed_after_round"] == done and summary["rounds_run"] == ROUNDS
    rows = [json.loads(line) for line in (run_a / ROUNDS_FILE).read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1)), rows
    # ... at most the round in flight was lost: rerun, or, when the platforms had already sent its masked
    # input, refused by them (a round is never contributed to twice) and recorded as aborted; later ones fused
    assert all("aborted" not in r for r in rows[:done] + rows[done + 1 :]), rows
    fused = [r["round"] for r in rows[done:] if "aborted" not in r]
    lost = "aborted" in rows[done]  # then the run is degraded, not completed: exit 1 naming the round
    assert resumed.returncode == (1 if lost else 0), resumed.stdout[-3000:] + resumed.stderr[-3000:] + diagnostics
    assert summary["status"] == ("degraded" if lost else "completed"), summary["status"]
    if lost:
        assert f"round {done + 1}/{ROUNDS}: aborted after" in resumed.stdout, resumed.stdout
        assert "already received this platform's masked input" in resumed.stdout, resumed.stdout
        assert f"degraded: round {done + 1} lost" in resumed.stderr, resumed.stderr[-2000:]
    # ... the stream showed one plain line per fused round (cohort, seconds, aggregate metrics)
    for rnd in fused:
        assert re.search(rf"round {rnd}/{ROUNDS}: cohort 2, [\d.]+ s, valid\.auc 0\.\d{{4}}", resumed.stdout), (
            resumed.stdout
        )
    # ... TensorBoard: the server's aggregate metrics in tb/server, each platform's own under its folder
    server_tags = read_scalars(tb / "server")
    # (a round awaiting its metrics at the stop gets them now, unless the platforms had already sent them on
    # the round in flight: then they refuse twice and its line stays without metrics)
    closed_now = [done] if pending and rows[done - 1]["mean"] else []
    assert [step for step, _ in server_tags["valid.auc/mean"]] == closed_now + fused
    for platform in PAIR:
        own = private_folder(str(run_a), platform, STATE["state-dir"]).name
        tags = read_scalars(own_tb / platform / own)
        assert {"valid.auc", "train.train-loss"} <= set(tags), sorted(tags)
    # ... and the nodes' logs are plain text: no colour codes, no Flower DEBUG, no warning twice
    for name, text in node_logs.items():
        assert "\x1b[" not in text and "DEBUG" not in text, f"{name}:\n{text[-3000:]}"
        assert "WARNING flwr:" not in text, f"{name}:\n{text[-3000:]}"  # a Flower warning's second copy (root)
