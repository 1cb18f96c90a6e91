"""The ``flwr`` CLI as functions: named connections in ``$FLWR_HOME/config.toml``, node registration, runs.

Every command runs with ``--format json`` where Flower offers it; a failure is a :class:`DeployError`
with flwr's own message.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_string, node_names_string, parse_config_strings
from deploy.book import node_names, remember_node
from deploy.commands import REPO_ROOT, flower_bin
from deploy.errors import DeployError, warn_insecure

COMPLETED = "finished:completed"  # `flwr ls` status of a run that ended well
ACTIVE = ("pending", "starting", "running")  # `flwr ls` statuses of a run that holds the platforms


@dataclass(frozen=True)
class Connection:
    """A named SuperLink connection in ``$FLWR_HOME/config.toml``."""

    name: str
    address: str  # host:port of the SuperLink
    root_cert: Path | None
    insecure: bool = False
    flwr_home: Path = field(default_factory=lambda: Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser())

    @staticmethod
    def config_path(flwr_home: Path) -> Path:
        return Path(flwr_home).expanduser() / "config.toml"

    @classmethod
    def load(cls, name: str, flwr_home: Path) -> Connection:
        """The saved ``[superlink.<name>]`` (a named federation); DeployError naming the file if absent."""
        path = cls.config_path(flwr_home)
        entry = _read_config(path).get("superlink", {}).get(name)
        if not isinstance(entry, dict) or "address" not in entry:
            raise DeployError(f"no federation {name!r} in {path}: save it once with "
                              f"--federation {name} --superlink HOST:PORT --certs DIR")  # fmt: skip
        if entry.get("insecure"):
            return cls(name, str(entry["address"]), None, True, Path(flwr_home))
        if "root-certificates" not in entry:
            raise DeployError(f"federation {name!r} in {path} has neither root-certificates nor insecure = true")
        return cls(name, str(entry["address"]), Path(entry["root-certificates"]), False, Path(flwr_home))

    def write(self) -> Path:
        """Add/replace ``[superlink.<name>]`` (other connections are kept) and make it the default."""
        import tomli_w

        path = self.config_path(self.flwr_home)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_config(path)
        section = data.setdefault("superlink", {})
        entry: dict[str, Any] = {"address": self.address}
        if self.insecure:
            warn_insecure(f"connection {self.name}")
            entry["insecure"] = True
        else:
            if self.root_cert is None:
                raise DeployError("a TLS connection needs the CA certificate (`root-certificates`)")
            entry["root-certificates"] = str(Path(self.root_cert).resolve())  # flwr wants an absolute path
        section[self.name] = entry
        section["default"] = self.name
        path.write_text(tomli_w.dumps(data))
        return path


def _read_config(path: Path) -> dict[str, Any]:
    """``$FLWR_HOME/config.toml`` as a dict ({} when absent); DeployError naming it when unreadable."""
    if not path.is_file():
        return {}
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DeployError(f"{path}: not valid TOML ({exc})") from exc


def flwr_cli(args: Sequence[str], env: Mapping[str, str], timeout_s: float = 120.0, cwd: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    res = subprocess.run(  # noqa: S603
        [flower_bin("flwr"), *args], env=dict(env), cwd=str(cwd or REPO_ROOT), capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip
    if check and res.returncode != 0:
        output = (res.stdout + res.stderr).strip()[-2000:]
        raise DeployError(f"`flwr {' '.join(args)}` exited {res.returncode}: {output}")
    return res


def flwr_json(res: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    """flwr's ``--format json`` output as a dict; DeployError naming ``what`` when flwr failed or printed no JSON."""
    text = res.stdout
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise DeployError(f"{what}: expected JSON from flwr, got: {(res.stdout + res.stderr).strip()[-2000:]}")
    if data.get("success") is False:
        raise DeployError(f"{what}: {data.get('error-message') or data}")
    return data


def register_node(public_key: Path, conn: Connection, env: Mapping[str, str], name: str | None = None) -> int:
    """``flwr supernode register KEY.pub CONNECTION``; returns the node id."""
    args = ["supernode", "register", str(Path(public_key).resolve()), conn.name, "--format", "json"]
    if name:
        args += ["--name", name]
    node_id = int(flwr_json(flwr_cli(args, env, check=False), f"registering {public_key}")["node-id"])
    remember_node(conn.flwr_home, conn.name, node_id, name or Path(public_key).name.removesuffix(".pub"))
    return node_id


def list_nodes(conn: Connection, env: Mapping[str, str]) -> list[dict[str, Any]]:
    return list(flwr_json(flwr_cli(["supernode", "ls", conn.name, "--format", "json"], env, check=False),
                          "listing SuperNodes").get("nodes", []))  # fmt: skip


def submit_run(app_dir: Path, conn: Connection, env: Mapping[str, str],
               run_config: Mapping[str, Any] | None = None) -> int:  # fmt: skip
    """``flwr run APP CONNECTION --run-config "k=v ..."``; returns the run id (does not wait)."""
    return start_run(app_dir, conn, env, [config_string(run_config)] if run_config else [])


def start_run(app_dir: Path, conn: Connection, env: Mapping[str, str], config_args: Sequence[str] = ()) -> int:
    """``flwr run`` with ``--run-config`` strings as a user types them; the run id, or DeployError why not."""
    args = ["run", str(Path(app_dir).resolve()), conn.name, "--format", "json"]
    values = with_node_names(parse_config_strings(config_args, "--run-config"), node_names(conn.flwr_home, conn.name))
    if values:  # one string: Flower merges several badly (common.config.parse_config_strings)
        args += ["--run-config", config_string(values)]
    return int(flwr_json(flwr_cli(args, env, check=False), f"submitting {app_dir}")["run-id"])


def with_node_names(values: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The run config plus ``fed.node-names`` from the nodes registered through crossfed, unless set.

    The ServerApp then names a platform in its log lines even before that platform has answered
    (a node that dies in its first round would otherwise stay ``node 123...``).
    """
    if not names or "fed.node-names" in values:
        return dict(values)
    return {**values, "fed.node-names": node_names_string(names)}


def run_status(run_id: int, conn: Connection, env: Mapping[str, str]) -> dict[str, Any]:
    data = flwr_json(flwr_cli(["ls", conn.name, "--run-id", str(run_id), "--format", "json"], env, check=False),
                     f"status of run {run_id}")  # fmt: skip
    runs = data.get("runs") or []
    if not runs:
        raise DeployError(f"run {run_id} is unknown to the SuperLink")
    return dict(runs[0])


def list_runs(conn: Connection, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every run the SuperLink knows (``flwr ls``), as flwr's JSON records."""
    return list(flwr_json(flwr_cli(["ls", conn.name, "--format", "json"], env, check=False), "listing runs")
                .get("runs", []))  # fmt: skip


def is_active(record: Mapping[str, Any]) -> bool:
    """Whether a ``flwr ls`` record is a run that has not finished (pending, starting or running)."""
    return str(record.get("status", "")).split(":", 1)[0] in ACTIVE


def stop_run(run_id: int, conn: Connection, env: Mapping[str, str]) -> None:
    """``flwr stop RUN``: the SuperLink marks the run ``finished:stopped``; DeployError with flwr's reason."""
    res = flwr_cli(["stop", str(run_id), conn.name, "--format", "json"], env, check=False)
    flwr_json(res, f"stopping run {run_id}")


def wait_run(run_id: int, conn: Connection, env: Mapping[str, str], timeout_s: float = 600.0,
             poll_s: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """Poll ``flwr ls`` until the run is finished; returns its record (``status`` says how).

    ``timeout_s = math.inf`` waits as long as the run takes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        record = run_status(run_id, conn, env)
        if str(record.get("status", "")).startswith("finished"):
            return record
        if time.monotonic() > deadline:
            raise DeployError(f"run {run_id} not finished after {timeout_s:.0f} s (status {record.get('status')})")
        time.sleep(poll_s)


def run_log(run_id: int, conn: Connection, env: Mapping[str, str]) -> str:
    """The ServerApp's log of a run (``flwr log RUN --show``)."""
    return flwr_cli(["log", str(run_id), conn.name, "--show"], env, check=False).stdout
