"""Where a platform keeps its private parameters between rounds: on its own disk, never sent.

Round r trains from the private parameters of the latest earlier round and saves its own
under r; evaluating round r uses those of round r (the latest at or before it). So the final
test of the best round b pairs the fused model of round b with the private parameters of
round b. Only the latest ``keep`` rounds are kept: with early stopping after ``fed.patience``
stale rounds, the best round is never older than that.

On disk (one ``round-<r>.safetensors`` per round, written atomically) they survive what a
Flower context does not: a coordinator that dies and resumes the run as a new Flower run, a
SuperNode restart, and the end of the run (a platform serves recommendations with them).
Without a folder (fine-tuning copies in the comparison harness) they live in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

FILE = re.compile(r"round-(\d+)\.safetensors")
STATE_DIR_KEY = "state-dir"  # node_config: where a deployed platform keeps its private parameters
DEFAULT_STATE_DIR = "~/.crossfed/private"

Tensors = Mapping[str, np.ndarray]


class PrivateStore:
    """Round -> private tensors, in a folder (or in memory when ``folder`` is None)."""

    def __init__(self, folder: Path | None = None, keep: int = 0) -> None:
        self.folder = folder
        self.keep = keep  # 0 = keep every round
        self._memory: dict[int, OrderedDict[str, np.ndarray]] = {}

    def rounds(self) -> list[int]:
        if self.folder is None:
            return sorted(self._memory)
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := FILE.fullmatch(p.name)))

    def load(self, rnd: int) -> OrderedDict[str, np.ndarray] | None:
        """The tensors saved at the latest round <= ``rnd``; None when there are none (start from zero)."""
        earlier = [r for r in self.rounds() if r <= rnd]
        if not earlier:
            return None
        if self.folder is None:
            return self._memory[max(earlier)]
        from safetensors.numpy import load_file

        return OrderedDict(load_file(str(self._path(max(earlier)))))

    def save(self, rnd: int, tensors: Tensors) -> None:
        arrays = OrderedDict((k, np.array(v, dtype=np.float32, copy=True)) for k, v in tensors.items())
        if self.folder is None:
            self._memory[rnd] = arrays
        else:
            from safetensors.numpy import save_file

            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._path(rnd).with_suffix(".tmp")
            save_file(arrays, str(tmp))
            os.replace(tmp, self._path(rnd))  # a crash leaves the old round or the new one, never half
        if self.keep:
            for old in self.rounds()[: -self.keep]:
                self._drop(old)

    def upto(self, rnd: int) -> PrivateStore:
        """An in-memory copy holding only the latest round <= ``rnd`` (fine-tuning from the best round)."""
        copy = PrivateStore(None, self.keep)
        saved = self.load(rnd)
        if saved is not None:
            copy._memory[max(r for r in self.rounds() if r <= rnd)] = saved
        return copy

    def _path(self, rnd: int) -> Path:
        assert self.folder is not None
        return self.folder / f"round-{rnd:06d}.safetensors"

    def _drop(self, rnd: int) -> None:
        if self.folder is None:
            del self._memory[rnd]
        else:
            self._path(rnd).unlink(missing_ok=True)


def rounds_to_keep(patience: int) -> int:
    """With early stopping after ``patience`` stale rounds the best round is at most ``patience``
    rounds old, so ``patience + 1`` rounds suffice; without it (0) every round is kept."""
    return patience + 1 if patience else 0


def private_folder(out_dir: str, platform: str, state_dir: str | None = None) -> Path:
    """A platform's folder for one federation run.

    Simulated platforms share the coordinator's disk: ``<out-dir>/private/<platform>``. A
    deployed one keeps them under its own ``state-dir`` (node_config; default
    ``~/.crossfed/private``), in a subfolder named by the run's ``out-dir``, so a resumed run
    (same ``out-dir``) finds them and another run does not.
    """
    if state_dir is None:
        return Path(out_dir).expanduser() / "private" / platform
    run = hashlib.sha256(out_dir.encode()).hexdigest()[:16]
    return Path(state_dir).expanduser() / platform / run
