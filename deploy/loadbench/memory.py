"""Memory and CPU of every process of a loopback federation, sampled by kind (``psutil``).

Kinds: ``superlink``, ``superexec`` (the SuperLink's ServerApp launcher), ``serverapp``,
``supernode``, ``clientapp`` (warm worker); :class:`MemorySampler` folds snapshots into
:class:`MemoryPeaks` and flags low available memory so the benchmark can stop in time.
Both take any process trees and any kinds: ``crossfed bench scale --engine flower`` samples
Flower's Simulation Engine (Ray) with them, under its own kinds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.federation import Federation

# A child that still runs its parent's command line: forked, not yet exec'd (``subprocess`` starting
# a daemon) or a forked helper. Its own kind, so a parent's count is not doubled for a moment.
FORK = "fork"
KINDS = ("superlink", "superexec", "serverapp", "supernode", "clientapp", FORK, "other")
MIB = 1024 * 1024


def process_kind(cmdline: Sequence[str]) -> str:
    """Which part of the federation a process is, from its command line."""
    text = " ".join(cmdline)
    for needle, kind in (("flwr-serverapp", "serverapp"), ("flower-superexec", "superexec"),
                         ("flower-superlink", "superlink"), ("deploy.superlink_entry", "superlink"),
                         ("deploy.worker", "clientapp"),
                         ("flwr-clientapp", "clientapp"), ("deploy.supernode_entry", "supernode"),
                         ("flower-supernode", "supernode")):  # fmt: skip
        if needle in text:
            return kind
    return "other"


@dataclass
class MemoryPeaks:
    """Running maxima (MiB) per process kind over snapshots of ``(kind, rss, anon)`` bytes.

    ``rss`` is VmRSS (what ``top`` shows; shared library pages count in every process),
    ``anon`` its anonymous part (RSS minus file-backed pages: the process's own heap), so
    the sum of ``anon`` plus the libraries counted once is what the processes really take.
    """

    process: dict[str, float] = field(default_factory=dict)  # the largest single process (RSS)
    total: dict[str, float] = field(default_factory=dict)  # the largest sum of RSS over one snapshot
    anon: dict[str, float] = field(default_factory=dict)  # the largest sum of anonymous RSS
    processes: dict[str, int] = field(default_factory=dict)  # the most processes at once
    all_total: float = 0.0  # the largest sum of everything (RSS)
    all_anon: float = 0.0
    samples: int = 0
    order: tuple[str, ...] = KINDS  # how as_dict lists the kinds (any others after, by name)

    def add(self, snapshot: Iterable[tuple[str, int, int]]) -> dict[str, float]:
        """Fold one snapshot in; returns its per-kind RSS sums (MiB)."""
        sums: dict[str, float] = {}
        anon: dict[str, float] = {}
        counts: dict[str, int] = {}
        for kind, rss, private in snapshot:
            sums[kind] = sums.get(kind, 0.0) + rss / MIB
            anon[kind] = anon.get(kind, 0.0) + private / MIB
            counts[kind] = counts.get(kind, 0) + 1
            self.process[kind] = max(self.process.get(kind, 0.0), rss / MIB)
        for kind, mib in sums.items():
            self.total[kind] = max(self.total.get(kind, 0.0), mib)
            self.anon[kind] = max(self.anon.get(kind, 0.0), anon[kind])
            self.processes[kind] = max(self.processes.get(kind, 0), counts[kind])
        self.all_total = max(self.all_total, sum(sums.values()))
        self.all_anon = max(self.all_anon, sum(anon.values()))
        self.samples += 1
        return sums

    def as_dict(self) -> dict[str, Any]:
        order = [k for k in self.order if k in self.process] + sorted(set(self.process) - set(self.order))
        return {
            "peak_process_mib": {k: round(self.process[k], 1) for k in order},
            "peak_total_mib": {k: round(self.total[k], 1) for k in order},
            "peak_anon_total_mib": {k: round(self.anon[k], 1) for k in order},
            "max_processes": {k: self.processes[k] for k in order},
            "peak_all_mib": round(self.all_total, 1), "peak_all_anon_mib": round(self.all_anon, 1),
            "samples": self.samples,
        }  # fmt: skip


def federation_roots(fed: Federation) -> list[int]:
    """The pids at the top of a loopback federation's process trees (SuperLink, SuperNodes, companions)."""
    daemons = [d for d in (fed.superlink, *list(fed.nodes.values())) if d is not None]
    return [p.pid for d in daemons for p in (d.proc, *d.companions)]


class MemorySampler(threading.Thread):
    """Every ``every_s``: RSS of each process tree under ``roots()``, folded into :class:`MemoryPeaks`.

    ``roots`` is called at every sample (processes come and go: a killed SuperNode, a restarted
    one); ``classify`` names a process's kind from its command line. Also keeps a coarse
    timeline (one point per ``timeline_s``) and sets ``low_memory`` when the machine's available
    memory drops below ``min_free_mib``.
    """

    def __init__(self, roots: Callable[[], Iterable[int]], t0: float, every_s: float = 0.5, timeline_s: float = 2.0,
                 min_free_mib: float = 1024.0, classify: Callable[[Sequence[str]], str] = process_kind,
                 kinds: tuple[str, ...] = KINDS) -> None:  # fmt: skip
        super().__init__(name="memory-sampler", daemon=True)
        self.roots, self.classify = roots, classify
        self.t0, self.every_s, self.timeline_s, self.min_free_mib = t0, every_s, timeline_s, min_free_mib
        self.peaks = MemoryPeaks(order=kinds)
        self.timeline: list[dict[str, float]] = []
        self.min_available_mib = math.inf
        self.low_memory: str | None = None
        self._kinds: dict[tuple[int, float], str] = {}  # each process's kind, by its latest command line
        self._named: dict[tuple[int, float, tuple[str, ...]], str] = {}  # classify() once per command line
        self._cpu: dict[tuple[int, float], float] = {}  # last seen user+system seconds per process
        self.other_commands: set[str] = set()
        self._halt = threading.Event()

    def snapshot(self) -> list[tuple[str, int, int]]:
        import psutil

        procs: dict[int, Any] = {}
        roots = list(self.roots())
        for root in roots:
            try:
                top = psutil.Process(root)
                procs.update((p.pid, p) for p in (top, *top.children(recursive=True)) if p.pid not in procs)
            except psutil.Error:
                continue
        cmdlines: dict[int, tuple[str, ...]] = {}
        for pid, proc in procs.items():
            try:
                cmdline = tuple(proc.cmdline())
            except psutil.Error:
                continue
            if cmdline:  # empty: exiting, or a kernel-side moment; named at the next sample
                cmdlines[pid] = cmdline
        out = []
        for pid, cmdline in cmdlines.items():
            proc = procs[pid]
            try:
                key = (pid, proc.create_time())
                # Named by its command line as it is now: a process between fork and exec still
                # shows its parent's (a Ray daemon starts as a copy of a Python helper), so a
                # name given then would stick to the wrong kind; until it execs it is a FORK.
                if pid not in roots and cmdlines.get(proc.ppid()) == cmdline:
                    self._kinds[key] = FORK
                else:
                    if (*key, cmdline) not in self._named:
                        self._named[(*key, cmdline)] = self.classify(cmdline)
                        if self._named[(*key, cmdline)] == "other":
                            self.other_commands.add(" ".join(cmdline)[:200])
                    self._kinds[key] = self._named[(*key, cmdline)]
                times = proc.cpu_times()
                self._cpu[key] = times.user + times.system
                mem = proc.memory_info()  # Linux: rss and shared (file-backed) from /proc/PID/statm
                out.append((self._kinds[key], mem.rss, mem.rss - getattr(mem, "shared", 0)))
            except psutil.Error:
                continue
        return out

    def run(self) -> None:
        import psutil

        next_point = 0.0
        while not self._halt.is_set():
            sums = self.peaks.add(self.snapshot())
            available = psutil.virtual_memory().available / MIB
            self.min_available_mib = min(self.min_available_mib, available)
            if available < self.min_free_mib and self.low_memory is None:
                self.low_memory = f"available memory {available:.0f} MiB < {self.min_free_mib:.0f} MiB"
            now = time.monotonic() - self.t0
            if now >= next_point:
                self.timeline.append({"t": round(now, 1), **{k: round(v, 1) for k, v in sums.items()},
                                      "available": round(available, 1)})  # fmt: skip
                next_point = now + self.timeline_s
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per kind, as last seen (a process's final moments after a sample are missed)."""
        out: dict[str, float] = {}
        for key, seconds in self._cpu.items():
            out[self._kinds[key]] = out.get(self._kinds[key], 0.0) + seconds
        return {k: round(out[k], 1) for k in (*self.peaks.order, *sorted(set(out) - set(self.peaks.order))) if k in out}
