"""Named federations: SuperLink connections saved in ``$FLWR_HOME/config.toml`` and reused by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.errors import DeployError, InsecureDeploymentWarning
from deploy.flwr_cli import Connection


def test_named_federations_are_saved_side_by_side_and_loaded_by_name(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    Connection("staging", "10.0.0.5:9093", ca, flwr_home=tmp_path).write()
    Connection("prod", "fl.example.org:9093", ca, flwr_home=tmp_path).write()
    staging, prod = Connection.load("staging", tmp_path), Connection.load("prod", tmp_path)
    assert (staging.address, staging.root_cert, staging.insecure) == ("10.0.0.5:9093", ca.resolve(), False)
    assert (prod.address, prod.root_cert, prod.insecure) == ("fl.example.org:9093", ca.resolve(), False)
    assert 'default = "prod"' in (tmp_path / "config.toml").read_text()  # the last one saved


def test_insecure_federation_round_trips_and_warns(tmp_path: Path) -> None:
    with pytest.warns(InsecureDeploymentWarning):
        Connection("debug", "127.0.0.1:9093", None, insecure=True, flwr_home=tmp_path).write()
    debug = Connection.load("debug", tmp_path)
    assert (debug.address, debug.root_cert, debug.insecure) == ("127.0.0.1:9093", None, True)


def test_unknown_or_broken_federation_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        DeployError, match=r"no federation 'prod' in .*config.toml: save it once with --federation prod"
    ):
        Connection.load("prod", tmp_path)
    (tmp_path / "config.toml").write_text('[superlink.prod]\naddress = "x:1"\n')
    with pytest.raises(DeployError, match="neither root-certificates nor insecure"):
        Connection.load("prod", tmp_path)
    (tmp_path / "config.toml").write_text("[superlink.prod\n")
    with pytest.raises(DeployError, match=r"config.toml: not valid TOML"):
        Connection.load("prod", tmp_path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--federation", "prod"], "no federation 'prod' in"),
        (["--federation", "prod", "--certs", "certs/"], "give --superlink HOST:PORT with them"),
    ],
)
def test_submit_without_a_saved_federation_says_how_to_save_it(tmp_path: Path, args: list[str], expected: str) -> None:
    env = {**os.environ, "FLWR_HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "deploy.cli", "submit", *args], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr and "Traceback" not in res.stderr, res.stderr
