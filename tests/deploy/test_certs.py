"""deploy.certs and the command lines of deploy.commands: fast, no processes started."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.certs import (
    CertError,
    TlsFiles,
    create_node_key,
    create_tls,
    load_certificate,
    load_node_private_key,
    load_node_public_key,
)
from deploy.commands import SuperLinkSpec, SuperNodeSpec, node_config, superlink_command, supernode_command
from deploy.errors import DeployError, InsecureDeploymentWarning


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_certificate_names_host_and_loopback_and_chains_to_ca(tmp_path: Path) -> None:
    # Prepare / Execute
    tls = create_tls(tmp_path, "fl.example.org", extra_names=("10.0.0.7",))
    # Assert: SANs (loopback too: the SuperLink's own SuperExec dials 127.0.0.1 with this cert)
    san = load_certificate(tls.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("10.0.0.7", "127.0.0.1", "::1")
    }
    # Assert: Python's TLS stack (what httpx/uvicorn use) accepts the chain for that name
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    ctx.load_cert_chain(tls.server_cert, tls.server_key)  # key matches the certificate
    load_certificate(tls.server_cert).verify_directly_issued_by(load_certificate(tls.ca_cert))
    assert _mode(tls.ca_key) == 0o600 and _mode(tls.server_key) == 0o600
    assert TlsFiles.in_dir(tmp_path).check() == tls


def test_server_certificate_is_not_issued_by_another_ca(tmp_path: Path) -> None:
    # Prepare
    tls = create_tls(tmp_path / "a", "fl.example.org")
    other = create_tls(tmp_path / "b", "fl.example.org")
    # Execute / Assert
    with pytest.raises((ValueError, InvalidSignature)):
        load_certificate(tls.server_cert).verify_directly_issued_by(load_certificate(other.ca_cert))


def test_key_material_is_never_overwritten_silently(tmp_path: Path) -> None:
    # Prepare
    create_tls(tmp_path, "fl.example.org")
    create_node_key(tmp_path, "web_shop")
    before = (tmp_path / "web_shop.key").read_bytes()
    # Execute / Assert
    with pytest.raises(CertError, match="ca.key: already exists"):
        create_tls(tmp_path, "fl.example.org")
    with pytest.raises(CertError, match="web_shop.key: already exists"):
        create_node_key(tmp_path, "web_shop")
    assert (tmp_path / "web_shop.key").read_bytes() == before
    create_node_key(tmp_path, "web_shop", overwrite=True)
    assert (tmp_path / "web_shop.key").read_bytes() != before


def test_node_key_is_what_flower_loads(tmp_path: Path) -> None:
    # Prepare
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key  # `flwr supernode register`
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

    key = create_node_key(tmp_path, "web_shop")
    # Execute: exactly flower-supernode's and `flwr supernode register`'s loaders
    private = load_ssh_private_key(key.private.read_bytes(), None)
    registered = bytes_to_public_key(try_load_public_key(key.public))
    # Assert
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    signature = private.sign(b"2026-01-01T00:00:00", ec.ECDSA(hashes.SHA256()))
    assert verify_signature(registered, b"2026-01-01T00:00:00", signature)
    assert _mode(key.private) == 0o600 and _mode(key.public) == 0o644
    assert (
        load_node_private_key(key.private).public_key().public_numbers()
        == load_node_public_key(key.public).public_numbers()
    )


def test_another_nodes_key_does_not_verify(tmp_path: Path) -> None:
    # Prepare: the "wrong key" twin of the test above
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

    mine = create_node_key(tmp_path, "web_shop")
    theirs = create_node_key(tmp_path, "app")
    # Execute
    signature = load_node_private_key(theirs.private).sign(b"ts", ec.ECDSA(hashes.SHA256()))
    # Assert
    assert not verify_signature(bytes_to_public_key(try_load_public_key(mine.public)), b"ts", signature)


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = create_node_key(tmp_path, "web_shop")
    key.private.chmod(0o644)
    with pytest.raises(CertError, match="chmod 600"):
        load_node_private_key(key.private)


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b"])
def test_platform_name_must_be_plain(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CertError, match="--platform"):
        create_node_key(tmp_path, bad)


def test_node_config_resolves_data_dir_and_refuses_shadowing(tmp_path: Path) -> None:
    assert node_config("app", tmp_path, "cuda:1") == f"platform='app' data-dir='{tmp_path.resolve()}' device='cuda:1'"
    assert node_config("app") == "platform='app' data-dir='' device='cpu'"
    with pytest.raises(ValueError, match="platform"):
        node_config("app", extra={"platform": "web"})


def test_superlink_command_has_tls_and_node_auth_by_default(tmp_path: Path) -> None:
    # Prepare
    tls = create_tls(tmp_path, "fl.example.org")
    # Execute
    cmd = superlink_command(SuperLinkSpec(tls=tls, port=9100, database=tmp_path / "s.db"))
    # Assert
    expected = {"--ssl-ca-certfile": tls.ca_cert, "--ssl-certfile": tls.server_cert, "--ssl-keyfile": tls.server_key,
                "--port": "9100", "--database": tmp_path / "s.db"}  # fmt: skip
    for flag, value in expected.items():
        assert cmd[cmd.index(flag) + 1] == str(value)
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd


def test_insecure_only_when_asked_and_always_warned(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="needs TLS"):
        SuperLinkSpec(tls=None)
    with pytest.raises(DeployError, match="authentication needs TLS"):
        SuperLinkSpec(tls=None, insecure=True)
    with pytest.warns(InsecureDeploymentWarning, match="plaintext"):
        cmd = superlink_command(SuperLinkSpec(tls=None, insecure=True, node_auth=False))
    assert "--insecure" in cmd


def test_supernode_command(tmp_path: Path) -> None:
    # Prepare
    tls = create_tls(tmp_path, "fl.example.org")
    key = create_node_key(tmp_path, "web_shop")
    spec = SuperNodeSpec(
        "web_shop", "fl.example.org:9093", tls.ca_cert, key.private, data_dir=tmp_path, runtime_port=9200,
        extra={"require-secagg": True},
    )  # fmt: skip
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing insecure here
        cmd = supernode_command(spec)
    # Assert
    assert cmd[cmd.index("--node-config") + 1] == (
        f"platform='web_shop' data-dir='{tmp_path.resolve()}' device='cpu' require-secagg=true"
    )
    assert cmd[cmd.index("--root-certificates") + 1] == str(tls.ca_cert)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key.private)
    assert cmd[cmd.index("--isolation") + 1] == "process" and cmd[cmd.index("--port") + 1] == "9200"
    assert "--insecure" not in cmd
    with pytest.raises(DeployError, match="CA certificate"):
        SuperNodeSpec("web_shop", "x:1", None, None)
