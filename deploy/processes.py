"""Start Flower's processes each in its own session with an appended log, wait for them, stop whole trees.

``Daemon.stop`` signals the process group and every descendant (a SuperLink's detached
SuperExecs too), then SIGKILLs what is left: nothing outlives a test or a benchmark.
:func:`run_foreground` is the same for ``crossfed deploy superlink | supernode``: the Flower
process dies with the command an operator sees, whichever signal ends it (:func:`die_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.commands import (
    REPO_ROOT,
    SuperLinkSpec,
    SuperNodeSpec,
    superlink_command,
    superlink_env,
    supernode_command,
    supernode_env,
    worker_command,
)
from deploy.errors import DeployError

log = logging.getLogger("crossfed.deploy")


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
        """The last ``lines`` of this run's output."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
        """Signal the whole tree (group + every descendant, e.g. detached SuperExecs), then SIGKILL."""
        stop_tree([self.proc, *self.companions], sig, grace_s)

    def kill(self) -> None:
        """SIGKILL, no grace: a crash as the federation sees it."""
        self.stop(sig=signal.SIGKILL, grace_s=0.0)


def stop_tree(procs: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
    """Send ``sig`` to each process's group and every descendant, wait up to ``grace_s``, SIGKILL what is left."""
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


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` after which the child gets SIGTERM when this process dies, SIGKILL included
    (Linux's parent-death signal, kept across ``exec``); None where there is none. No signal handler
    of the parent runs on SIGKILL, so this is the only way the child can learn of it."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # looked up now: the child between fork and exec only calls it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class _Stop(Exception):
    """A signal asked the foreground command to stop."""


def run_foreground(cmds: Sequence[Sequence[str]], env: Mapping[str, str], grace_s: float = 10.0) -> int:
    """Run ``cmds[0]`` (and its companions, ``cmds[1:]``: ``--parent-pid 0`` becomes its pid) until it exits;
    its exit code. Nothing outlives this process: SIGTERM, SIGINT (Ctrl-C) and SIGHUP stop every tree
    (:func:`stop_tree`), and SIGKILL, which no handler sees, reaches each child as SIGTERM
    (:func:`die_with_parent`; their own children, Flower's SuperExec and our worker, leave with their
    parent by ``--parent-pid``). Each child runs in its own session, so a terminal's Ctrl-C reaches it
    once, from here."""
    preexec = die_with_parent()

    def start(cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(cmd), env=dict(env), start_new_session=True, preexec_fn=preexec)  # noqa: S603, PLW1509

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start(cmds[0]))
        for cmd in cmds[1:]:
            procs.append(start([str(procs[0].pid) if c == "0" and prev == "--parent-pid" else c
                                for prev, c in zip(["", *cmd], cmd, strict=False)]))  # fmt: skip
        return procs[0].wait()
    except (_Stop, KeyboardInterrupt):
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)  # one stop at a time; it ends within grace_s + 5 s
        stop_tree(procs, signal.SIGTERM, grace_s)
        return procs[0].returncode if procs else 1
    finally:
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)
        stop_tree(procs, signal.SIGTERM, grace_s)  # the companions, when the main process ended by itself
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    proc = spawn("superlink", superlink_command(spec), log_path, {**env, **superlink_env()})
    daemon = Daemon("superlink", proc, log_path, log_offset=offset)
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
