"""Platform identities, the operator's roster, platform policy: files, parsing and their negative twins."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from clients import secure
from common.config import AppConfig
from common.secagg import ConfigError, Identity, PlatformPolicy, Roster, SecAggConfig
from common.secagg.errors import AbortError
from common.secagg.identity import (
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    build_roster,
    fingerprint,
    load_identity,
    read_passphrase,
    save_identity,
)


def test_identity_files_round_trip_and_the_key_stays_private(tmp_path: Path) -> None:
    # Prepare
    me = Identity.generate("web_shop")
    # Execute
    key_path, pub_path = save_identity(me, tmp_path)
    roster = build_roster([pub_path])
    # Assert
    assert load_identity(key_path, "web_shop") == me
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert roster.keys == {"web_shop": me.public_key}
    assert json.loads(pub_path.read_text())["fingerprint"] == fingerprint(me.public_key)
    assert "private" not in repr(me) and me.private_key.hex() not in repr(me)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        save_identity(me, tmp_path)


def test_an_identity_encrypted_at_rest_loads_only_with_its_passphrase(tmp_path: Path) -> None:
    # Prepare
    me = Identity.generate("web_shop")
    # Execute
    key_path, _ = save_identity(me, tmp_path, passphrase=b"s3cret")
    # Assert
    assert b"ENCRYPTED PRIVATE KEY" in key_path.read_bytes() and me.private_key not in key_path.read_bytes()
    assert load_identity(key_path, "web_shop", b"s3cret") == me
    with pytest.raises(ConfigError, match=f"wrong passphrase for the identity key .*{PASSPHRASE_ENV}"):
        load_identity(key_path, "web_shop", b"not it")  # negative twin
    with pytest.raises(ConfigError, match=f"{key_path}: the identity key is encrypted; set {PASSPHRASE_ENV}"):
        load_identity(key_path, "web_shop")


def test_the_passphrase_comes_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    # Prepare
    secret = tmp_path / "passphrase"
    secret.write_text("from file\n")
    secret.chmod(0o600)
    # Execute / Assert: the file wins over the value; neither set: no passphrase
    assert read_passphrase({PASSPHRASE_FILE_ENV: str(secret), PASSPHRASE_ENV: "value"}) == b"from file"
    assert read_passphrase({PASSPHRASE_ENV: "value"}) == b"value"
    assert read_passphrase({}) is None
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=f"passphrase file is readable by group or others .*chmod 600 {secret}"):
        read_passphrase({PASSPHRASE_FILE_ENV: str(secret)})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_readable_by_others_is_refused_naming_the_fix(tmp_path: Path, mode: int) -> None:
    # Prepare
    key_path, _ = save_identity(Identity.generate("web_shop"), tmp_path)
    key_path.chmod(mode)
    # Execute / Assert
    with pytest.raises(ConfigError, match=f"^{key_path}: identity key is readable .*run `chmod 600 {key_path}`$"):
        load_identity(key_path, "web_shop")
    key_path.chmod(0o600)  # negative twin: the fix works
    assert load_identity(key_path, "web_shop").platform == "web_shop"


def test_a_roster_entry_is_replaced_and_no_other() -> None:
    a, b, b2 = Identity.generate("a"), Identity.generate("b"), Identity.generate("b")
    roster = Roster.of([a, b]).replace("b", b2.public_key)
    assert roster.keys == {"a": a.public_key, "b": b2.public_key}
    with pytest.raises(ConfigError, match="`c` is not in the roster"):
        roster.replace("c", Identity.generate("c").public_key)


def test_roster_json_round_trip_and_signature_check() -> None:
    a, b = Identity.generate("a"), Identity.generate("b")
    roster = Roster.from_json(Roster.of([a, b]).to_json())
    roster.verify("a", a.sign(b"statement"), b"statement")
    with pytest.raises(AbortError, match="`a` does not verify"):  # negative twin: b's signature under a's name
        roster.verify("a", b.sign(b"statement"), b"statement")
    with pytest.raises(AbortError, match="not in this platform's roster"):
        roster.verify("c", a.sign(b"statement"), b"statement")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format="other"), "not a crossfed-secagg-roster/1 file"),
        (lambda d: d["platforms"]["a"].update(ed25519="00" * 31), "32-byte hex"),
        (lambda d: d["platforms"]["a"].update(fingerprint="sha256:00"), "fingerprint does not match"),
        (lambda d: d["platforms"].update(c=d["platforms"]["a"]), "one public key under two platform names"),
        (lambda d: d.update(platforms={}), "lists no platform"),
    ],
)
def test_a_roster_that_does_not_verify_is_refused(edit, match) -> None:  # noqa: ANN001
    data = json.loads(Roster.of([Identity.generate("a"), Identity.generate("b")]).to_json())
    edit(data)
    with pytest.raises(ConfigError, match=match):
        Roster.from_json(json.dumps(data), "roster.json")


def test_simulated_identities_are_deterministic_and_distinct() -> None:
    assert Identity.simulated("app") == Identity.simulated("app")
    assert Identity.simulated("app").public_key != Identity.simulated("web_shop").public_key


def test_policy_from_node_config_and_the_server_can_only_tighten_it() -> None:
    # Prepare
    policy = PlatformPolicy.from_node_config({"secagg-min-cohort": 4, "secagg-threshold-fraction": 1})
    # Execute
    lax = policy.apply(SecAggConfig(min_cohort=2, threshold_fraction=0.51, max_cohort=64))
    strict = policy.apply(SecAggConfig(min_cohort=6, threshold_fraction=1.0, max_cohort=64))
    # Assert
    assert (lax.min_cohort, lax.threshold_fraction) == (4, 1.0)
    assert (strict.min_cohort, strict.threshold_fraction) == (6, 1.0)
    assert PlatformPolicy() == PlatformPolicy(min_cohort=3, threshold_fraction=2 / 3, max_rounds=1000)
    with pytest.raises(ConfigError, match="`secagg-min-cohort` must be >= 2"):
        PlatformPolicy.from_node_config({"secagg-min-cohort": 1})
    with pytest.raises(ConfigError, match="`secagg-max-rounds`"):
        PlatformPolicy(max_rounds=0)


def test_a_deployed_platform_without_identity_says_how_to_provision_one() -> None:
    with pytest.raises(ConfigError, match="crossfed deploy identity --platform web_shop"):
        secure.platform_trust({"platform": "web_shop"}, "web_shop", AppConfig())


def test_a_deployed_platform_missing_from_its_roster_is_refused(tmp_path: Path) -> None:
    key_path, _ = save_identity(Identity.generate("web_shop"), tmp_path)
    roster = tmp_path / "roster.json"
    roster.write_text(Roster.of([Identity.generate("app"), Identity.generate("web_shop")]).to_json())
    node_config = {"platform": "web_shop", "secagg-identity": str(key_path), "secagg-roster": str(roster)}
    with pytest.raises(ConfigError, match="does not list platform `web_shop` with this platform's identity"):
        secure.platform_trust(node_config, "web_shop", AppConfig())


def test_simulated_platforms_get_the_datasets_roster_and_a_cohort_of_two() -> None:
    trust = secure.platform_trust({"partition-id": 0}, "app", AppConfig())
    assert sorted(trust.roster.keys) == ["app", "social_shop", "web_shop"]
    assert trust.identity == Identity.simulated("app") and trust.policy.min_cohort == 2


def test_a_deployed_node_loads_its_encrypted_key_and_refuses_one_others_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the ClientApp's own path to the identity (node_config + the environment's passphrase)
    me = Identity.generate("web_shop")
    key_path, _ = save_identity(me, tmp_path, passphrase=b"s3cret")
    roster = tmp_path / "roster.json"
    roster.write_text(Roster.of([me, Identity.generate("app")]).to_json())
    node_config = {"platform": "web_shop", "secagg-identity": str(key_path), "secagg-roster": str(roster)}
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    # Execute / Assert
    assert secure.platform_trust(node_config, "web_shop", AppConfig()).identity == me
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        secure.platform_trust(node_config, "web_shop", AppConfig())
    monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
    key_path.chmod(0o644)
    with pytest.raises(ConfigError, match=f"run `chmod 600 {key_path}`"):
        secure.platform_trust(node_config, "web_shop", AppConfig())
