"""Where a deployed round's time goes: every Flower HTTP call a process makes, timed (``CROSSFED_RPC_TRACE``).

Why: a secure deployed round took ~6-8x the simulated one, and the processes' own logs could not
say where the rest went. Every call a SuperNode, its warm worker or the ServerApp makes to the
SuperLink (or to its SuperNode) goes through one method of flwr 1.42, ``ProtobufClient._unary_unary``;
with ``CROSSFED_RPC_TRACE=DIR`` in their environment each process appends one JSON line per call
(start, seconds, RPC, request bytes) to ``DIR/rpc-<component>-<pid>.jsonl``, and :func:`rpc_table`
sums them per component and RPC. ``python -m deploy.bench --trace`` prints that table.

The wrapper adds one ``time.time()`` pair and one buffered line per call; without the variable
nothing is patched.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TRACE_ENV = "CROSSFED_RPC_TRACE"
_installed: dict[str, Any] = {}


def trace_rpcs(component: str, directory: str | os.PathLike[str] | None = None) -> bool:
    """Time every Flower HTTP call of this process into ``directory`` (default ``$CROSSFED_RPC_TRACE``).

    Returns whether tracing is on. Installed once per process; ``component`` names the process in
    the table (``supernode``, ``worker``, ``serverapp``).
    """
    directory = directory or os.environ.get(TRACE_ENV)
    if not directory:
        return False
    if _installed:
        return True
    from flwr.supercore.protobuf.client import ProtobufClient

    from common.flower_http import flwr_is_pinned

    if not flwr_is_pinned("RPC tracing"):
        return False
    Path(directory).mkdir(parents=True, exist_ok=True)
    out = open(Path(directory) / f"rpc-{component}-{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115 - for the process's life
    lock = threading.Lock()  # object pushes and pulls run in Flower's thread pools
    call = ProtobufClient._unary_unary

    def timed(self: Any, *, path: str, rpc_method: str, request: Any, response_type: Any, timeout: Any = None) -> Any:
        start = time.time()
        try:
            return call(self, path=path, rpc_method=rpc_method, request=request, response_type=response_type,
                        timeout=timeout)  # fmt: skip
        finally:
            line = {"t": start, "s": time.time() - start, "rpc": rpc_method.rsplit("/", 1)[-1],
                    "bytes": request.ByteSize(), "component": component}  # fmt: skip
            with lock:
                out.write(json.dumps(line) + "\n")

    ProtobufClient._unary_unary = timed  # type: ignore[method-assign]
    _installed.update(component=component, file=out, original=call)
    return True


def stop_tracing() -> None:
    """Put Flower's method back and close this process's file (tests; a process normally traces to its end)."""
    if not _installed:
        return
    from flwr.supercore.protobuf.client import ProtobufClient

    ProtobufClient._unary_unary = _installed["original"]  # type: ignore[method-assign]
    _installed["file"].close()
    _installed.clear()


def read_trace(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every traced call under ``directory``, in start order (a torn last line is skipped)."""
    calls = []
    for path in sorted(Path(directory).glob("rpc-*.jsonl")):
        for text in path.read_text().splitlines():
            try:
                calls.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return sorted(calls, key=lambda c: c["t"])


def rpc_table(calls: Iterable[dict[str, Any]], since: float = 0.0) -> list[dict[str, Any]]:
    """Calls started at or after ``since``, summed per (component, RPC): count, mean and total seconds.

    Sorted by total time, largest first: the top rows are where a process spent its waiting.
    """
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in calls:
        if c["t"] >= since:
            sums[(c["component"], c["rpc"])].append(float(c["s"]))
    rows = [{"component": comp, "rpc": rpc, "calls": len(s), "mean_ms": 1000 * sum(s) / len(s), "total_s": sum(s)}
            for (comp, rpc), s in sums.items()]  # fmt: skip
    return sorted(rows, key=lambda r: -r["total_s"])


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    lines = [f"{'component':10s} {'rpc':24s} {'calls':>6s} {'mean ms':>8s} {'total s':>8s}"]
    row = "{component:10s} {rpc:24s} {calls:6d} {mean_ms:8.1f} {total_s:8.2f}"
    lines += [row.format(**r) for r in rows]
    return "\n".join(lines)
