"""A whole federation on loopback for tests, benchmarks and fault drills: :class:`Federation`.

It starts a TLS SuperLink and one SuperNode per platform on free ports under one folder and
tears them down whatever happens (every process group and every descendant is killed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.certs import NodeKey, TlsFiles, create_node_key, create_tls
from deploy.commands import REPO_ROOT, SuperLinkSpec, SuperNodeSpec, base_env, thread_env
from deploy.errors import DeployError
from deploy.flwr_cli import COMPLETED, Connection, register_node, run_log, submit_run, wait_run
from deploy.processes import Daemon, free_ports, start_superlink, start_supernode

log = logging.getLogger("crossfed.deploy")


@dataclass
class RunResult:
    """How a submitted run ended (Flower's ``status``), after how long, and its ``flwr ls`` record."""

    run_id: int
    status: str
    seconds: float
    record: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED


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
        worker_poll_s: float = 0.05,
        superlink_database: bool = True,
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
        threads = max(1, (os.cpu_count() or 1) // max(1, len(self.platforms)))
        self.env = base_env(self.flwr_home, {**thread_env(threads), **(env or {})})
        self.worker_poll_s = worker_poll_s  # how often each warm worker asks its SuperNode for work
        # False: the SuperLink keeps its state in memory (Flower's default; faster, forgets nodes on a restart)
        self.superlink_database = superlink_database
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
            database=self.workdir / "superlink.db" if self.superlink_database else None, insecure=self.insecure,
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
        spec = self.node_spec(platform, **overrides)
        self.nodes[platform] = start_supernode(spec, self.logs, self.env, worker_poll_s=self.worker_poll_s)
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
