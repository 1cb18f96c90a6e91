"""Real Flower Deployment Engine processes on 127.0.0.1: TLS, node authentication, a federation.

Every test starts a TLS SuperLink (``--enable-supernode-auth``) with certificates made in
its temp dir, on free ports, and tears every process down (also on failure) through
``deploy.federation.Federation``. Logs are under the test's tmp dir and printed on failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.certs import create_node_key, create_tls
from deploy.errors import DeployError, InsecureDeploymentWarning
from deploy.federation import Federation
from deploy.flwr_cli import Connection, list_nodes, register_node
from tests.deploy.settings import CLEAR, PLATFORMS, TINY

pytestmark = pytest.mark.slow

REFUSED_WITHIN_S = 40  # a refused SuperNode exits (Flower exit code 305) well before this


def test_three_platforms_two_rounds_over_tls(tmp_path: Path) -> None:
    # Prepare: TLS + node auth, one warm ClientApp worker per platform
    with Federation(tmp_path, PLATFORMS, node_extra=CLEAR) as fed:
        # Execute
        result = fed.run({**TINY, "out-dir": str(tmp_path / "run")}, timeout_s=420)
        # Assert (a run whose platforms all failed still "completes": check what it wrote)
        assert result.ok, f"{result.status}\n{fed.server_log(result.run_id)[-4000:]}\n{fed.diagnostics()}"
        summary_path = tmp_path / "run" / "summary.json"
        assert summary_path.is_file(), fed.server_log(result.run_id)[-4000:]
        worker_logs = {p: (tmp_path / "logs" / f"worker-{p}.log").read_text() for p in PLATFORMS}
        nodes = {n["node-id"]: n["status"] for n in list_nodes(fed.conn, fed.env)}
    summary = json.loads(summary_path.read_text())
    assert sorted(summary["test"]) == PLATFORMS
    for platform, metrics in summary["test"].items():
        for key in ("auc", "logloss", "hr@10", "ndcg@10"):
            assert metrics[key] is not None and math.isfinite(metrics[key]), (platform, key, metrics)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(not r["failures"] for r in rounds), [r["failures"] for r in rounds]
    assert all(sorted(r["train"]) == PLATFORMS for r in rounds)
    # every message of a platform ran in its one warm worker process (train + evaluate per round)
    for platform, text in worker_logs.items():
        statuses = re.findall(r"crossfed.worker: task \d+ (\S+) in", text)
        assert len(statuses) >= 4 and set(statuses) == {"completed"}, (platform, text[-2000:])
    assert len(nodes) == 3 and set(nodes.values()) == {"online"}, nodes


@pytest.fixture(scope="module")
def secure_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One TLS SuperLink with node authentication and one registered platform key, no nodes running."""
    work = tmp_path_factory.mktemp("secure-link")
    fed = Federation(work, [], node_extra=CLEAR)
    with fed:
        fed.keys["web_shop"] = create_node_key(fed.certs_dir, "web_shop")
        fed.node_ids["web_shop"] = register_node(fed.keys["web_shop"].public, fed.conn, fed.env, name="web_shop")
        yield fed


def _refused(fed: Federation, name: str, expected_reason: str, **overrides: object) -> None:
    """Start a SuperNode that must be turned away: it exits non-zero naming the reason, and never gets in."""
    before = {n["node-id"]: n["status"] for n in list_nodes(fed.conn, fed.env)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureDeploymentWarning)
        daemon = fed.start_node(name, max_wait_s=5, **overrides)
    try:
        daemon.proc.wait(timeout=REFUSED_WITHIN_S)
        log = daemon.log_text()
        assert daemon.proc.returncode != 0, log[-3000:]
        assert expected_reason in log, log[-3000:]
        assert "SuperNode ID:" not in log, log[-3000:]
    finally:
        fed.nodes.pop(name).stop()
    after = {n["node-id"]: n["status"] for n in list_nodes(fed.conn, fed.env)}
    assert set(after) == set(before), (before, after)  # no node was added...
    assert {k for k, v in after.items() if v == "online"} <= {
        k for k, v in before.items() if v == "online"
    }  # ...or woken


def test_registered_node_gets_in(secure_link: Federation) -> None:
    # Prepare / Execute: the positive twin of the refusals below (same link, same CA)
    daemon = secure_link.start_node("web_shop")
    try:
        secure_link.wait_nodes_online(["web_shop"], timeout_s=60)
        online = [n for n in list_nodes(secure_link.conn, secure_link.env) if n["status"] == "online"]
        # Assert
        assert [int(n["node-id"]) for n in online] == [secure_link.node_ids["web_shop"]]
    finally:
        secure_link.nodes.pop("web_shop")
        daemon.stop()


def test_unregistered_node_is_refused(secure_link: Federation) -> None:
    # Prepare: a valid key pair that nobody registered with the SuperLink
    intruder = create_node_key(secure_link.workdir / "intruder", "intruder")
    # Execute / Assert
    _refused(secure_link, "intruder", "Failed to activate SuperNode", key=intruder.private)


def test_plaintext_node_is_refused_by_tls_superlink(secure_link: Federation) -> None:
    # Execute / Assert: --insecure (plain HTTP) against the TLS port, even holding a registered key's name
    _refused(secure_link, "plaintext", "Server disconnected without sending a response", insecure=True, key=None,
             root_cert=None)  # fmt: skip


def test_wrong_ca_is_refused(secure_link: Federation) -> None:
    # Prepare: a registered key, but trusting a different CA than the one that signed the SuperLink
    other = create_tls(secure_link.workdir / "other-ca", secure_link.host_name)
    # Execute / Assert
    _refused(secure_link, "web_shop", "CERTIFICATE_VERIFY_FAILED", root_cert=other.ca_cert)
    # ... and the flwr CLI trusting that CA cannot talk to the SuperLink either
    wrong = Connection("wrong-ca", secure_link.address, other.ca_cert, flwr_home=secure_link.flwr_home)
    wrong.write()
    try:
        with pytest.raises(DeployError, match="Connection to the SuperLink is unavailable"):  # TLS verify failed
            list_nodes(wrong, secure_link.env)
    finally:
        secure_link.conn.write()  # back to the right default connection


def test_cli_submits_to_a_named_federation_then_reuses_it_by_name(tmp_path: Path) -> None:
    # Prepare: a TLS federation; the user's own FLWR_HOME knows no federation yet
    home = tmp_path / "user-flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home)}
    config = {**TINY, "num-server-rounds": 1}
    with Federation(tmp_path / "fed", PLATFORMS, node_extra=CLEAR) as fed:
        assert fed.tls is not None
        # Execute: the first submit saves "staging" (address + CA), the second names only "staging"
        runs = []
        for i, connection in enumerate([["--superlink", fed.address, "--certs", str(fed.certs_dir)], []]):
            run_config = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={str(v).lower()}"
                                  for k, v in {**config, "out-dir": str(tmp_path / f"run{i}")}.items())  # fmt: skip
            res = subprocess.run(
                [sys.executable, "-m", "deploy.cli", "submit", "--federation", "staging", *connection,
                 "--run-config", run_config, "--stream"],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + fed.diagnostics()
            runs.append(tmp_path / f"run{i}")
    # Assert: both runs completed on the federation saved under that name (and only it)
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert sorted(summary["test"]) == PLATFORMS, summary
    saved = Connection.load("staging", home)
    assert (saved.address, saved.root_cert, saved.insecure) == (fed.address, fed.tls.ca_cert.resolve(), False)
