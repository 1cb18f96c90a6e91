"""Stop the daemons that ``flwr run`` leaves behind for a local simulation.

Flower 1.42's ``flwr run .`` with the ``local`` SuperLink starts ``flower-superlink`` detached
(its own session, logging to ``$FLWR_HOME/local-superlink/superlink.log``), and that SuperLink
starts ``flower-superexec --parent-pid <superlink>``; both keep running after the run ends and
Flower has no command to stop them. ``crossfed stop-local`` finds exactly those: processes of
this user whose command line is a SuperLink logging under this ``FLWR_HOME``, or a SuperExec
whose ``--parent-pid`` is such a SuperLink, never another user's or another FLWR_HOME's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

SUPERLINK, SUPEREXEC = "flower-superlink", "flower-superexec"
STOP_GRACE_S = 5.0


def flwr_home(explicit: str | None = None) -> Path:
    """Flower's home: ``explicit``, else ``$FLWR_HOME``, else ``~/.flwr`` (as ``flwr`` resolves it)."""
    return Path(explicit or os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser().resolve()


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of this user's processes, from /proc."""
    uid = os.getuid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid != uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            yield int(entry.name), [a.decode(errors="replace") for a in argv if a]


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _is(argv: list[str], program: str) -> bool:
    """``program`` run as a script (``python .../flower-superlink``) or directly."""
    return any(Path(a).name == program for a in argv[:2])


def local_daemons(home: Path) -> dict[int, str]:
    """pid -> ``flower-superlink``/``flower-superexec`` for the daemons ``flwr run`` started under ``home``."""
    procs = list(_processes())
    runtime = home / "local-superlink"
    links = {
        pid for pid, argv in procs
        if _is(argv, SUPERLINK) and (log := _option(argv, "--log-file")) and Path(log).parent == runtime
    }  # fmt: skip
    execs = {pid for pid, argv in procs if _is(argv, SUPEREXEC) and _option(argv, "--parent-pid") in map(str, links)}
    return {**{p: SUPERLINK for p in links}, **{p: SUPEREXEC for p in execs}}


def stop_local_daemons(home: str | None = None, grace_s: float = STOP_GRACE_S) -> list[str]:
    """SIGTERM each daemon (SuperExec first), SIGKILL what is left after ``grace_s``; one line per process."""
    found = local_daemons(flwr_home(home))
    order = sorted(found, key=lambda pid: found[pid] != SUPEREXEC)
    for pid in order:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = set(order)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _alive(pid)}
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f"stopped {found[pid]} (pid {pid}){' with SIGKILL' if pid in alive else ''}" for pid in order]


def _alive(pid: int) -> bool:
    """Still running (a zombie awaiting its parent counts as stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
