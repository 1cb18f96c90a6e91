"""The platform's audit trail of secure rounds (:mod:`common.audit`), kept on its own disk.

One log per platform: a deployed one at ``<state-dir>/<platform>/audit.jsonl`` (beside the
per-run folders of its private parameters, so every run it ever took part in is in one
log), a simulated one at ``<out-dir>/private/<platform>/audit.jsonl``. Signed with the
platform's identity key (simulated identities are public: such a log proves nothing).

While a secure sum runs, each message the platform sends is noted (its kind and size,
:func:`note_sent`); the entry is written when the platform masks its input, before the
masked input leaves (:func:`log_round`), like the contribution record: a round whose input
left is always in the log. The replies after it (a consistency signature, the unmasking
shares of round-only secrets) carry nothing derived from the platform's data and are not
listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context

from clients.platform import PARTITION_KEY
from clients.private_state import DEFAULT_STATE_DIR, STATE_DIR_KEY, private_folder
from common.audit import RoundRecord, append
from common.config import AppConfig
from common.secagg import ClientState, Identity, record_nbytes

AUDIT_FILE = "audit.jsonl"
CLEAR_METRICS = "metrics-in-clear"  # an evaluation's own metrics, sent beside the setup reply (`share-metrics`)
SENT = "audit-sent"  # context.state ConfigRecord {"messages": [kind, ...], "bytes": [n, ...]}: this round's so far


def log_path(node_config: Mapping[str, object], cfg: AppConfig, platform: str) -> Path:
    """Where this platform's audit log is (see the module's docstring)."""
    if PARTITION_KEY in node_config and STATE_DIR_KEY not in node_config:  # simulated
        return private_folder(cfg.out_dir, platform) / AUDIT_FILE
    return Path(str(node_config.get(STATE_DIR_KEY, DEFAULT_STATE_DIR))).expanduser() / platform / AUDIT_FILE


def note_sent(
    context: Context, message: str, reply: Mapping[str, Any] | int, *, first: bool = False, ns: str = ""
) -> None:
    """Count one message this platform sends in the current secure sum (``first``: a new sum starts).

    ``reply``: the protocol message (its size as encoded, ``record_nbytes``) or a size in bytes; ``ns``:
    which of the sums a message may carry (``common.secure_wire.EVAL_SUM``: the one beside training).
    """
    size = reply if isinstance(reply, int) else record_nbytes(reply)
    saved = context.state.get(SENT + ns)
    messages, sizes = ([], []) if first or not isinstance(saved, ConfigRecord) else (
        [str(m) for m in saved["messages"]], [int(n) for n in saved["bytes"]])  # type: ignore[union-attr]  # fmt: skip
    context.state[SENT + ns] = ConfigRecord({"messages": [*messages, message], "bytes": [*sizes, int(size)]})


def log_round(context: Context, cfg: AppConfig, identity: Identity, state: ClientState, kind: str,
              round_context: bytes, epsilon: float | None = None, ns: str = "") -> None:  # fmt: skip
    """Append this secure sum's entry: what the platform accepted and what it sent so far."""
    saved = context.state.get(SENT + ns)
    sent = list(zip(saved["messages"], saved["bytes"], strict=True)) if isinstance(saved, ConfigRecord) else []  # type: ignore[arg-type]
    record = RoundRecord(
        run=cfg.out_dir, session=state.session.hex(), round=state.round, kind=kind, context=round_context.hex(),
        cohort=len(state.roster_ids), masked_with=len(state.holders), threshold=state.threshold,
        sent=[(str(m), int(n)) for m, n in sent], epsilon=epsilon,
    )  # fmt: skip
    append(log_path(context.node_config, cfg, identity.platform), identity, record)


def metrics_nbytes(metrics: Mapping[str, object]) -> int:
    """Size of metrics sent in the clear: each name (UTF-8) and its 8-byte value."""
    return sum(len(name.encode()) + 8 for name in metrics)
