"""Command lines and environments of Flower 1.42's processes: SuperLink, SuperNode, warm worker.

One SuperLink (coordinator) and one SuperNode per platform, each on its own machine in
production, all on 127.0.0.1 in tests. What Flower 1.42 looks like (read from its
source, not its older docs):

* the SuperLink serves its Fleet, Control and Runtime APIs over HTTPS on ONE port
  (``--host``/``--port``, default 8000); ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``
  enable TLS, ``--enable-supernode-auth`` admits only SuperNodes whose public key was
  registered with ``flwr supernode register KEY.pub CONNECTION``; ``--database FILE``
  keeps its state (registered nodes, runs) across a restart;
* a SuperNode connects with ``--superlink HOST:PORT --root-certificates ca.pem
  --auth-supernode-private-key KEY`` and serves its own Runtime API on ``--port``
  (loopback, default 9094) to whatever executes its ClientApp tasks;
* ``--isolation subprocess`` (Flower's default) starts a new ``flwr-clientapp`` process
  per message; ``--isolation process`` lets us run :mod:`deploy.worker` instead: one
  warm process per platform (see there, and the timings in :mod:`deploy.bench`);
* ``flwr`` CLI commands address the SuperLink through a named connection in
  ``$FLWR_HOME/config.toml`` (``address``, ``root-certificates``, ``insecure``).

Starting and stopping them: :mod:`deploy.processes`; the ``flwr`` CLI: :mod:`deploy.flwr_cli`;
all of it on loopback: :mod:`deploy.federation`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_string
from deploy.certs import TlsFiles
from deploy.errors import DeployError, warn_insecure

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUPERLINK_PORT = 9093
DEFAULT_RUNTIME_PORT = 9094
ISOLATIONS = ("process", "subprocess")  # process = warm deploy.worker; subprocess = Flower's per-message default
FLOWER_HOME = "flower"  # a SuperNode's own FLWR_HOME, inside its platform's state folder: see supernode_flwr_home


def node_config(platform: str, data_dir: str | Path = "", device: str = "cpu",
                extra: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """The SuperNode's ``--node-config``: what ``clients.platform.resolve_node`` reads, plus
    platform policy such as ``require-secagg`` / ``share-metrics`` (``clients.secure``)."""
    data = str(Path(data_dir).expanduser().resolve()) if str(data_dir) else ""
    values: dict[str, Any] = {"platform": platform, "data-dir": data, "device": device}
    for key, value in (extra or {}).items():
        if key in values:
            raise ValueError(f"node config `{key}` is set by its own option, not as an extra")
        values[key] = value
    return config_string(values)


@dataclass(frozen=True)
class SuperLinkSpec:
    """How to start the SuperLink. TLS is the default; plaintext only with ``insecure=True``."""

    tls: TlsFiles | None
    host: str = "0.0.0.0"
    port: int = DEFAULT_SUPERLINK_PORT
    node_auth: bool = True
    database: Path | None = None  # state file: registered nodes survive a SuperLink restart
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure:
            if self.node_auth:
                raise DeployError("SuperNode authentication needs TLS: drop `insecure` or `node_auth`")
        elif self.tls is None:
            raise DeployError("a SuperLink needs TLS certificates (`--certs DIR`); plaintext only with --insecure")


def flower_bin(name: str) -> str:
    """Flower's command ``name`` beside this Python (``.venv/bin``), so that calling
    ``.venv/bin/crossfed`` works without the venv on PATH; else ``name`` from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def superlink_command(spec: SuperLinkSpec) -> list[str]:
    # Flower's own command, with message objects in memory (deploy.superlink_entry)
    cmd = [sys.executable, "-m", "deploy.superlink_entry", "--host", spec.host, "--port", str(spec.port),
           "--disable-runtime-dependency-installation"]  # fmt: skip
    if spec.insecure:
        warn_insecure("SuperLink")
        cmd.append("--insecure")
    else:
        assert spec.tls is not None
        tls = spec.tls.check()
        cmd += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                "--ssl-keyfile", str(tls.server_key)]  # fmt: skip
    if spec.node_auth:
        cmd.append("--enable-supernode-auth")
    if spec.database is not None:
        cmd += ["--database", str(Path(spec.database).expanduser().resolve())]
    return cmd


@dataclass(frozen=True)
class SuperNodeSpec:
    """One platform's SuperNode. ``key`` is its authentication key (None: no node auth)."""

    platform: str
    superlink: str  # host:port
    root_cert: Path | None
    key: Path | None
    data_dir: str = ""  # "" = the embedded synthetic dataset
    device: str = "cpu"
    runtime_port: int = DEFAULT_RUNTIME_PORT
    isolation: str = "process"
    insecure: bool = False
    fast_poll_s: float | None = 0.25  # None = Flower's own SuperNode loop (3 s idle polling)
    heartbeat_s: float = 10.0
    max_wait_s: float | None = None  # give up connecting after this long (None: retry forever)
    extra: Mapping[str, Any] = field(default_factory=dict)  # more node_config, e.g. {"require-secagg": False}
    flwr_home: Path | None = None  # FLWR_HOME of its processes (None: inherited); see supernode_flwr_home

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise DeployError(f"`isolation` must be one of {ISOLATIONS}, got {self.isolation!r}")
        if not self.insecure and self.root_cert is None:
            raise DeployError("a SuperNode needs the CA certificate (`--certs DIR`); plaintext only with --insecure")


def supernode_command(spec: SuperNodeSpec) -> list[str]:
    # Flower's own entry point, or the same one with shorter polling (deploy.supernode_entry)
    cmd = (
        [flower_bin("flower-supernode")]
        if spec.fast_poll_s is None
        else [sys.executable, "-m", "deploy.supernode_entry"]
    )
    config = node_config(spec.platform, spec.data_dir, spec.device, spec.extra)
    cmd += ["--superlink", spec.superlink, "--node-config", config, "--isolation", spec.isolation,
            "--host", "127.0.0.1", "--port", str(spec.runtime_port)]  # fmt: skip
    if spec.insecure:
        warn_insecure(f"SuperNode {spec.platform}")
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(spec.root_cert).resolve())]  # type: ignore[arg-type]
    if spec.key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(spec.key).resolve())]
    if spec.max_wait_s is not None:
        cmd += ["--max-wait-time", str(spec.max_wait_s)]
    return cmd


SUPERLINK_TASK_POLL_S = 0.5


def superlink_env() -> dict[str, str]:
    """What the SuperLink's own SuperExec (it starts each run's ServerApp) needs beside :func:`base_env`.

    Why: base_env's 0.1 s task poll is for a SuperNode's SuperExec (``--isolation subprocess``), which
    starts a process for every message. The SuperLink's one starts a ServerApp per run, yet at 0.1 s it
    asked the SuperLink ten times a second for the whole run: with ~10 ms of the SuperLink's CPU per
    call (``python -m deploy.bench --trace``), a tenth of the one core that serves every message. At
    0.5 s a run starts at most 0.4 s later.
    """
    return {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(SUPERLINK_TASK_POLL_S)}


def supernode_env(spec: SuperNodeSpec) -> dict[str, str]:
    env = {"CROSSFED_SUPERNODE_HEARTBEAT_S": str(spec.heartbeat_s)}
    if spec.fast_poll_s is not None:
        env["CROSSFED_SUPERNODE_POLL_S"] = str(spec.fast_poll_s)
    if spec.flwr_home is not None:
        env["FLWR_HOME"] = str(spec.flwr_home)
    return env


def supernode_flwr_home(state_dir: Path, platform: str) -> Path:
    """``<state-dir>/<platform>/flower``: the FLWR_HOME of one platform's SuperNode and worker.

    Why: the worker installs the app it is sent under ``$FLWR_HOME/apps/`` (``~/.flwr`` by default),
    and Flower skips the copy when that folder already exists; two platforms on one host would share
    it and one could load the other's half-copied app. With its own home, a platform shares no file
    with another (a SuperNode uses nothing else of Flower's home: telemetry and update checks are off).
    """
    return Path(state_dir) / platform / FLOWER_HOME


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int | None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Thread caps for a SuperNode's ClientApp, as the benchmarks set them.

    Why: torch starts one thread per core in every process; SuperNodes sharing a host (or a
    host's cores shared with the SuperLink) then oversubscribe it and a round takes several
    times longer. ``threads=None`` = the cores divided among the crossfed SuperNodes running
    on this host, counting the new one. A cap already in the environment is kept.
    """
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // (1 + len(running_supernodes())))
    return {var: str(threads) for var in THREAD_VARS if var not in environ}


def running_supernodes() -> list[int]:
    """Pids of the crossfed SuperNodes running on this host (Linux /proc; [] elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = entry.read_bytes()
        except OSError:
            continue
        if b"deploy.supernode_entry" in cmd or b"flower-supernode" in cmd:
            pids.append(int(entry.parent.name))
    return pids


def worker_command(runtime_port: int, parent_pid: int, poll_s: float = 0.05) -> list[str]:
    """The warm ClientApp worker beside a ``--isolation process`` SuperNode (loopback Runtime API)."""
    return [sys.executable, "-m", "deploy.worker", "--runtime-api-address", f"127.0.0.1:{runtime_port}",
            "--insecure", "--parent-pid", str(parent_pid), "--poll-s", str(poll_s)]  # fmt: skip


def base_env(flwr_home: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: offline, no runtime installs, quick pollers."""
    env = dict(os.environ)
    env.update({
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # the venv already has everything
        "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",  # no network calls
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",  # a SuperNode's SuperExec (cold): start each ClientApp quickly
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    # Flower starts its own commands (flower-superexec, flwr-serverapp) from PATH: this Python's first
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env.update(extra or {})
    return env
