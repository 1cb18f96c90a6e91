"""Key rotation: the platform's new identity, its roster entry, and nothing else changed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common.secagg import ConfigError, Identity, Roster
from common.secagg.identity import load_identity, load_public, save_identity
from deploy.cli import main
from deploy.keys import rotate_identity, update_roster


def _federation(tmp_path: Path, passphrase: bytes | None = None) -> tuple[dict[str, Identity], Path]:
    """Three platforms' identities; web_shop's key files in tmp/keys, the roster of all three in tmp/roster.json."""
    ids = {p: Identity.generate(p) for p in ("app", "social_shop", "web_shop")}
    save_identity(ids["web_shop"], tmp_path / "keys", passphrase)
    roster = tmp_path / "roster.json"
    roster.write_text(Roster.of(ids.values()).to_json())
    return ids, roster


@pytest.mark.parametrize("passphrase", [None, b"s3cret"])
def test_rotation_replaces_the_key_and_its_roster_entry_only(tmp_path: Path, passphrase: bytes | None) -> None:
    # Prepare
    ids, roster = _federation(tmp_path, passphrase)
    key_path = tmp_path / "keys" / "web_shop.secagg.key"
    old_pem = key_path.read_bytes()
    # Execute
    done = rotate_identity("web_shop", tmp_path / "keys", roster, passphrase)
    # Assert: a new key (0600, encrypted as the old one was), the old one gone, the .pub and the entry updated
    new = load_identity(key_path, "web_shop", passphrase)
    assert new.public_key == done.new_public != ids["web_shop"].public_key == done.old_public
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and key_path.read_bytes() != old_pem
    assert (b"ENCRYPTED" in key_path.read_bytes()) == (passphrase is not None)
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["web_shop.secagg.key", "web_shop.secagg.pub"]
    assert load_public(done.pub) == ("web_shop", new.public_key)
    after = Roster.load(roster)
    after.check_own(new)
    assert after.keys == {"app": ids["app"].public_key, "social_shop": ids["social_shop"].public_key,
                          "web_shop": new.public_key}  # fmt: skip


def test_the_operator_replaces_the_entry_from_the_new_pub(tmp_path: Path) -> None:
    # Prepare: the platform rotated with its own roster copy; the operator holds the old roster
    ids, roster = _federation(tmp_path)
    operator = tmp_path / "operator-roster.json"
    operator.write_text(roster.read_text())
    done = rotate_identity("web_shop", tmp_path / "keys", roster)
    # Execute
    code = main(["deploy", "roster", "--update", str(operator), "--pub", str(done.pub)])
    # Assert: the operator's roster is now the platform's, byte for byte
    assert code == 0 and operator.read_text() == roster.read_text()
    assert Roster.load(operator).keys["app"] == ids["app"].public_key


def test_rotation_refuses_a_key_the_roster_does_not_know_and_changes_nothing(tmp_path: Path) -> None:
    # Prepare: the roster lists another web_shop key than the one on disk
    ids, roster = _federation(tmp_path)
    roster.write_text(Roster.of([ids["app"], ids["social_shop"], Identity.generate("web_shop")]).to_json())
    before = (tmp_path / "keys" / "web_shop.secagg.key").read_bytes(), roster.read_text()
    # Execute / Assert
    with pytest.raises(ConfigError, match="does not list platform `web_shop` with this platform's identity"):
        rotate_identity("web_shop", tmp_path / "keys", roster)
    assert ((tmp_path / "keys" / "web_shop.secagg.key").read_bytes(), roster.read_text()) == before
    with pytest.raises(ConfigError, match="`other` is not in the roster"):
        update_roster(roster, [save_identity(Identity.generate("other"), tmp_path / "other")[1]])


def test_rotate_key_command_says_what_to_send(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, roster = _federation(tmp_path)
    code = main(["deploy", "rotate-key", "--platform", "web_shop", "--dir", str(tmp_path / "keys"),
                 "--roster", str(roster)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "its private key is gone" in out and "crossfed deploy roster --update" in out
