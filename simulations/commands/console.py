"""What ``crossfed`` shows on the console, and how one Ctrl-C ends a command.

By default a person sees crossfed's progress, warnings and one final table. Library chatter
stays out unless ``--verbose``: Flower's DEBUG records (and every Flower INFO line printed twice,
once by Flower's own handler and once more through the root logger), deprecation and
FutureWarnings (also in Ray's worker processes, which only see the environment), Ray's tips and
the colour codes of Flower's and Ray's log prefixes, which are never written when the output is
not a terminal.

Long commands (``simulate``, ``compare``, ``tallrec``, ``bench``) run in a child process in a
session of its own, so that a terminal's Ctrl-C reaches only this supervisor and not the Ray
workers or comparison jobs beneath it (each of which would otherwise print its own traceback).
The first Ctrl-C (or SIGTERM) stops the child's whole process group, prints one line and
exits 130; what the run had committed (checkpoint, finished records) stays on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

CHILD_ENV = "CROSSFED_SUPERVISED"  # set in the child: it runs the command itself
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command ended by Ctrl-C
STOP_TIMEOUT_S = 30.0  # how long a killed child may take to be reaped
INTERRUPTED = (
    "crossfed: interrupted: stopped; what was completed is kept (checkpoint, finished records): "
    "run the same command again to resume"
)

# Quiet settings that must reach child processes (Ray workers read only their environment).
QUIET_ENV = {
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
    "TRANSFORMERS_VERBOSITY": "error",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences Ray's "Tip: in future versions..." warning
    "CROSSFED_QUIET": "1",  # = clients.app.QUIET_ENV: the ClientApp hides Flower's actor-shutdown warnings
}
NO_COLOUR_ENV = {"RAY_COLOR_PREFIX": "0", "NO_COLOR": "1"}


def use_colour(verbose: bool, stream: object = None) -> bool:
    """Colour codes only when asked for (``--verbose``) and only on a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return verbose and bool(isatty and isatty())


def setup_console(verbose: bool = False) -> None:
    """Logging, warnings and the environment of child processes for one ``crossfed`` command."""
    if not verbose:
        os.environ.update({k: v for k, v in QUIET_ENV.items() if k not in os.environ})
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    if not use_colour(verbose):
        os.environ.update(NO_COLOUR_ENV)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("crossfed").setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_flower(verbose)


def quiet_flower(verbose: bool) -> None:
    """Flower logs through its own console handler (logger ``flwr``, level DEBUG): stop it from
    also propagating to the root handler (every line twice, DEBUG included) and drop colours.

    Flower adds its handler when it is imported: a command calls this again once it has."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    for handler in flwr_logger.handlers:
        if hasattr(handler, "colored"):
            handler.colored = use_colour(verbose, getattr(handler, "stream", None))
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)


# --- one Ctrl-C ------------------------------------------------------------------------------


def supervised() -> bool:
    """True in the child process that runs the command for a supervisor."""
    return os.environ.get(CHILD_ENV) == "1"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def supervise(argv: Sequence[str]) -> int:
    """Run ``crossfed <argv>`` in a child of its own session; return its exit code, or 130 after
    the first Ctrl-C / SIGTERM (the child's process group is stopped, one line is printed)."""
    env = {**os.environ, CHILD_ENV: "1"}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", *argv], env=env, start_new_session=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            stop_group(proc)
            print(INTERRUPTED, file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGKILL every process of the child's session: the child and what it started (Ray's raylet,
    GCS and workers, some in process groups of their own; comparison jobs).

    Not SIGTERM first: Ray's raylet and GCS answer it with a stack dump each, the noise this module
    exists to avoid, and a graceful stop would only finish a round that is thrown away anyway. Every
    commit point is atomic (checkpoints and records are renamed into place, rounds.jsonl lines are
    appended and fsynced before the checkpoint that counts them), so a kill at any moment loses only
    the round in progress.
    """
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    while (left := session_pids(proc.pid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, from /proc; [] where there is no /proc."""
    pids = []
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return pids
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids
