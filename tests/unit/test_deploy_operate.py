"""deploy.operate / deploy.cli helpers an operator relies on: failure reasons, status lines, refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deploy.book import node_names, read_book, remember_node, remember_run
from deploy.cli import refusal_hint
from deploy.commands import SuperNodeSpec
from deploy.flwr_cli import Connection
from deploy.operate import failure_reason, format_status, latest_round, run_outcome
from deploy.supernode_entry import quiet_flower_chatter

LOG = """INFO :      [ROUND 1]
Traceback (most recent call last):
  File "server/messaging.py", line 35, in wait_for_nodes
server.federation.FederationError: only 2 platform(s) connected after 3 s, `fed.min-nodes` = 3
"""


def test_failure_reason_is_the_exception_that_ended_the_run() -> None:
    assert failure_reason(LOG) == "FederationError: only 2 platform(s) connected after 3 s, `fed.min-nodes` = 3"
    assert failure_reason("INFO all good\n") == ""


def test_latest_round_and_status_lines(tmp_path: Path) -> None:
    # Prepare: a run folder whose last round missed web_shop
    rounds = [{"round": 1, "mean": {"valid.auc": 0.61, "valid.n": 40.0}, "failures": [], "cohort": ["app", "web"]},
              {"round": 2, "mean": {"valid.auc": 0.64, "valid.n": 30.0}, "cohort": ["app"],
               "failures": ["web (node 7) (setup): no reply in time"]}]  # fmt: skip
    (tmp_path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    # Execute
    latest = latest_round(str(tmp_path))
    text = format_status({
        "federation": "prod", "superlink": "fl:9093",
        "platforms": [{"platform": "app", "node-id": 5, "status": "online", "online-at": "t1"},
                      {"platform": "web", "node-id": 7, "status": "offline", "offline-at": "t2"}],
        "runs": [{"run-id": 42, "status": "running", "elapsed": "00:01:00", **latest}],
    })  # fmt: skip
    # Assert
    assert latest == {"round": 2, "failures": rounds[1]["failures"], "metrics": {"valid.auc": 0.64},
                      "cohort": ["app"]}  # fmt: skip
    assert "platforms: 1 of 2 online" in text and "round 2  valid.auc 0.6400" in text
    assert "failure: web (node 7) (setup): no reply in time" in text
    assert latest_round(str(tmp_path / "missing")) == {} and latest_round(None) == {}


def test_a_degraded_run_exits_non_zero_and_status_names_its_lost_rounds(tmp_path: Path) -> None:
    # Prepare: a run whose round 2 was lost, as its ServerApp wrote it, noted in the book by `deploy submit`
    run = tmp_path / "run"
    run.mkdir()
    rounds = [{"round": 1, "mean": {"valid.auc": 0.6}, "cohort": ["app", "web"], "failures": []},
              {"round": 2, "aborted": "no quorum after 120 s: round 2: waiting for 3 platform(s)", "failures": []},
              {"round": 3, "mean": {"valid.auc": 0.7}, "cohort": ["app", "web"], "failures": []}]  # fmt: skip
    (run / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    lost = [{"round": 2, "reason": rounds[1]["aborted"]}]
    (run / "summary.json").write_text(json.dumps({"status": "degraded", "lost_rounds": lost}))
    remember_run(tmp_path, "prod", 42, str(run))
    conn = Connection("prod", "fl:9093", None, flwr_home=tmp_path)
    # Execute
    code, line = run_outcome(42, {"status": "finished:failed"}, conn, {})
    latest = latest_round(str(run))
    text = format_status({"federation": "prod", "superlink": "fl:9093", "platforms": [],
                          "runs": [{"run-id": 42, "status": "finished:failed", **latest}]})  # fmt: skip
    # Assert: exit 1 with the lost round and its reason; status shows the run's own word and the lost round
    assert code == 1
    assert line == ("run 42 finished:failed: degraded: round 2 lost (round 2: no quorum after 120 s: round 2: "
                    "waiting for 3 platform(s))")  # fmt: skip
    assert latest["run-status"] == "degraded" and latest["lost-rounds"] == [2]
    assert "run 42  finished:failed  round 3  valid.auc 0.7000  degraded: lost round(s) 2" in text
    # ... and a run Flower calls completed is not, when its summary says degraded
    assert run_outcome(42, {"status": "finished:completed"}, conn, {})[0] == 1


def test_book_names_nodes_and_runs_per_federation(tmp_path: Path) -> None:
    remember_node(tmp_path, "prod", 5, "app")
    remember_node(tmp_path, "staging", 5, "other")
    remember_run(tmp_path, "prod", 42, "/srv/run1")
    assert node_names(tmp_path, "prod") == {"5": "app"}
    assert read_book(tmp_path)["prod"]["runs"]["42"]["out-dir"] == "/srv/run1"
    (tmp_path / "crossfed.json").write_text("{broken")
    assert node_names(tmp_path, "prod") == {}  # a damaged book costs names, never a command


def test_refusal_hint_names_what_to_check(tmp_path: Path) -> None:
    spec = SuperNodeSpec("web_shop", "fl:9093", tmp_path / "ca.pem", tmp_path / "web_shop.key")
    hint = refusal_hint(spec)
    assert "web_shop could not join fl:9093" in hint and "crossfed deploy register --key" in hint
    assert "trusts the CA" in hint and "\n" not in hint


@pytest.mark.parametrize(
    ("message", "level", "kept"),
    [
        ("[RUN 968, ROUND 2]", logging.INFO, False),
        ("Received successfully", logging.INFO, False),
        ("Sending: evaluate.secagg message (ID: a79)", logging.INFO, False),
        ("", logging.INFO, False),
        ("SuperNode ID: 13898351035860326694", logging.INFO, True),  # federation.Federation waits for this line
        ("Connection attempt failed, retrying in 0.7 seconds", logging.WARNING, True),
        ("Sent successfully", logging.WARNING, True),  # never drop a warning
    ],
)
def test_supernode_log_drops_only_flower_per_message_chatter(message: str, level: int, kept: bool) -> None:
    record = logging.LogRecord("flwr", level, __file__, 0, message, (), None)
    assert quiet_flower_chatter(record) is kept


def test_submit_adds_the_registered_names_unless_the_run_config_sets_them() -> None:
    from deploy.flwr_cli import with_node_names

    names = {"123": "web_shop", "45": "app"}
    assert with_node_names({"secagg": True}, names) == {"secagg": True, "fed.node-names": "45=app,123=web_shop"}
    assert with_node_names({"fed.node-names": "7=x"}, names) == {"fed.node-names": "7=x"}
    assert with_node_names({"secagg": True}, {}) == {"secagg": True}


@pytest.mark.parametrize(
    ("record", "active", "label"),
    [
        ({"run-id": "7", "status": "running", "pending-at": "t0", "running-at": "t2"}, True,
         "run 7 (running since t2)"),
        ({"run-id": "8", "status": "pending", "pending-at": "t0"}, True, "run 8 (pending since t0)"),
        ({"run-id": "9", "status": "starting", "starting-at": "", "pending-at": "t0"}, True,
         "run 9 (starting since t0)"),
        ({"run-id": "3", "status": "finished:stopped", "finished-at": "t9"}, False,
         "run 3 (finished:stopped since t9)"),
        ({"run-id": "4", "status": "finished:completed"}, False, "run 4 (finished:completed)"),
    ],
)  # fmt: skip
def test_a_run_is_active_until_it_finishes_and_is_named_with_since_when(record: dict, active: bool,
                                                                         label: str) -> None:  # fmt: skip
    from deploy.flwr_cli import is_active
    from deploy.operate import run_label

    assert is_active(record) is active
    assert run_label(record) == label


def test_resume_hint_names_the_checkpointed_round(tmp_path: Path) -> None:
    from collections import OrderedDict

    import numpy as np

    from deploy.operate import resume_hint
    from server.checkpoint import RunState, save_checkpoint

    # Prepare: a run folder whose checkpoint holds round 2
    state = RunState(round=2, global_state=OrderedDict(w=np.zeros(3, dtype=np.float32)), config={"seed": 0})
    save_checkpoint(tmp_path / "run", state, key=b"k" * 32)
    # Execute / Assert
    assert f"its checkpoint in {tmp_path / 'run'} holds round 2: resume" in resume_hint(str(tmp_path / "run"))
    assert "no completed round" in resume_hint(str(tmp_path / "empty"))
    assert resume_hint(None) == ""
    (tmp_path / "run" / "checkpoint.json").write_text("{broken")
    assert "unreadable" in resume_hint(str(tmp_path / "run"))


NODE_LOGS = """
import logging, warnings
from deploy.supernode_entry import node_console
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
node_console()
from flwr.common.logger import log
log(logging.DEBUG, "flower debug line")
log(logging.WARNING, "Connection attempt failed, retrying in 0.5 seconds")
log(logging.INFO, "SuperNode ID: 42")
logging.getLogger("crossfed.worker").info("task 1 completed")
warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)
"""


def test_node_log_is_plain_text_each_line_once_without_flower_debug(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    # Prepare: a node's log is a file (not a terminal), as the kits and Federation write it
    path = tmp_path / "node.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CROSSFED_SUPERNODE_VERBOSE")}
    # Execute
    with path.open("wb") as fh:
        subprocess.run([sys.executable, "-c", NODE_LOGS], stdout=fh, stderr=subprocess.STDOUT, env=env, check=True,
                       timeout=120)  # fmt: skip
    text = path.read_text()
    # Assert: no colour codes, no DEBUG, the warning once, the node id and crossfed's line kept
    assert "\x1b[" not in text, text
    assert "flower debug line" not in text and "DEBUG" not in text, text
    assert text.count("Connection attempt failed") == 1, text
    assert text.count("SuperNode ID: 42") == 1 and text.count("task 1 completed") == 1, text
    assert "is_gradient_checkpointing" not in text, text  # library FutureWarnings: only with verbose
