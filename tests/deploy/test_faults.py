"""Deployed federations under secure aggregation and faults: real SuperLink/SuperNode processes.

Every federation runs with TLS and node authentication on 127.0.0.1 (``deploy.federation.Federation``);
platforms keep their secure defaults (they refuse rounds in the clear) unless a test says otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from clients.secure import HANG_FILE_ENV
from common.config import AppConfig
from common.run_files import SUMMARY_FILE, read_rounds
from common.secagg import STAGE_MASKED_INPUT, STAGE_UNMASK
from deploy.errors import DeployError
from deploy.federation import Federation
from deploy.flwr_cli import COMPLETED
from deploy.loadbench.dataset import write_bench_dataset
from deploy.worker import STALL_ENV
from server.checkpoint import MANIFEST as CHECKPOINT_MANIFEST
from simulations.local.simulate import run_simulated_federation, validate_inputs
from tests.deploy.fault_proxy import FaultProxy
from tests.deploy.settings import CLEAR, PLATFORMS, SHARE, STATE, TINY

pytestmark = pytest.mark.slow


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _checkpoint_round(run: Path) -> int:
    """The round of the run's last committed checkpoint (0 before the first)."""
    path = run / CHECKPOINT_MANIFEST
    try:
        return int(json.loads(path.read_text())["state"]["round"])
    except (OSError, ValueError, KeyError):  # not there yet, or replaced while we read it
        return 0


def _adapter(run: Path) -> dict[str, np.ndarray]:
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    tensors.update(load_file(str(run / "adapter" / "head.safetensors")))  # tower, user, head
    return tensors


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, fed: Federation) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{fed.diagnostics()}")
        time.sleep(0.1)


def _finish(fed: Federation, run_id: int, timeout_s: float = 420, status: str = COMPLETED) -> None:
    """Wait for the run's end and check Flower's status: completed, or failed for a run that lost rounds."""
    try:
        result = fed.wait(run_id, timeout_s)
    except DeployError as exc:  # not finished in time: say what every process was doing
        raise AssertionError(f"{exc}\n{fed.server_log(run_id)[-4000:]}\n{fed.diagnostics()}") from exc
    assert result.status == status, f"{result.status}\n{fed.server_log(run_id)[-4000:]}\n{fed.diagnostics()}"


def test_secure_deployed_federation_matches_the_simulation(tmp_path: Path) -> None:
    # Prepare: the same config and seed, simulated (Flower's simulation engine) and deployed
    config = {**TINY, "secagg": True}
    sim_cfg = AppConfig().replace(**{**config, "out-dir": str(tmp_path / "sim")})
    run_simulated_federation(sim_cfg, validate_inputs(sim_cfg), num_cpus=2)
    # Execute: deployed with the platforms' defaults (secure aggregation required) + metric sharing
    with Federation(tmp_path / "fed", PLATFORMS, node_extra=SHARE) as fed:
        _finish(fed, fed.submit({**config, "out-dir": str(tmp_path / "run")}))
    # Assert: every round fused all three platforms under secure aggregation, and the fused adapter
    # equals the simulated one within the quantisation bound
    rounds = read_rounds(tmp_path / "run")
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert set(record["train"]) == {"secure-aggregation"} and not record["failures"], record
        assert record["train"]["secure-aggregation"]["survivors"] == 3
    bound = sum(r["train"]["secure-aggregation"]["mean-error-bound"] for r in rounds)
    deployed, simulated = _adapter(tmp_path / "run"), _adapter(tmp_path / "sim")
    assert deployed.keys() == simulated.keys()
    worst = max(float(np.max(np.abs(deployed[k] - simulated[k]))) for k in deployed)
    assert worst <= bound, (worst, bound)
    summary = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert sorted(summary["test"]) == PLATFORMS and summary["adapter_changed"]


def test_platforms_refuse_rounds_in_the_clear_by_default(tmp_path: Path) -> None:
    # Prepare: deployed platforms with their defaults; the run asks for plain averaging
    with Federation(tmp_path / "fed", PLATFORMS[:2]) as fed:
        run_id = fed.submit({**TINY, "num-server-rounds": 1, "fed.min-nodes": 2, "out-dir": str(tmp_path / "run")})
        # Execute
        fed.wait(run_id, 300)
        log = fed.server_log(run_id)
    # Assert: no platform trained in the clear; each said why
    rounds = read_rounds(tmp_path / "run")
    assert not (tmp_path / "run" / SUMMARY_FILE).exists()
    assert not rounds or not rounds[0].get("train"), rounds
    assert "trains only under secure aggregation" in log, log[-3000:]


# After web_shop dies in round 1's training, one platform stops answering in a later stage of the
# protocol, one round each, and is killed there: (round, platform, stage). Each target was not killed in
# the round before, so it is surely back and in the cohort when its round starts. The two stages whose
# loss the protocol handles differently: before the masked inputs are in (the round cannot be summed)
# and during unmasking (the inputs are in, a share holder is gone). A death in every stage, share keys
# and the consistency check included, is tested in process (tests/secagg/test_protocol.py, its drop
# matrix); here each costs a real round.
STAGE_KILLS = [(2, "social_shop", STAGE_MASKED_INPUT), (3, "app", STAGE_UNMASK)]  # fmt: skip


def test_nodes_killed_at_every_stage_are_dropped_and_rejoin(tmp_path: Path) -> None:
    # Prepare: the README's deployment: 3 platforms with their default node_config (secure
    # aggregation required, metrics not shared) except that their operators accept a cohort of 2
    # (the platform default is 3: with 3 platforms t > 2n/3 leaves no dropout to recover, so a
    # death aborts that round instead); a run that needs all 3 to start (`fed.min-nodes=3`) and the
    # default `fed.min-round-nodes` (2) to go on. Deaths: web_shop while it trains in round 1 (before
    # it sends keys, so t = 2 of the other two), then one platform at each later stage (STAGE_KILLS:
    # 3 keyed, t = 3, so the round cannot finish and is aborted); each comes back after its round
    run = tmp_path / "run"
    hang = tmp_path / "hang"
    config = {**TINY, "secagg": True, "num-server-rounds": 5, "fed.min-nodes": 3, "out-dir": str(run)}
    with Federation(tmp_path / "fed", PLATFORMS, node_extra={**STATE, "secagg-min-cohort": 2},
                    env={HANG_FILE_ENV: str(hang)}) as fed:  # fmt: skip
        run_id = fed.submit(config)
        logs = tmp_path / "fed" / "logs"
        # Execute: kill web_shop (SuperNode + its ClientApp worker) while it trains in round 1 ...
        _wait_for(lambda: "web_shop: round 1: training" in _text(logs / "worker-web_shop.log"), 120,
                  "web_shop to start round 1", fed)  # fmt: skip
        fed.kill_node("web_shop")
        # ... and bring it back once round 1 is over (its checkpoint: its line waits for its metrics,
        # which ride on round 2's messages)
        _wait_for(lambda: _checkpoint_round(run) >= 1, 240, "round 1 to finish", fed)
        fed.start_node("web_shop")
        # ... then kill each stage's target when it stops answering there, back after its round
        for rnd, platform, stage in STAGE_KILLS:
            hang.write_text(f"{platform} {rnd} {stage}")
            said = f"round {rnd}: hanging at {stage}"
            _wait_for(lambda p=platform, s=said: s in _text(logs / f"worker-{p}.log"), 300,
                      f"{platform} to hang in round {rnd}", fed)  # fmt: skip
            fed.kill_node(platform)
            hang.unlink()
            _wait_for(lambda r=rnd: len(read_rounds(run)) >= r, 240, f"round {rnd} to end", fed)
            fed.start_node(platform)
        _finish(fed, run_id, status="finished:failed")  # it lost rounds 2-3 (on purpose): not "completed"
    # Assert: round 1 completed with the two survivors (secure-aggregation dropout path), each
    # stage's round was aborted naming that stage, the run went on, and every platform trained again
    # (a restarted node is back in time to evaluate the round it missed, to train the round after)
    rounds = read_rounds(run)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    for rnd, platform, stage in STAGE_KILLS:  # aborted at that stage, and the record says who dropped out
        record = rounds[rnd - 1]
        assert f"stage {stage}" in record.get("aborted", ""), record
        assert any(f.startswith(f"{platform} (node ") and f"({stage})" in f for f in record["failures"]), record
    assert not any(r.get("aborted") for r in rounds[:1] + rounds[3:]), rounds
    assert rounds[0]["train"]["secure-aggregation"]["survivors"] == 2, rounds[0]
    assert 3 in [r["train"]["secure-aggregation"]["survivors"] for r in rounds[3:]], rounds[3:]
    # web_shop never answered in this run before it died: named from the registration (fed.node-names)
    assert any(f.startswith("web_shop (node ") and "(setup)" in f for f in rounds[0]["failures"]), rounds[0]
    assert rounds[-1]["cohort"] == PLATFORMS and rounds[-1]["eval"]["web_shop"] == {}, rounds[-1]
    # round 1's metric sum rode on round 2's messages and died with app at share_keys (one of its two
    # platforms: web_shop did not train round 1): round 1 is recorded without metrics, saying why
    assert rounds[0]["mean"] == {} and any("(evaluate of round 1) aborted" in f for f in rounds[0]["failures"])
    # the mean of every later fused round came from the secure sum; the best round is a full-cohort one
    assert all("valid.auc" in r["mean"] for r in rounds[5:]), rounds[5:]
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["best_cohort"] == PLATFORMS, summary["best_cohort"]
    assert summary["status"] == "degraded" and [r["round"] for r in summary["lost_rounds"]] == [2, 3]


def test_a_node_killed_mid_round_is_waited_for_and_the_run_says_what_it_lost(tmp_path: Path) -> None:
    # Prepare: the README's deployment with the platforms' defaults: 3 platforms, secure aggregation
    # required and a minimum cohort of 3 on each (their node_config sets only where private state goes);
    # a run that needs all 3 to start. The straggler cut-off is shortened to keep the test short: the
    # round web_shop dies in waits that long for its keys before it is given up.
    run = tmp_path / "run"
    config = {**TINY, "secagg": True, "num-server-rounds": 4, "fed.min-nodes": 3, "fed.straggler-min-s": 20.0,
              "out-dir": str(run)}  # fmt: skip
    with Federation(tmp_path / "fed", PLATFORMS, node_extra=STATE) as fed:
        run_id = fed.submit(config)
        logs = tmp_path / "fed" / "logs"
        # Execute: kill web_shop (SuperNode + its worker) while it trains in round 2; restart it 10 s later
        _wait_for(lambda: "web_shop: round 2: training" in _text(logs / "worker-web_shop.log"), 240,
                  "web_shop to start round 2", fed)  # fmt: skip
        fed.kill_node("web_shop")
        time.sleep(10)
        fed.start_node("web_shop")
        result = fed.wait(run_id, 420)
        server_log = fed.server_log(run_id)
        diagnostics = fed.diagnostics()
    # Assert: the round web_shop died in is lost (its two peers refuse a cohort of 2); every later round
    # waited for it and fused all three
    rounds = read_rounds(run)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4], server_log[-3000:]
    assert rounds[1].get("aborted"), rounds[1]
    for record in rounds[:1] + rounds[2:]:
        assert not record.get("aborted"), (record, server_log[-4000:], diagnostics)
        assert record["train"]["secure-aggregation"]["survivors"] == 3, record
    # ... nothing was trained twice: each platform trained each round at most once
    for platform in PLATFORMS:
        text = _text(logs / f"worker-{platform}.log")
        assert all(text.count(f"{platform}: round {r}: training") <= 1 for r in range(1, 5)), platform
    # ... and the run says it lost round 2: summary "degraded", Flower's status failed, the reason logged
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "degraded" and [r["round"] for r in summary["lost_rounds"]] == [2], summary
    assert result.status == "finished:failed", result.status
    assert "LostRoundsError: run degraded: round 2 lost" in server_log, server_log[-3000:]


def test_five_platforms_two_killed_for_good_go_on_with_three(tmp_path: Path) -> None:
    # Prepare: 5 platforms with the platforms' default minimum cohort (3), a run that needs all 5 to
    # start and the default fed.min-round-nodes (2) to go on
    run = tmp_path / "run"
    names = write_bench_dataset(tmp_path / "data", 5)
    config = {**TINY, "secagg": True, "num-server-rounds": 3, "fed.min-nodes": 5, "fed.straggler-min-s": 20.0,
              "out-dir": str(run)}  # fmt: skip
    with Federation(tmp_path / "fed", names, data_dir=tmp_path / "data", node_extra=STATE) as fed:
        run_id = fed.submit(config)
        logs = tmp_path / "fed" / "logs"
        # Execute: two platforms die while they train in round 2 (each as soon as it starts, so before it
        # sends anything: one killed while uploading its reply stalls the round until Flower's object-push
        # session expires, 180 s) and never come back
        doomed = {names[3], names[4]}

        def kill_the_training() -> bool:
            for platform in sorted(doomed):
                if f"{platform}: round 2: training" in _text(logs / f"worker-{platform}.log"):
                    fed.kill_node(platform)
                    doomed.discard(platform)
            return not doomed

        _wait_for(kill_the_training, 300, "both to start round 2", fed)
        _finish(fed, run_id)
    # Assert: no round was lost; the rounds after the deaths fused the three that were left
    rounds = read_rounds(run)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert not any(r.get("aborted") for r in rounds), rounds
    assert rounds[0]["train"]["secure-aggregation"]["survivors"] == 5, rounds[0]
    assert rounds[2]["train"]["secure-aggregation"]["survivors"] == 3 and rounds[2]["cohort"] == names[:3], rounds[2]
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "completed" and summary["lost_rounds"] == []


def test_server_killed_mid_run_resumes_without_losing_or_repeating_a_round(tmp_path: Path) -> None:
    # Prepare: a 4-round run in the clear (resume is the ServerApp's business, not secure aggregation's)
    run = tmp_path / "run"
    config = {**TINY, "num-server-rounds": 4, "out-dir": str(run)}
    # The SuperLink dies while it delivers round 3: a worker that had acquired that task gives up on
    # its message after 15 s without an object (60 s by default) and serves the resumed run
    env = {STALL_ENV: "15"}
    with Federation(tmp_path / "fed", PLATFORMS, node_extra=CLEAR, env=env) as fed:
        first = fed.submit(config)
        # (a round is committed by its checkpoint, written just after its line in rounds.jsonl)
        _wait_for(lambda: _checkpoint_round(run) >= 2, 300, "two checkpointed rounds", fed)
        # Execute: kill the SuperLink and its ServerApp, restart it (same database, port, keys) ...
        fed.kill_superlink()
        killed_after = len(read_rounds(run))
        fed.start_superlink()
        fed.wait_nodes_online(PLATFORMS)
        # ... and submit the same run again: it continues from the checkpoint in the run folder
        _finish(fed, fed.submit(config))
        assert first is not None
    # Assert: rounds 1..4 exactly once each; the resumed run picked up after the last completed round
    rounds = read_rounds(run)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["resumed_after_round"] in (killed_after, killed_after - 1, killed_after + 1)
    assert summary["resumed_after_round"] >= 2 and summary["rounds_run"] == 4
    assert all(sorted(r["train"]) == PLATFORMS for r in rounds if r["round"] > summary["resumed_after_round"])


def test_platform_with_missing_data_is_left_out_with_one_clear_error(tmp_path: Path) -> None:
    # Prepare: web_shop's node points at a data folder that does not exist
    run = tmp_path / "run"
    missing = tmp_path / "no-such-dataset"
    with Federation(tmp_path / "fed", PLATFORMS[:2], node_extra=CLEAR) as fed:
        fed.platforms.append("web_shop")
        fed.keys["web_shop"] = fed.keys.get("web_shop") or _register(fed, "web_shop")
        fed.start_node("web_shop", data_dir=str(missing))
        fed.wait_nodes_online(["web_shop"])
        # Execute
        _finish(fed, fed.submit({**TINY, "num-server-rounds": 1, "out-dir": str(run)}))
    # Assert: the round went on with the two good platforms; the failure names the platform and the path
    (record,) = read_rounds(run)
    assert sorted(record["train"]) == PLATFORMS[:2]
    lines = [f for f in record["failures"] if "web_shop" in f]  # its train and its evaluate message
    assert lines and all(f"DatasetError: {missing}" in line for line in lines), record["failures"]
    assert (run / SUMMARY_FILE).exists()


def _register(fed: Federation, platform: str):  # noqa: ANN202
    from deploy.certs import create_node_key
    from deploy.flwr_cli import register_node

    key = create_node_key(fed.certs_dir, platform)
    fed.node_ids[platform] = register_node(key.public, fed.conn, fed.env, name=platform)
    return key


class _AppViaProxy(Federation):
    """A federation whose ``app`` SuperNode dials the SuperLink through a :class:`FaultProxy`."""

    def __init__(self, *args: Any, faults: dict[str, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults = faults
        self.proxy: FaultProxy | None = None

    def start_superlink(self) -> Any:
        daemon = super().start_superlink()
        if self.proxy is None:  # the TLS files exist now; the nodes start next
            assert self.tls is not None
            self.proxy = FaultProxy(self.address, self.tls, self.faults).__enter__()
        return daemon

    def node_spec(self, platform: str, **overrides: Any) -> Any:
        if platform == "app" and self.proxy is not None:
            overrides.setdefault("superlink", self.proxy.address)
        return super().node_spec(platform, **overrides)

    def close(self) -> None:
        super().close()
        if self.proxy is not None:
            self.proxy.__exit__()


def test_superlink_http_500s_are_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    # Prepare: a busy SuperLink answers some calls with HTTP 500 (SQLite "database is locked");
    # flwr 1.42 alone would drop the reply (push-object, push-messages) or the message
    # (pull-object), and a 500 heartbeat would end the node's heartbeat thread for good
    faults = {"/v1/fleet/push-object": 2, "/v1/fleet/push-messages": 1, "/v1/fleet/pull-object": 1,
              "/v1/fleet/send-node-heartbeat": 1}  # fmt: skip
    run = tmp_path / "run"
    config = {**TINY, "secagg": True, "fed.straggler-factor": 0.0, "out-dir": str(run)}
    # Execute: app's SuperNode talks to the SuperLink through the fault-injecting proxy
    with _AppViaProxy(tmp_path / "fed", PLATFORMS, node_extra=SHARE, faults=faults) as fed:
        _finish(fed, fed.submit(config))
        node_log = (tmp_path / "fed" / "logs" / "supernode-app.log").read_text(errors="replace")
        assert fed.proxy is not None
        injected, forwarded = dict(fed.proxy.injected), dict(fed.proxy.forwarded)
    # Assert: every fault was injected, each was retried, and no round missed app
    assert injected == faults, injected
    assert forwarded["/v1/fleet/push-messages"] >= 4  # 2 rounds x (train + evaluate) replies
    assert node_log.count("SuperLink answered HTTP 500") == 4, node_log[-3000:]
    assert "SuperLink answered a heartbeat with HTTP 500" in node_log
    assert "Failed to send message" not in node_log
    rounds = read_rounds(run)
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert not record["failures"], record
        assert record["train"]["secure-aggregation"]["survivors"] == 3
        assert "app" in record["eval"], record["eval"]
