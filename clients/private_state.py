"""Where a platform keeps its private parameters between rounds: they never leave the platform.

Round r trains from the private parameters of the latest earlier round and saves its own
under r; evaluating round r uses those of round r (the latest at or before it). So the final
test of the best round b pairs the fused model of round b with the private parameters of
round b. Only the latest ``keep`` rounds are kept: with early stopping after ``fed.patience``
stale rounds, the best round is never older than that.

Two backings: a dict (in-process simulation, the comparison harness) and the Flower
ClientApp's ``context.state`` (it lives as long as the run on that node; a SuperNode
restarted from scratch starts its private parameters afresh).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, MutableMapping

import numpy as np

PREFIX = "private-round-"

Tensors = Mapping[str, np.ndarray]


class PrivateStore:
    """Round -> private tensors, over any mutable mapping of round keys."""

    def __init__(self, keep: int = 0) -> None:
        self.keep = keep  # 0 = keep every round
        self._rounds: dict[int, OrderedDict[str, np.ndarray]] = {}

    def rounds(self) -> list[int]:
        return sorted(self._rounds)

    def load(self, rnd: int) -> OrderedDict[str, np.ndarray] | None:
        """The tensors saved at the latest round <= ``rnd``; None when there are none (start from zero)."""
        earlier = [r for r in self._rounds if r <= rnd]
        return self._rounds[max(earlier)] if earlier else None

    def save(self, rnd: int, tensors: Tensors) -> None:
        self._rounds[rnd] = OrderedDict((k, np.array(v, dtype=np.float32, copy=True)) for k, v in tensors.items())
        if self.keep:
            for old in sorted(self._rounds)[: -self.keep]:
                del self._rounds[old]

    def upto(self, rnd: int) -> PrivateStore:
        """A copy holding only rounds <= ``rnd`` (fine-tuning from the best round)."""
        copy = PrivateStore(self.keep)
        copy._rounds = {r: t for r, t in self._rounds.items() if r <= rnd}
        return copy

    # --- persistence in a Flower Context.state -------------------------------------------------

    @classmethod
    def from_records(cls, records: MutableMapping[str, object], keep: int) -> PrivateStore:
        """Rebuild from ``context.state`` (ArrayRecords named ``private-round-<r>``)."""
        store = cls(keep)
        for key, record in records.items():
            if key.startswith(PREFIX):
                store._rounds[int(key.removeprefix(PREFIX))] = OrderedDict(
                    (name, array.numpy())
                    for name, array in record.items()  # type: ignore[attr-defined]
                )
        return store

    def to_records(self, records: MutableMapping[str, object]) -> None:
        """Write every kept round into ``context.state`` and drop the rounds no longer kept."""
        from flwr.app import Array, ArrayRecord

        for key in [k for k in records if k.startswith(PREFIX)]:
            if int(key.removeprefix(PREFIX)) not in self._rounds:
                del records[key]
        for rnd, tensors in self._rounds.items():
            records[f"{PREFIX}{rnd}"] = ArrayRecord(
                OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in tensors.items())
            )
