"""A platform's audit log: one signed, hash-chained line per secure sum it put an input into.

What a privacy officer reads: for every round the platform took part in, which run and round,
which kind of sum (``train``: the adapter; ``evaluate-<splits>``: the metrics), the round
context it was bound to (hash of the global adapter and config it received), the cohort it
accepted (the signed roster, the nodes it masked with, the threshold), the ε it spent (null
without differential privacy) and what it sent: the kind and size in bytes of every message of
the round up to its masked input, never a value.

Format (``crossfed-audit/1``): JSON lines. Each entry carries ``seq`` (0, 1, ...), ``prev``
(SHA-256 of the previous entry's line; :data:`GENESIS` for the first), the signer's Ed25519
public key and a signature over the entry without it; an entry's hash is SHA-256 of its line.
Beside the log, ``<log>.head`` holds the count and the last entry's hash, signed too, rewritten
atomically after each append.

What that detects, and what it cannot:

* any edited, reordered, inserted or removed entry (its signature or the chain breaks);
* a log cut short (lines dropped from its end) or a deleted head file, by anyone who does not
  hold the identity key, since the head says how many entries there were;
* NOT a rewrite by the key holder itself (the platform, or who stole its key): it can sign a
  shorter log and a matching head. Against that only an outside witness helps: the officer
  keeps the ``count:hash`` that :func:`verify` reports and passes it as ``expect`` next time
  (the log must still hold that entry), or compares the rounds with the coordinator's
  ``rounds.jsonl``.

A crash between the append and the head's rewrite leaves the head one entry behind: that
extra entry verifies (it is signed and chained) and the next append brings the head up.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.files import atomic_write_text
from common.secagg.identity import Identity, fingerprint

AUDIT_FORMAT = "crossfed-audit/1"
HEAD_FORMAT = "crossfed-audit-head/1"
GENESIS = "0" * 64
HEAD_SUFFIX = ".head"
# Fields of an entry, in the order they are written (``signature`` last, over all the others).
FIELDS = ("format", "seq", "time", "platform", "run", "session", "round", "kind", "context", "cohort",
          "masked_with", "threshold", "epsilon", "sent", "prev", "key", "signature")  # fmt: skip


class AuditError(ValueError):
    """The log or its head does not verify (tampered, truncated, or not a crossfed audit log)."""


@dataclass(frozen=True)
class RoundRecord:
    """What one entry says about one secure sum (everything but the chain and signature)."""

    run: str  # the run's out-dir, as the coordinator named it (a resumed run keeps it)
    session: str  # the protocol session (hex), as the server set it
    round: int
    kind: str  # "train" or "evaluate-<splits>"
    context: str  # hex SHA-256 of the global adapter + config this platform received
    cohort: int  # platforms in the signed roster it accepted
    masked_with: int  # nodes whose shares it held when it masked (itself included)
    threshold: int
    sent: Sequence[tuple[str, int]]  # (message kind, bytes), in the order sent; sizes only
    epsilon: float | None = None  # ε spent up to this round; None without differential privacy


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _line(entry: Mapping[str, Any]) -> bytes:
    """The entry's line as written (fields in :data:`FIELDS` order, compact); its hash is SHA-256 of it."""
    return json.dumps({k: entry[k] for k in FIELDS if k in entry}, separators=(",", ":")).encode()


def _hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def head_path(log: Path) -> Path:
    return log.with_name(log.name + HEAD_SUFFIX)


def append(log: Path, identity: Identity, record: RoundRecord, now: dt.datetime | None = None) -> dict[str, Any]:
    """Append one signed entry (fsynced) and rewrite the head; returns the entry.

    Refuses (AuditError) to extend a log that no longer matches its head: a platform whose trail
    was cut or edited does not contribute until someone has looked (``crossfed deploy audit``).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "rb+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # one writer at a time (the lock goes with the file's closing)
        data = fh.read()
        if data and not data.endswith(b"\n"):
            raise AuditError(f"{log}: ends mid-line (cut short or edited); check it with `crossfed deploy audit`")
        count, last = _check_head(log, data.splitlines())
        when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        entry: dict[str, Any] = {
            "format": AUDIT_FORMAT, "seq": count, "time": when.isoformat(timespec="seconds"),
            "platform": identity.platform, "run": record.run, "session": record.session, "round": record.round,
            "kind": record.kind, "context": record.context, "cohort": record.cohort,
            "masked_with": record.masked_with, "threshold": record.threshold, "epsilon": record.epsilon,
            "sent": [{"message": m, "bytes": int(n)} for m, n in record.sent], "prev": last,
            "key": identity.public_key.hex(),
        }  # fmt: skip
        entry["signature"] = identity.sign(_canonical(entry)).hex()
        line = _line(entry)
        fh.write(line + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
        _write_head(log, identity, count + 1, _hash(line))
    return entry


def _check_head(log: Path, lines: list[bytes]) -> tuple[int, str]:
    """(entries, hash of the last) of a log about to grow; AuditError unless it still extends its head."""
    if not lines:
        if head_path(log).exists():
            raise AuditError(f"{log}: the log is empty but its head says it had entries: truncated")
        return 0, GENESIS
    head = _read_head(log)
    if head is None:
        raise AuditError(f"{log}: {len(lines)} entries but no head file {head_path(log).name}: refusing to extend")
    count, at = head["count"], head["head"]
    if not (count <= len(lines) <= count + 1) or _hash(lines[count - 1]) != at or not _chains(lines[count:], at):
        raise AuditError(f"{log}: does not match its head ({count} entries, last {at[:12]}…): cut short or edited; "
                         "check it with `crossfed deploy audit` before this platform contributes again")  # fmt: skip
    return len(lines), _hash(lines[-1])


def _chains(extra: list[bytes], at: str) -> bool:
    """Whether the entry a crash left after the head (if any) names the head's entry as its previous."""
    try:
        return all(json.loads(line)["prev"] == at for line in extra)
    except (ValueError, KeyError, TypeError):
        return False


def _write_head(log: Path, identity: Identity, count: int, last: str) -> None:
    head: dict[str, Any] = {"format": HEAD_FORMAT, "count": count, "head": last, "key": identity.public_key.hex()}
    head["signature"] = identity.sign(_canonical(head)).hex()
    atomic_write_text(head_path(log), json.dumps(head) + "\n", mode=0o600, fsync=True)


def _read_head(log: Path) -> dict[str, Any] | None:
    path = head_path(log)
    if not path.exists():
        return None
    try:
        head = json.loads(path.read_text())
        count, last = head["count"], head["head"]
        valid = head["format"] == HEAD_FORMAT and isinstance(count, int) and count >= 1 and isinstance(last, str)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{path}: unreadable head ({type(exc).__name__}: {exc})") from None
    if not valid:
        raise AuditError(f"{path}: not a {HEAD_FORMAT} file")
    _check_signature(head, str(path), None)
    return head


def _check_signature(obj: dict[str, Any], where: str, keys: set[bytes] | None) -> None:
    """AuditError unless ``obj['signature']`` verifies under ``obj['key']``, one of ``keys`` when given."""
    try:
        key = bytes.fromhex(str(obj.get("key")))
        signature = bytes.fromhex(str(obj.get("signature")))
        public = Ed25519PublicKey.from_public_bytes(key)
    except ValueError:
        raise AuditError(f"{where}: no valid key or signature") from None
    if keys is not None and key not in keys:
        raise AuditError(f"{where}: signed by {fingerprint(key)}, not by a key given with --pub")
    unsigned = {k: v for k, v in obj.items() if k != "signature"}
    try:
        public.verify(signature, _canonical(unsigned))
    except InvalidSignature:
        raise AuditError(f"{where}: signature does not verify (edited)") from None


@dataclass(frozen=True)
class Verified:
    """A log that verified: its entries, the witness ``count:hash`` to keep, and what to say about it."""

    entries: list[dict[str, Any]]
    witness: str  # "<count>:<hash of the last entry>": give it back as ``expect`` next time
    keys: list[str]  # fingerprints of the keys that signed, in order of first use
    notes: list[str]


def verify(log: Path, public_keys: Iterable[bytes] | None = None, expect: str | None = None) -> Verified:
    """Check every signature, the chain, the head and (when given) the witness ``count:hash``.

    ``public_keys``: the platform's identity keys (its ``.secagg.pub``, old ones too after a
    rotation); without them signatures are checked against the key each entry names, which
    proves the log is intact, not who wrote it. AuditError says which entry fails and why.
    """
    keys = None if public_keys is None else set(public_keys)
    try:
        lines = log.read_bytes().splitlines()
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {log}: {exc.strerror}") from None
    entries, prev, signers = [], GENESIS, []
    for i, line in enumerate(lines):
        where = f"{log}: entry {i + 1}"
        try:
            entry = json.loads(line)
        except ValueError:
            raise AuditError(f"{where}: not JSON (edited or cut mid-line)") from None
        if not isinstance(entry, dict) or entry.get("format") != AUDIT_FORMAT or set(entry) != set(FIELDS):
            raise AuditError(f"{where}: not a {AUDIT_FORMAT} entry")
        _check_signature(entry, where, keys)
        if entry["seq"] != i:
            raise AuditError(f"{where}: sequence number {entry['seq']}, expected {i} (entries removed or reordered)")
        if entry["prev"] != prev:
            raise AuditError(f"{where}: does not chain to the entry before it (entries removed or reordered)")
        fp = fingerprint(bytes.fromhex(entry["key"]))
        if fp not in signers:
            signers.append(fp)
        entries.append(entry)
        prev = _hash(line)
    head = _read_head(log)
    notes = []
    if head is None:
        if entries:
            raise AuditError(f"{log}: no head file {head_path(log).name}: cannot tell whether entries were cut off")
    else:
        if keys is not None and bytes.fromhex(head["key"]) not in keys:
            raise AuditError(f"{head_path(log)}: signed by a key not given with --pub")
        if len(entries) < head["count"]:
            raise AuditError(f"{log}: {len(entries)} entries, its head says {head['count']}: truncated")
        if _hash(lines[head["count"] - 1]) != head["head"]:
            raise AuditError(f"{log}: entry {head['count']} is not the one its head names (edited)")
        if len(entries) > head["count"]:
            notes.append(f"{len(entries) - head['count']} entry after the head (a crash between the two writes; "
                         "signed and chained, so kept)")  # fmt: skip
    if expect is not None:
        _check_witness(log, lines, expect)
    if keys is None:
        notes.append("signatures checked against the keys the log names: intact, but not proven to be the "
                     "platform's (give its .secagg.pub with --pub)")  # fmt: skip
    return Verified(entries, f"{len(entries)}:{prev}", signers, notes)


def _check_witness(log: Path, lines: list[bytes], expect: str) -> None:
    count_text, _, at = expect.partition(":")
    if not count_text.isdigit() or int(count_text) < 1 or len(at) != 64:
        raise AuditError(f"`--expect` must be COUNT:HASH as an earlier check printed it, got {expect!r}")
    count = int(count_text)
    if len(lines) < count:
        raise AuditError(f"{log}: {len(lines)} entries, fewer than the {count} witnessed: truncated")
    if _hash(lines[count - 1]) != at:
        raise AuditError(f"{log}: entry {count} is not the one witnessed: the log was rewritten")
