"""The platform's audit log: signed, chained, with a head; every edit, cut and foreign key is caught."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from clients.audit import AUDIT_FILE, log_path
from common.audit import GENESIS, AuditError, RoundRecord, append, head_path, verify
from common.config import AppConfig
from common.secagg import Identity

ME = Identity.generate("web_shop")
T0 = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


def _record(rnd: int, kind: str = "train") -> RoundRecord:
    sent = [("setup", 180), ("share_keys", 400), ("masked_input", 90_000)]
    return RoundRecord(run="/srv/run1", session="ab" * 16, round=rnd, kind=kind, context="cd" * 32, cohort=3,
                       masked_with=3, threshold=3, sent=sent)  # fmt: skip


def _log(tmp_path: Path, rounds: int = 3) -> Path:
    log = tmp_path / AUDIT_FILE
    for r in range(1, rounds + 1):
        append(log, ME, _record(r), now=T0 + dt.timedelta(minutes=r))
    return log


def test_entries_verify_in_order_with_what_was_sent_and_no_value(tmp_path: Path) -> None:
    # Execute
    log = _log(tmp_path)
    checked = verify(log, [ME.public_key])
    # Assert
    assert [e["round"] for e in checked.entries] == [1, 2, 3] and [e["seq"] for e in checked.entries] == [0, 1, 2]
    first = checked.entries[0]
    assert first["prev"] == GENESIS and first["epsilon"] is None and first["time"] == "2026-12-06T12:01:00+00:00"
    assert first["sent"] == [{"message": "setup", "bytes": 180}, {"message": "share_keys", "bytes": 400},
                             {"message": "masked_input", "bytes": 90_000}]  # fmt: skip
    assert (first["cohort"], first["masked_with"], first["threshold"], first["kind"]) == (3, 3, 3, "train")
    assert checked.witness.startswith("3:") and not checked.notes
    assert oct(log.stat().st_mode & 0o777) == "0o600" and oct(head_path(log).stat().st_mode & 0o777) == "0o600"


def test_every_flipped_byte_is_detected(tmp_path: Path) -> None:
    # Prepare
    log = _log(tmp_path, rounds=2)
    original = log.read_bytes()
    # Execute / Assert: flip each bit 0 of each byte in turn (newlines included)
    for i in range(len(original)):
        tampered = bytearray(original)
        tampered[i] ^= 0x01
        log.write_bytes(bytes(tampered))
        with pytest.raises(AuditError):
            verify(log, [ME.public_key])
    log.write_bytes(original)  # negative twin: the untouched log verifies
    verify(log, [ME.public_key])


def test_a_dropped_last_entry_or_a_deleted_head_is_detected(tmp_path: Path) -> None:
    # Prepare
    log = _log(tmp_path)
    lines = log.read_bytes().splitlines(keepends=True)
    # Execute / Assert: the last entry cut off
    log.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(AuditError, match="2 entries, its head says 3: truncated"):
        verify(log, [ME.public_key])
    # ... and the platform refuses to extend it
    with pytest.raises(AuditError, match="does not match its head"):
        append(log, ME, _record(4))
    # ... a middle entry removed: the chain breaks
    log.write_bytes(lines[0] + lines[2])
    with pytest.raises(AuditError, match="entry 2: sequence number 2, expected 1"):
        verify(log, [ME.public_key])
    # ... the head deleted with the log cut: no longer sure nothing is missing
    log.write_bytes(b"".join(lines[:-1]))
    head_path(log).unlink()
    with pytest.raises(AuditError, match="no head file"):
        verify(log, [ME.public_key])


def test_a_crash_between_append_and_head_leaves_a_log_that_verifies_and_grows(tmp_path: Path) -> None:
    # Prepare: the head as it was before the last append
    log = _log(tmp_path, rounds=1)
    head_before = head_path(log).read_bytes()
    append(log, ME, _record(2))
    head_path(log).write_bytes(head_before)
    # Execute
    checked = verify(log, [ME.public_key])
    append(log, ME, _record(3))
    # Assert
    assert len(checked.entries) == 2 and "1 entry after the head" in checked.notes[0]
    assert len(verify(log, [ME.public_key]).entries) == 3


def test_another_key_and_a_rewrite_by_the_key_holder(tmp_path: Path) -> None:
    # Prepare
    log = _log(tmp_path)
    witness = verify(log, [ME.public_key]).witness
    # Execute / Assert: the log is not this platform's
    with pytest.raises(AuditError, match="not by a key given with --pub"):
        verify(log, [Identity.generate("web_shop").public_key])
    # ... without --pub, intact but unproven
    assert "not proven" in verify(log).notes[-1]
    # ... the key holder rewrites a shorter log with a fresh head: only the witness catches it
    log.unlink()
    head_path(log).unlink()
    _log(tmp_path, rounds=2)
    verify(log, [ME.public_key])
    with pytest.raises(AuditError, match="fewer than the 3 witnessed: truncated"):
        verify(log, [ME.public_key], expect=witness)
    append(log, ME, _record(9))
    with pytest.raises(AuditError, match="entry 3 is not the one witnessed"):
        verify(log, [ME.public_key], expect=witness)


def test_audit_command_prints_rounds_and_fails_on_a_tampered_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.secagg.identity import save_identity
    from deploy.cli import main

    # Prepare
    log = _log(tmp_path)
    _, pub = save_identity(ME, tmp_path / "keys")
    # Execute
    ok = main(["deploy", "audit", str(log), "--pub", str(pub)])
    out = capsys.readouterr().out
    entries = log.read_text().splitlines()
    entries[1] = json.dumps({**json.loads(entries[1]), "cohort": 2}, separators=(",", ":"))
    log.write_text("\n".join(entries) + "\n")
    bad = main(["deploy", "audit", str(log), "--pub", str(pub)])
    # Assert
    assert ok == 0 and "verified: 3 entries" in out and "/srv/run1" in out and "witness 3:" in out
    assert bad == 1 and "entry 2: signature does not verify (edited)" in capsys.readouterr().err


def test_the_log_lives_in_the_platforms_state_dir(tmp_path: Path) -> None:
    cfg = AppConfig().replace(**{"out-dir": str(tmp_path / "run")})
    deployed = {"platform": "web_shop", "state-dir": str(tmp_path / "state")}
    assert log_path(deployed, cfg, "web_shop") == tmp_path / "state" / "web_shop" / AUDIT_FILE
    assert log_path({"partition-id": 0}, cfg, "app") == tmp_path / "run" / "private" / "app" / AUDIT_FILE


def test_the_platform_will_not_extend_a_log_cut_mid_line_or_with_a_foreign_extra_line(tmp_path: Path) -> None:
    # Prepare
    log = _log(tmp_path, rounds=2)
    original = log.read_bytes()
    # Execute / Assert: a last line cut mid-way
    log.write_bytes(original[:-10])
    with pytest.raises(AuditError, match="ends mid-line"):
        append(log, ME, _record(3))
    # ... an extra line after the head that does not chain to it
    first = original.splitlines(keepends=True)[0]
    log.write_bytes(original + first)
    with pytest.raises(AuditError, match="does not match its head"):
        append(log, ME, _record(3))
    log.write_bytes(original)  # negative twin
    append(log, ME, _record(3))
    assert len(verify(log, [ME.public_key]).entries) == 3
