"""The ``flwr`` CLI as functions: named connections in ``$FLWR_HOME/config.toml``, node registration, runs.

Every command runs with ``--format json`` where Flower offers it; a failure is a :class:`DeployError`
with flwr's own message.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_string, node_names_string, parse_config_strings
from deploy.book import node_names, remember_node
from deploy.commands import REPO_ROOT, flower_bin
from deploy.errors import DeployError, warn_insecure

log = logging.getLogger("crossfed.deploy")
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
    return _the_run(data.get("runs"), run_id)


def _the_run(runs: Sequence[Mapping[str, Any]] | None, run_id: int) -> dict[str, Any]:
    """The one record of ``flwr ls --run-id RUN``'s answer; DeployError when the SuperLink knows no such run."""
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
    """Ask the SuperLink until the run is finished; returns its ``flwr ls`` record (``status`` says how).

    ``timeout_s = math.inf`` waits as long as the run takes. The asking is done in this process
    (:class:`RunStatusClient`), not by a ``flwr ls`` per poll: each of those is a fresh Python that
    imports flwr (about 0.8 s of CPU here), so polling every 0.5 s took a third of a core from the run
    being watched, on the same machine in every test and benchmark.
    """
    deadline = time.monotonic() + timeout_s
    with RunStatusClient(conn, env) as client:
        while True:
            record = client.status(run_id)
            if str(record.get("status", "")).startswith("finished"):
                return record
            if time.monotonic() > deadline:
                raise DeployError(f"run {run_id} not finished after {timeout_s:.0f} s (status {record.get('status')})")
            time.sleep(poll_s)


class RunStatusClient:
    """``flwr ls CONNECTION --run-id RUN --format json`` in this process, over one Control API client.

    The records are the ones ``flwr ls`` prints (flwr's own ``_to_json``). Pinned to flwr 1.42's CLI
    internals like the rest of :mod:`deploy`; where they cannot be set up (another flwr, a connection
    flwr refuses) every call falls back to the ``flwr ls`` command (:func:`run_status`).
    """

    def __init__(self, conn: Connection, env: Mapping[str, str]) -> None:
        self.conn, self.env = conn, env
        self._client: Any = None
        try:
            from flwr.cli.flower_config import read_superlink_connection
            from flwr.cli.utils import init_http_client_from_connection

            with _flwr_home(conn.flwr_home), redirect_stdout(io.StringIO()):  # flwr says "Using SuperLink: ..."
                self._client = init_http_client_from_connection(read_superlink_connection(conn.name))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - click/typer errors included: use the command
            log.debug("in-process run status unavailable (%s): using `flwr ls`", exc)

    def status(self, run_id: int) -> dict[str, Any]:
        """The run's ``flwr ls`` record; DeployError naming the run when the SuperLink does not know it."""
        if self._client is None:
            return run_status(run_id, self.conn, self.env)
        from flwr.cli.ls import _display_one_run, _to_json

        try:
            runs = json.loads(_to_json(_display_one_run(self._client, run_id)))["runs"]
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - flwr turns API errors into click exceptions
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise DeployError(f"status of run {run_id}: {message}") from exc
        return _the_run(runs, run_id)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RunStatusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _flwr_home(path: Path) -> Iterator[None]:
    """``FLWR_HOME`` = ``path`` for flwr's config readers in this process, restored afterwards."""
    before = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(Path(path).expanduser())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = before


def run_log(run_id: int, conn: Connection, env: Mapping[str, str]) -> str:
    """The ServerApp's log of a run (``flwr log RUN --show``)."""
    return flwr_cli(["log", str(run_id), conn.name, "--show"], env, check=False).stdout
