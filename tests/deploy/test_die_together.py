"""Killing ``crossfed deploy superlink`` or ``supernode`` (SIGTERM, SIGINT, SIGKILL) takes the real Flower
processes with it: the SuperLink and its SuperExec, the SuperNode and its warm worker. Real processes on
loopback, plaintext (what is tested is the process tree, not the connection)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.commands import REPO_ROOT
from deploy.processes import _alive, descendants, free_ports, stop_tree

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"),
]
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}


def _wrapper(kind: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The command as an operator starts it, and how many processes it runs below it once up."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    port = free_ports(1)[0]
    if kind == "superlink":  # flower-superlink + the SuperExec it starts
        args, expected = ["superlink", "--insecure", "--port", str(port)], 2
    else:  # deploy.supernode_entry + the warm worker; nothing listens on the SuperLink port, so it keeps dialling
        args = ["supernode", "--platform", "app", "--superlink", f"127.0.0.1:{port}", "--insecure",
                "--state-dir", str(tmp_path / "state")]  # fmt: skip
        expected = 2
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", "deploy", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return proc, expected


def _wait(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", SIGNALS.values(), ids=SIGNALS)
@pytest.mark.parametrize("kind", ["superlink", "supernode"])
def test_killing_the_command_leaves_no_flower_process(tmp_path: Path, kind: str, sig: int) -> None:
    # Prepare: the command up, with its Flower processes below it
    proc, expected = _wrapper(kind, tmp_path)
    tree: set[int] = set()
    try:
        assert _wait(lambda: len(descendants(proc.pid)) >= expected, 90), "the Flower processes did not start"
        tree = descendants(proc.pid)
        # Execute
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        # Assert: every process that ran below it is gone (a zombie waiting for init counts as gone)
        gone = _wait(lambda: not any(_alive(pid) for pid in tree), 30)
        assert gone, f"{kind} killed with {signal.Signals(sig).name}: survivors {[p for p in tree if _alive(p)]}"
    finally:  # whatever the outcome, nothing of this test stays behind
        for pid in {*tree, *descendants(proc.pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stop_tree([proc], signal.SIGKILL, 0.0)
