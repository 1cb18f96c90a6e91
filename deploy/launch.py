"""Command lines and processes for a Flower 1.42 deployment of crossfed.

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

:class:`Federation` starts all of that on free loopback ports in a temp folder and tears
it down whatever happens (every process group and every descendant is killed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_string
from deploy.book import remember_node
from deploy.certs import NodeKey, TlsFiles, create_node_key, create_tls

log = logging.getLogger("crossfed.deploy")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUPERLINK_PORT = 9093
DEFAULT_RUNTIME_PORT = 9094
ISOLATIONS = ("process", "subprocess")  # process = warm deploy.worker; subprocess = Flower's per-message default
TERMINAL_STATUSES = ("finished:completed", "finished:failed", "finished:stopped")


class DeployError(RuntimeError):
    """A deployment step failed; the message names the step and where its log is."""


class InsecureDeploymentWarning(UserWarning):
    """Plaintext HTTP was asked for explicitly: data and node identities are unprotected."""


# ---------------------------------------------------------------------------- config strings


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


# ---------------------------------------------------------------------------- command lines


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
    cmd = [flower_bin("flower-superlink"), "--host", spec.host, "--port", str(spec.port),
           "--disable-runtime-dependency-installation"]  # fmt: skip
    if spec.insecure:
        _warn_insecure("SuperLink")
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
        _warn_insecure(f"SuperNode {spec.platform}")
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(spec.root_cert).resolve())]  # type: ignore[arg-type]
    if spec.key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(spec.key).resolve())]
    if spec.max_wait_s is not None:
        cmd += ["--max-wait-time", str(spec.max_wait_s)]
    return cmd


def supernode_env(spec: SuperNodeSpec) -> dict[str, str]:
    env = {"CROSSFED_SUPERNODE_HEARTBEAT_S": str(spec.heartbeat_s)}
    if spec.fast_poll_s is not None:
        env["CROSSFED_SUPERNODE_POLL_S"] = str(spec.fast_poll_s)
    return env


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
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",  # SuperLink's SuperExec: start the ServerApp quickly
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    # Flower starts its own commands (flower-superexec, flwr-serverapp) from PATH: this Python's first
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env.update(extra or {})
    return env


def _warn_insecure(what: str) -> None:
    warnings.warn(
        f"{what}: --insecure: plaintext HTTP, no TLS: adapters and node identities travel unprotected",
        InsecureDeploymentWarning, stacklevel=3,
    )  # fmt: skip


# ---------------------------------------------------------------------------- processes


@dataclass
class Daemon:
    """A started process (in its own process group) and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    companions: list[subprocess.Popen[bytes]] = field(default_factory=list)  # e.g. the warm worker
    log_offset: int = 0  # logs are appended across restarts: this run's output starts here

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        """This run's output (not earlier runs' under the same name)."""
        try:
            return self.log_path.read_bytes()[self.log_offset :].decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
        """Signal the whole tree (group + every descendant, e.g. detached SuperExecs), then SIGKILL."""
        procs = [self.proc, *self.companions]
        tree = set()
        for p in procs:
            tree |= {p.pid, *descendants(p.pid)}
        _signal_tree(tree, {p.pid for p in procs}, sig)
        deadline = time.monotonic() + grace_s
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        leftover = {pid for pid in tree if _alive(pid)}
        if leftover or any(p.poll() is None for p in procs):
            _signal_tree(leftover | {p.pid for p in procs}, {p.pid for p in procs}, signal.SIGKILL)
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, no grace: a crash as the federation sees it."""
        self.stop(sig=signal.SIGKILL, grace_s=0.0)


def spawn(name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str],
          cwd: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``cmd`` in its own session (process group) with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), cwd=str(cwd or REPO_ROOT), start_new_session=True,
        )  # fmt: skip
    log.info("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
    return proc


def start_superlink(spec: SuperLinkSpec, log_dir: Path, env: Mapping[str, str], timeout_s: float = 60.0) -> Daemon:
    log_path = Path(log_dir) / "superlink.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    daemon = Daemon(
        "superlink", spawn("superlink", superlink_command(spec), log_path, env), log_path, log_offset=offset
    )
    connect_host = "127.0.0.1" if spec.host in ("0.0.0.0", "::", "") else spec.host
    try:
        wait_for_port(connect_host, spec.port, timeout_s, daemon)
    except DeployError:
        daemon.stop()
        raise
    return daemon


def start_supernode(spec: SuperNodeSpec, log_dir: Path, env: Mapping[str, str], worker_poll_s: float = 0.05) -> Daemon:
    """The SuperNode and, with ``isolation='process'``, its warm worker (same process group)."""
    log_path = Path(log_dir) / f"supernode-{spec.platform}.log"
    full_env = {**env, **supernode_env(spec)}
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = spawn(f"supernode {spec.platform}", supernode_command(spec), log_path, full_env)
    daemon = Daemon(f"supernode-{spec.platform}", proc, log_path, log_offset=offset)
    if spec.isolation == "process":
        # Its own session like the SuperNode (a process cannot join a group in another
        # session); it leaves by itself when the SuperNode exits, and Daemon.stop kills both.
        worker_log = Path(log_dir) / f"worker-{spec.platform}.log"
        try:
            worker = spawn(f"worker {spec.platform}", worker_command(spec.runtime_port, proc.pid, worker_poll_s),
                           worker_log, full_env)  # fmt: skip
        except BaseException:
            daemon.stop()
            raise
        daemon.companions.append(worker)
    return daemon


def wait_for_port(host: str, port: int, timeout_s: float, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon is not None and not daemon.alive():
            raise DeployError(f"{daemon.name} exited with {daemon.proc.returncode}; log {daemon.log_path}:\n"
                              f"{daemon.log_tail()}")  # fmt: skip
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    where = f"; log {daemon.log_path}:\n{daemon.log_tail()}" if daemon else ""
    raise DeployError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s{where}")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc walk; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return True


def _signal_tree(pids: set[int], group_leaders: set[int], sig: int) -> None:
    for leader in group_leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(leader), sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# ---------------------------------------------------------------------------- flwr CLI


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
            _warn_insecure(f"connection {self.name}")
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


def _json_out(res: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
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
    node_id = int(_json_out(flwr_cli(args, env, check=False), f"registering {public_key}")["node-id"])
    remember_node(conn.flwr_home, conn.name, node_id, name or Path(public_key).name.removesuffix(".pub"))
    return node_id


def list_nodes(conn: Connection, env: Mapping[str, str]) -> list[dict[str, Any]]:
    return list(_json_out(flwr_cli(["supernode", "ls", conn.name, "--format", "json"], env, check=False),
                          "listing SuperNodes").get("nodes", []))  # fmt: skip


def submit_run(app_dir: Path, conn: Connection, env: Mapping[str, str],
               run_config: Mapping[str, Any] | None = None) -> int:  # fmt: skip
    """``flwr run APP CONNECTION --run-config "k=v ..."``; returns the run id (does not wait)."""
    return start_run(app_dir, conn, env, [config_string(run_config)] if run_config else [])


def start_run(app_dir: Path, conn: Connection, env: Mapping[str, str], config_args: Sequence[str] = ()) -> int:
    """``flwr run`` with ``--run-config`` strings as a user types them; the run id, or DeployError why not."""
    args = ["run", str(Path(app_dir).resolve()), conn.name, "--format", "json"]
    for rc in config_args:
        args += ["--run-config", rc]
    return int(_json_out(flwr_cli(args, env, check=False), f"submitting {app_dir}")["run-id"])


def run_status(run_id: int, conn: Connection, env: Mapping[str, str]) -> dict[str, Any]:
    data = _json_out(flwr_cli(["ls", conn.name, "--run-id", str(run_id), "--format", "json"], env, check=False),
                     f"status of run {run_id}")  # fmt: skip
    runs = data.get("runs") or []
    if not runs:
        raise DeployError(f"run {run_id} is unknown to the SuperLink")
    return dict(runs[0])


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


def stop_run(run_id: int, conn: Connection, env: Mapping[str, str]) -> None:
    flwr_cli(["stop", str(run_id), conn.name], env, check=False)


# ---------------------------------------------------------------------------- a whole federation


@dataclass
class RunResult:
    run_id: int
    status: str
    seconds: float
    record: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


class Federation:
    """SuperLink + one SuperNode per platform, real processes on loopback, for tests and benchmarks.

    ``with Federation(tmp, ["app", "web_shop"]) as fed: fed.run({...})``. Everything lives
    under ``workdir`` (certificates, keys, FLWR_HOME, logs, SuperLink database); every
    process is stopped on exit, also when the body raised. Faults: :meth:`kill_node`,
    :meth:`start_node`, :meth:`kill_superlink`, :meth:`start_superlink` (same ports, same
    database, same keys: nodes come back under the same node id).
    """

    def __init__(
        self,
        workdir: Path,
        platforms: Sequence[str],
        *,
        app_dir: Path = REPO_ROOT,
        data_dir: str | Path = "",
        isolation: str = "process",
        fast_poll_s: float | None = 0.25,
        node_auth: bool = True,
        register: bool = True,
        insecure: bool = False,
        node_extra: Mapping[str, Any] | None = None,
        host_name: str = "superlink.crossfed.test",
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 90.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.platforms = list(platforms)
        self.app_dir = Path(app_dir).resolve()
        self.data_dir = str(data_dir)
        self.isolation = isolation
        self.fast_poll_s = fast_poll_s
        self.node_auth = node_auth and not insecure
        self.register = register
        self.insecure = insecure
        self.node_extra = dict(node_extra or {})
        self.host_name = host_name
        self.start_timeout_s = start_timeout_s
        self.logs = self.workdir / "logs"
        self.certs_dir = self.workdir / "certs"
        self.flwr_home = self.workdir / "flwr-home"
        # All platforms share this machine here (one machine each in production): give each
        # its share of the cores, as Ray does for simulated clients (num_cpus=1 -> 1 thread).
        threads = str(max(1, (os.cpu_count() or 1) // max(1, len(self.platforms))))
        self.env = base_env(self.flwr_home, {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **(env or {})})
        ports = free_ports(1 + len(self.platforms))
        self.port = ports[0]
        self.runtime_ports = dict(zip(self.platforms, ports[1:], strict=True))
        self.tls: TlsFiles | None = None
        self.keys: dict[str, NodeKey] = {}
        self.node_ids: dict[str, int] = {}
        self.superlink: Daemon | None = None
        self.nodes: dict[str, Daemon] = {}
        self.secagg: dict[str, dict[str, str]] = {}  # platform -> node_config naming its identity + roster
        self.conn = Connection("crossfed-test", f"127.0.0.1:{self.port}", None, insecure, self.flwr_home)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle
    def __enter__(self) -> Federation:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.insecure:
            self.tls = create_tls(self.certs_dir, self.host_name)
            self.conn = Connection("crossfed-test", self.address, self.tls.ca_cert, False, self.flwr_home)
        self.conn.write()
        if self.node_auth:
            for p in self.platforms:
                self.keys[p] = create_node_key(self.certs_dir, p)
        self.provision_secagg()
        self.start_superlink()
        for p in self.platforms:
            self.start_node(p)
        self.wait_nodes_online(self.platforms)

    def provision_secagg(self) -> None:
        """Each platform's secure-aggregation identity and the roster of all of them (the operator's step)."""
        from common.secagg.identity import KEY_SUFFIX, PUB_SUFFIX, Identity, build_roster, save_identity

        folder = self.workdir / "secagg"
        folder.mkdir(parents=True, exist_ok=True)
        for p in self.platforms:
            if not (folder / f"{p}{KEY_SUFFIX}").exists():
                save_identity(Identity.generate(p), folder)
        roster = build_roster(folder / f"{p}{PUB_SUFFIX}" for p in self.platforms)
        (folder / "roster.json").write_text(roster.to_json())
        self.secagg = {p: {"secagg-identity": str(folder / f"{p}{KEY_SUFFIX}"),
                           "secagg-roster": str(folder / "roster.json")} for p in self.platforms}  # fmt: skip

    def close(self) -> None:
        for daemon in [*self.nodes.values(), *([self.superlink] if self.superlink else [])]:
            try:
                daemon.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("stopping %s", daemon.name)
        self.nodes.clear()
        self.superlink = None

    # -- SuperLink
    def superlink_spec(self) -> SuperLinkSpec:
        return SuperLinkSpec(
            tls=self.tls, host="127.0.0.1", port=self.port, node_auth=self.node_auth,
            database=self.workdir / "superlink.db", insecure=self.insecure,
        )  # fmt: skip

    def start_superlink(self) -> Daemon:
        self.superlink = start_superlink(self.superlink_spec(), self.logs, self.env, self.start_timeout_s)
        if self.node_auth and self.register:
            for p in self.platforms:
                if p not in self.node_ids:  # the database keeps registrations across restarts
                    self.node_ids[p] = register_node(self.keys[p].public, self.conn, self.env, name=p)
        return self.superlink

    def kill_superlink(self) -> None:
        if self.superlink is not None:
            self.superlink.kill()
            self.superlink = None

    # -- SuperNodes
    def node_spec(self, platform: str, **overrides: Any) -> SuperNodeSpec:
        if platform not in self.runtime_ports:  # a node beyond the federation's own (e.g. an intruder)
            self.runtime_ports[platform] = free_ports(1)[0]
        fields_: dict[str, Any] = dict(
            platform=platform, superlink=self.address, root_cert=self.tls.ca_cert if self.tls else None,
            key=self.keys[platform].private if platform in self.keys else None, data_dir=self.data_dir,
            runtime_port=self.runtime_ports[platform], isolation=self.isolation, insecure=self.insecure,
            fast_poll_s=self.fast_poll_s, extra={**self.secagg.get(platform, {}), **self.node_extra},
        )  # fmt: skip
        fields_.update(overrides)
        return SuperNodeSpec(**fields_)

    def start_node(self, platform: str, **overrides: Any) -> Daemon:
        if platform in self.nodes and self.nodes[platform].alive():
            raise DeployError(f"SuperNode {platform} is already running")
        self.nodes[platform] = start_supernode(self.node_spec(platform, **overrides), self.logs, self.env)
        return self.nodes[platform]

    def kill_node(self, platform: str) -> None:
        self.nodes.pop(platform).kill()

    def wait_nodes_online(self, platforms: Sequence[str], timeout_s: float | None = None) -> None:
        """Until the SuperLink lists every platform's node as online (a node's log says its id)."""
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        pending = set(platforms)
        while pending:
            for p in sorted(pending):
                daemon = self.nodes[p]
                if not daemon.alive():
                    raise DeployError(f"SuperNode {p} exited with {daemon.proc.returncode}; log {daemon.log_path}:\n"
                                      f"{daemon.log_tail()}")  # fmt: skip
                if "SuperNode ID:" in daemon.log_text():
                    pending.discard(p)
            if pending and time.monotonic() > deadline:
                raise DeployError(f"SuperNodes {sorted(pending)} did not connect within the timeout:\n"
                                  + "\n".join(self.nodes[p].log_tail(15) for p in sorted(pending)))  # fmt: skip
            if pending:
                time.sleep(0.2)

    # -- runs
    def submit(self, run_config: Mapping[str, Any] | None = None) -> int:
        return submit_run(self.app_dir, self.conn, self.env, run_config)

    def wait(self, run_id: int, timeout_s: float = 600.0) -> RunResult:
        t0 = time.monotonic()
        record = wait_run(run_id, self.conn, self.env, timeout_s, poll_s=0.5)
        return RunResult(run_id, str(record.get("status")), time.monotonic() - t0, record)

    def run(self, run_config: Mapping[str, Any] | None = None, timeout_s: float = 600.0) -> RunResult:
        """Submit and wait. NB a run whose platforms all failed still 'completes': check its outputs."""
        t0 = time.monotonic()
        result = self.wait(self.submit(run_config), timeout_s)
        result.seconds = time.monotonic() - t0
        return result

    def server_log(self, run_id: int) -> str:
        return run_log(run_id, self.conn, self.env)

    def diagnostics(self, lines: int = 30) -> str:
        """Tails of every log, for a failing test's message."""
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            parts.append(f"--- {path.name}\n{tail}")
        return "\n".join(parts)


@contextlib.contextmanager
def federation(workdir: Path, platforms: Sequence[str], **kwargs: Any) -> Iterator[Federation]:
    """Functional spelling of ``with Federation(...)``."""
    with Federation(workdir, platforms, **kwargs) as fed:
        yield fed
