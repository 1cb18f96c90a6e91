"""deploy.operate / deploy.cli helpers an operator relies on: failure reasons, status lines, refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deploy.book import node_names, read_book, remember_node, remember_run
from deploy.cli import refusal_hint
from deploy.commands import SuperNodeSpec
from deploy.operate import failure_reason, format_status, latest_round
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
