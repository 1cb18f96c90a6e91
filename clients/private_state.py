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
import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from common.config import AppConfig
from common.run_files import PRIVATE_DIR

FILE = re.compile(r"round-(\d+)\.safetensors")
STATE_DIR_KEY = "state-dir"  # node_config: where a deployed platform keeps its private parameters
DEFAULT_STATE_DIR = "~/.crossfed/private"  # without one: a kit's SuperNode is given its kit's state/ instead

INDEX_KEY = "crossfed-index"  # safetensors metadata: JSON {"items": [ids], "users": [ids]}, one per row

Tensors = Mapping[str, np.ndarray]
Index = Mapping[str, Sequence[str]]


class PrivateStore:
    """Round -> private tensors, in a folder (or in memory when ``folder`` is None)."""

    def __init__(self, folder: Path | None = None, keep: int = 0) -> None:
        self.folder = folder
        self.keep = keep  # 0 = keep every round
        self._memory: dict[int, OrderedDict[str, np.ndarray]] = {}
        self._index: dict[int, dict[str, list[str]]] = {}
        self.warm: tuple[PrivateStore, int] | None = None  # (an earlier run's store, its round): see warm_start

    def warm_start(self, earlier: PrivateStore, rnd: int) -> PrivateStore:
        """Start from ``earlier``'s parameters of round ``rnd`` while this store has none of its own.

        A run that continues a finished one on new data trains its first round from the old run's
        private parameters (of the round whose fused adapter it starts from).
        """
        self.warm = (earlier, rnd)
        return self

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
            return None if self.warm is None else self.warm[0].load(self.warm[1])
        if self.folder is None:
            return self._memory[max(earlier)]
        from safetensors.numpy import load_file

        return OrderedDict(load_file(str(self._path(max(earlier)))))

    def index(self, rnd: int) -> dict[str, list[str]] | None:
        """The item and user ids (one per row) saved with :meth:`load`'s tensors; None if not saved."""
        earlier = [r for r in self.rounds() if r <= rnd]
        if not earlier:
            return None if self.warm is None else self.warm[0].index(self.warm[1])
        if self.folder is None:
            return self._index.get(max(earlier))
        from safetensors import safe_open

        with safe_open(str(self._path(max(earlier))), "np") as fh:
            raw = (fh.metadata() or {}).get(INDEX_KEY)
        return None if raw is None else {k: list(v) for k, v in json.loads(raw).items()}

    def save(self, rnd: int, tensors: Tensors, index: Index | None = None) -> None:
        """Save round ``rnd``; ``index`` names the item and user id of each row (so that a later run
        on grown data can line the rows up by id)."""
        arrays = OrderedDict((k, np.array(v, dtype=np.float32, copy=True)) for k, v in tensors.items())
        ids = None if index is None else {k: list(v) for k, v in index.items()}
        if self.folder is None:
            self._memory[rnd] = arrays
            if ids is not None:
                self._index[rnd] = ids
        else:
            from safetensors.numpy import save_file

            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._path(rnd).with_suffix(".tmp")
            save_file(arrays, str(tmp), metadata=None if ids is None else {INDEX_KEY: json.dumps(ids)})
            os.replace(tmp, self._path(rnd))  # a crash leaves the old round or the new one, never half
        if self.keep:
            for old in self.rounds()[: -self.keep]:
                self._drop(old)

    def upto(self, rnd: int) -> PrivateStore:
        """An in-memory copy holding only the latest round <= ``rnd`` (fine-tuning from the best round)."""
        copy = PrivateStore(None, self.keep)
        saved = self.load(rnd)
        if saved is not None:
            at = max((r for r in self.rounds() if r <= rnd), default=0)
            copy._memory[at] = saved
            ids = self.index(rnd)
            if ids is not None:
                copy._index[at] = ids
        return copy

    def _path(self, rnd: int) -> Path:
        assert self.folder is not None
        return self.folder / f"round-{rnd:06d}.safetensors"

    def _drop(self, rnd: int) -> None:
        if self.folder is None:
            del self._memory[rnd]
            self._index.pop(rnd, None)
        else:
            self._path(rnd).unlink(missing_ok=True)


def rounds_to_keep(patience: int) -> int:
    """With early stopping after ``patience`` stale rounds the best round is at most ``patience``
    rounds old, so ``patience + 1`` rounds suffice; without it (0) every round is kept."""
    return patience + 1 if patience else 0


def private_folder(out_dir: str, platform: str, state_dir: str | None = None) -> Path:
    """A platform's folder for one federation run.

    Simulated platforms share the coordinator's disk: ``<out-dir>/private/<platform>``. A
    deployed one keeps them under its own ``state-dir`` (node_config: a kit's ``state/``, ``crossfed
    deploy supernode --state-dir``; default ``~/.crossfed/private``), in a subfolder named by the run's
    ``out-dir``, so a resumed run (same ``out-dir``) finds them and another run does not.
    """
    if state_dir is None:
        return Path(out_dir).expanduser() / PRIVATE_DIR / platform
    run = hashlib.sha256(out_dir.encode()).hexdigest()[:16]
    return Path(state_dir).expanduser() / platform / run


def run_store(cfg: AppConfig, platform: str, state_dir: str | None = None) -> PrivateStore:
    """A platform's store for the run ``cfg`` describes; a continued run (``fed.warm-start``) falls back
    to the platform's private parameters of the old run's best round until it has its own."""
    store = PrivateStore(private_folder(cfg.out_dir, platform, state_dir), rounds_to_keep(cfg.fed.patience))
    if cfg.fed.warm_start:
        earlier = PrivateStore(private_folder(cfg.fed.warm_start, platform, state_dir))
        store.warm_start(earlier, cfg.fed.warm_start_round)
    return store
