"""Key material for a deployment: a private CA, the SuperLink's TLS certificate, node keys.

TLS (what flower-superlink 1.42 wants): ``--ssl-ca-certfile ca.pem --ssl-certfile
server.pem --ssl-keyfile server.key``; SuperNodes and the ``flwr`` CLI verify the
SuperLink with ``--root-certificates ca.pem`` / ``root-certificates = "/abs/ca.pem"``.
The server certificate always carries ``localhost``, ``127.0.0.1`` and ``::1`` besides
the public host name because the SuperLink's own SuperExec (which starts the ServerApp)
connects to the Runtime API over loopback with the same certificate.

SuperNode authentication (``--enable-supernode-auth``): every SuperNode owns an EC key
on a NIST curve (P-384 here) stored in **OpenSSH** format, which is what
``flower-supernode --auth-supernode-private-key`` loads (``load_ssh_private_key``) and
what ``flwr supernode register <key.pub> <connection>`` loads (``load_ssh_public_key``).
The SuperLink only lets in public keys registered through its Control API; a SuperNode
cannot register itself while authentication is on.

Private keys are written with mode 0600 (created so, never chmod-ed afterwards) and an
existing key is never overwritten unless asked.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import SECRET_MODE, atomic_write_bytes

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")
NODE_KEY_CURVE = ec.SECP384R1  # flwr accepts any NIST curve; P-384 is what its docs generate


class CertError(ValueError):
    """Key material is missing, malformed, of the wrong kind, or would be overwritten."""


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS SuperLink needs (``ca_key`` stays with whoever issues certificates)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, certs_dir: Path) -> TlsFiles:
        d = Path(certs_dir).expanduser().resolve()
        return cls(d / CA_CERT, d / CA_KEY, d / SERVER_CERT, d / SERVER_KEY)

    def check(self, *, need_server: bool = True) -> TlsFiles:
        """Raise CertError naming the first missing file."""
        wanted = [self.ca_cert] + ([self.server_cert, self.server_key] if need_server else [])
        for path in wanted:
            if not path.is_file():
                raise CertError(f"{path}: no such file (create it with `crossfed deploy ca --host NAME --out DIR`)")
        return self


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format)."""

    private: Path
    public: Path

    @classmethod
    def for_platform(cls, out_dir: Path, platform: str) -> NodeKey:
        d = Path(out_dir).expanduser().resolve()
        return cls(d / f"{platform}.key", d / f"{platform}.key.pub")


# ---------------------------------------------------------------------------- TLS


def create_ca(out_dir: Path, common_name: str = "crossfed deployment CA", days: int = 825,
              overwrite: bool = False) -> tuple[Path, Path]:  # fmt: skip
    """A self-signed CA: ``ca.pem`` (public, give it to every node) and ``ca.key`` (0600)."""
    out = Path(out_dir).expanduser().resolve()
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        _builder(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    return _store(cert, key, out / CA_CERT, out / CA_KEY, overwrite)


def _store(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path,
           overwrite: bool) -> tuple[Path, Path]:  # fmt: skip
    """The key first (0600), so a crash never leaves a certificate without its key."""
    _write_private(key_path, _pkcs8(key), overwrite)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM), overwrite)
    return cert_path, key_path


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime,
             days: int) -> x509.CertificateBuilder:  # fmt: skip
    """Subject, issuer, key, a random serial and a validity that starts 5 minutes ago (clock skew)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
    )  # fmt: skip


def create_server_cert(out_dir: Path, host: str, ca_cert: Path, ca_key: Path, days: int = 397,
                       extra_names: tuple[str, ...] = (), overwrite: bool = False) -> tuple[Path, Path]:  # fmt: skip
    """``server.pem`` + ``server.key`` for ``host`` (a DNS name or an IP), signed by the CA."""
    out = Path(out_dir).expanduser().resolve()
    issuer = load_certificate(ca_cert)
    issuer_key = _load_pem_private_key(ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), issuer.subject, key.public_key(),
                 now, days)
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(host, *extra_names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA384())
    )  # fmt: skip
    return _store(cert, key, out / SERVER_CERT, out / SERVER_KEY, overwrite)


def create_tls(out_dir: Path, host: str, extra_names: tuple[str, ...] = (), overwrite: bool = False) -> TlsFiles:
    """CA + server certificate in one folder (``crossfed deploy ca``)."""
    ca_cert, ca_key = create_ca(out_dir, overwrite=overwrite)
    cert, key = create_server_cert(out_dir, host, ca_cert, ca_key, extra_names=extra_names, overwrite=overwrite)
    return TlsFiles(ca_cert, ca_key, cert, key)


def subject_alt_names(host: str, *extra: str) -> list[x509.GeneralName]:
    """DNS names and IP addresses for ``host`` + ``extra`` + loopback, de-duplicated, in order."""
    names: list[x509.GeneralName] = []
    for value in (host, *extra, *LOOPBACK_NAMES, *LOOPBACK_IPS):
        value = value.strip().strip("[]")
        if not value:
            raise CertError("a certificate host name must not be empty")
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            entry = x509.DNSName(value)
        if entry not in names:
            names.append(entry)
    return names


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise CertError(f"{path}: no such file") from exc
    except ValueError as exc:
        raise CertError(f"{path}: not a PEM certificate ({exc})") from exc


# ---------------------------------------------------------------------------- node authentication


def create_node_key(out_dir: Path, platform: str, overwrite: bool = False) -> NodeKey:
    """``<platform>.key`` (OpenSSH EC P-384 private key, 0600) and ``<platform>.key.pub``."""
    if not platform or "/" in platform or platform.startswith("."):
        raise CertError(f"`--platform` must be a plain name, got {platform!r}")
    paths = NodeKey.for_platform(out_dir, platform)
    key = ec.generate_private_key(NODE_KEY_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(paths.private, private, overwrite)
    _write_public(paths.public, public + f" crossfed-{platform}\n".encode(), overwrite)
    return paths


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Check a public key the way ``flwr supernode register`` will (OpenSSH, EC, NIST curve)."""
    key = _load_ssh(path, lambda data: serialization.load_ssh_public_key(data), "an OpenSSH public key")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertError(f"{path}: expected an EC (NIST curve) key, got {type(key).__name__}")
    return key


def _load_ssh(path: Path, loader: Callable[[bytes], Any], what: str) -> Any:
    """Read + parse one key file; every failure becomes one CertError naming the file."""
    try:
        return loader(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise CertError(f"{path}: no such file") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertError(f"{path}: not {what} ({exc})") from exc


def load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Check a private key the way ``flower-supernode --auth-supernode-private-key`` will."""
    key = _load_ssh(path, lambda data: serialization.load_ssh_private_key(data, None),
                    "an unencrypted OpenSSH private key")  # fmt: skip
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{path}: expected an EC (NIST curve) key, got {type(key).__name__}")
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        raise CertError(f"{path}: a private key must not be readable by others (mode {mode:o}; chmod 600 it)")
    return key


def public_key_fingerprint(path: Path) -> str:
    """SHA-256 of the key (hex, first 16 bytes), to compare what a node and the SuperLink hold."""
    raw = load_node_public_key(path).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(raw)
    return digest.finalize()[:16].hex(":")


# ---------------------------------------------------------------------------- helpers


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_pem_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    except FileNotFoundError as exc:
        raise CertError(f"{path}: no such file") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{path}: expected an EC key, got {type(key).__name__}")
    return key


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    _write(path, data, SECRET_MODE, overwrite)


def _write_public(path: Path, data: bytes, overwrite: bool) -> None:
    _write(path, data, 0o644, overwrite)


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Atomic and durable; exactly ``mode`` (the temp file is 0600 until then, so a key is never world-readable)."""
    if path.exists() and not overwrite:
        raise CertError(f"{path}: already exists (refusing to overwrite key material; pass --overwrite)")
    atomic_write_bytes(path, data, mode=mode, fsync=True)
