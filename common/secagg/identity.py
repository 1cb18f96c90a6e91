"""Long-term platform identities and the roster that every platform gets out of band.

Each platform holds an Ed25519 signing key (``Identity``); the operator collects the public
halves into a ``Roster`` (platform name -> public key) and hands the same roster file to every
platform through its own node_config, never through the coordinator. A platform signs its
per-round X25519 keys and its view of the round's survivor set with its identity, and checks
every peer's signature against the roster, so a server cannot answer in a platform's place
(Sybil / key substitution) or show platforms different survivor sets.

Why not the SuperNode authentication key: Flower registers that key with the SuperLink (the
party this protects against), signs its own transport requests with it (ECDSA), and a
platform's peers never see it. A separate Ed25519 key keeps the two protocols' signatures
apart and lets the roster come from the operator alone.

Simulated platforms (``Identity.simulated``) derive their key from their public name: this
exercises every check of the protocol on one machine and protects nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.files import InputFileError, read_json, read_text
from common.secagg.errors import AbortError, ConfigError

ROSTER_FORMAT = "crossfed-secagg-roster/1"
PUBLIC_FORMAT = "crossfed-secagg-identity/1"
KEY_SUFFIX, PUB_SUFFIX = ".secagg.key", ".secagg.pub"
_SIMULATED = b"crossfed-secagg/simulated-identity/"


def fingerprint(public_key: bytes) -> str:
    """``sha256:<hex>`` of a raw Ed25519 public key: what operators compare by phone or mail."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def _check_name(platform: object) -> str:
    if not isinstance(platform, str) or not platform or len(platform) > 128 or not platform.isprintable():
        raise ConfigError(f"a platform name must be 1..128 printable characters, got {platform!r}")
    return platform


@dataclass(frozen=True)
class Identity:
    """One platform's signing key (secret: stays on the platform)."""

    platform: str
    private_key: bytes  # raw Ed25519, 32 bytes

    def __post_init__(self) -> None:
        _check_name(self.platform)
        if not isinstance(self.private_key, bytes) or len(self.private_key) != 32:
            raise ConfigError("an identity key must be a 32-byte raw Ed25519 private key")

    def __repr__(self) -> str:  # never print the key
        return f"Identity({self.platform!r}, {fingerprint(self.public_key)})"

    @property
    def public_key(self) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private_key).public_key().public_bytes_raw()

    def sign(self, statement: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.private_key).sign(statement)

    @classmethod
    def generate(cls, platform: str) -> Identity:
        return cls(platform, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def simulated(cls, platform: str) -> Identity:
        """Deterministic, public identity for a simulated platform (no secrecy at all)."""
        return cls(platform, hashlib.sha256(_SIMULATED + _check_name(platform).encode()).digest())


@dataclass(frozen=True)
class Roster:
    """Platform name -> raw Ed25519 public key; the same for every platform of a federation."""

    keys: Mapping[str, bytes]

    def __post_init__(self) -> None:
        keys = {}
        for name, key in dict(self.keys).items():
            if not isinstance(key, bytes) or len(key) != 32:
                raise ConfigError(f"roster key of `{name}` must be 32 raw bytes")
            keys[_check_name(name)] = key
        if len(set(keys.values())) != len(keys):
            raise ConfigError("the roster lists one public key under two platform names")
        object.__setattr__(self, "keys", keys)

    @classmethod
    def of(cls, identities: Iterable[Identity]) -> Roster:
        return cls({i.platform: i.public_key for i in identities})

    def __contains__(self, platform: object) -> bool:
        return platform in self.keys

    def verify(self, platform: str, signature: bytes, statement: bytes) -> None:
        """AbortError unless ``platform`` is listed and signed ``statement``."""
        key = self.keys.get(platform)
        if key is None:
            raise AbortError(f"platform `{platform}` is not in this platform's roster")
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, statement)
        except (InvalidSignature, ValueError):
            raise AbortError(f"signature of platform `{platform}` does not verify against the roster") from None

    def check_own(self, identity: Identity) -> None:
        """ConfigError unless the roster lists this platform with this identity's key."""
        if self.keys.get(identity.platform) != identity.public_key:
            raise ConfigError(
                f"the roster does not list platform `{identity.platform}` with this platform's identity key "
                f"({fingerprint(identity.public_key)}); ask the operator for the current roster"
            )

    def replace(self, platform: str, public_key: bytes) -> Roster:
        """This roster with ``platform``'s key replaced, every other entry as it was (key rotation)."""
        if platform not in self.keys:
            raise ConfigError(f"platform `{platform}` is not in the roster: nothing to replace (add it with "
                              "`crossfed deploy roster`)")  # fmt: skip
        return Roster({**self.keys, platform: public_key})

    def to_json(self) -> str:
        platforms = {n: {"ed25519": k.hex(), "fingerprint": fingerprint(k)} for n, k in sorted(self.keys.items())}
        return json.dumps({"format": ROSTER_FORMAT, "platforms": platforms}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "roster") -> Roster:
        """Parse and check a roster; ConfigError naming ``where`` and the entry otherwise."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if (
            not isinstance(data, dict)
            or data.get("format") != ROSTER_FORMAT
            or not isinstance(data.get("platforms"), dict)
        ):
            raise ConfigError(f"{where}: not a {ROSTER_FORMAT} file")
        keys = {}
        for name, entry in data["platforms"].items():
            keys[name] = _public_from_entry(entry, f"{where}: platform `{name}`")
        if not keys:
            raise ConfigError(f"{where}: lists no platform")
        return cls(keys)

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        p = Path(path).expanduser()
        try:
            text = read_text(p)  # UTF-8, bounded: one line naming the file otherwise
        except InputFileError as exc:
            raise ConfigError(f"cannot read the secure-aggregation roster: {exc}") from None
        return cls.from_json(text, str(p))


def _public_from_entry(entry: object, where: str) -> bytes:
    if not isinstance(entry, dict) or not isinstance(entry.get("ed25519"), str):
        raise ConfigError(f"{where}: needs an `ed25519` public key (hex)")
    try:
        key = bytes.fromhex(entry["ed25519"])
        Ed25519PublicKey.from_public_bytes(key)
    except ValueError:
        raise ConfigError(f"{where}: `ed25519` is not a 32-byte hex public key") from None
    if "fingerprint" in entry and entry["fingerprint"] != fingerprint(key):
        raise ConfigError(f"{where}: fingerprint does not match its key")
    return key


# -- files --------------------------------------------------------------------------
# Encryption at rest: the passphrase comes from the environment, never from a command line (where
# `ps` shows it): the value itself, or a file (mode 0600) whose first line is the passphrase.
PASSPHRASE_ENV = "CROSSFED_IDENTITY_PASSPHRASE"
PASSPHRASE_FILE_ENV = "CROSSFED_IDENTITY_PASSPHRASE_FILE"


def read_passphrase(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The identity passphrase from :data:`PASSPHRASE_FILE_ENV` (a file) or :data:`PASSPHRASE_ENV`; None if neither."""
    env = os.environ if environ is None else environ
    if env.get(PASSPHRASE_FILE_ENV):
        path = Path(env[PASSPHRASE_FILE_ENV]).expanduser()
        check_private_file(path, "passphrase file")
        try:
            line = path.read_text().splitlines()[:1]
        except OSError as exc:
            raise ConfigError(f"cannot read the identity passphrase file {path}: {exc.strerror}") from None
        if not line or not line[0]:
            raise ConfigError(f"{path}: the identity passphrase file is empty")
        return line[0].encode()
    value = env.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def check_private_file(path: Path, what: str = "identity key") -> None:
    """ConfigError when ``path`` may be read by group or others (POSIX modes; not checked on Windows)."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"cannot read the secure-aggregation {what} {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"{path}: {what} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`")


def private_pem(identity: Identity, passphrase: bytes | None = None) -> bytes:
    """The key file's bytes: PKCS#8 PEM, encrypted (``BestAvailableEncryption``) when ``passphrase`` is given."""
    encryption = (
        serialization.NoEncryption() if passphrase is None else serialization.BestAvailableEncryption(passphrase)
    )
    return Ed25519PrivateKey.from_private_bytes(identity.private_key).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_json(identity: Identity) -> str:
    """The ``.pub`` file's text: platform, raw public key (hex) and its fingerprint."""
    pub = {"format": PUBLIC_FORMAT, "platform": identity.platform, "ed25519": identity.public_key.hex(),
           "fingerprint": fingerprint(identity.public_key)}  # fmt: skip
    return json.dumps(pub, indent=2) + "\n"


def identity_paths(platform: str, folder: str | Path) -> tuple[Path, Path]:
    """(``<platform>.secagg.key``, ``<platform>.secagg.pub``) in ``folder``."""
    out = Path(folder).expanduser()
    return out / f"{_check_name(platform)}{KEY_SUFFIX}", out / f"{platform}{PUB_SUFFIX}"


def save_identity(identity: Identity, out_dir: str | Path, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """``<platform>.secagg.key`` (PKCS#8 PEM, mode 0600; encrypted with ``passphrase`` when given)
    and ``<platform>.secagg.pub`` (JSON)."""
    key_path, pub_path = identity_paths(identity.platform, out_dir)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    if key_path.exists():
        raise ConfigError(f"{key_path} exists; refusing to overwrite a platform identity")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem(identity, passphrase))
    pub_path.write_text(public_json(identity))
    return key_path, pub_path


def load_identity(path: str | Path, platform: str, passphrase: bytes | None = None) -> Identity:
    """The platform's identity from its PEM key file (0600; encrypted ones need ``passphrase``).

    ConfigError naming the file and the fix otherwise: a key readable by group or others, a
    missing or wrong passphrase, a file that is not an Ed25519 PEM key.
    """
    p = Path(path).expanduser()
    check_private_file(p)
    try:
        pem = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the secure-aggregation identity {p}: {exc.strerror}") from None
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem
    if encrypted and passphrase is None:
        raise ConfigError(
            f"{p}: the identity key is encrypted; set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV} (a 0600 file)"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise ConfigError(
                f"{p}: wrong passphrase for the identity key ({PASSPHRASE_ENV}/{PASSPHRASE_FILE_ENV})"
            ) from None
        raise ConfigError(f"{p}: not a PEM private key ({exc})") from None
    except TypeError as exc:
        raise ConfigError(f"{p}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{p}: expected an Ed25519 key, got {type(key).__name__}")
    return Identity(platform, key.private_bytes_raw())


def load_public(path: str | Path) -> tuple[str, bytes]:
    """(platform, raw public key) from a ``.secagg.pub`` file."""
    p = Path(path).expanduser()
    try:
        data = read_json(p)
    except InputFileError as exc:
        raise ConfigError(f"cannot read the public identity: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != PUBLIC_FORMAT:
        raise ConfigError(f"{p}: not a {PUBLIC_FORMAT} file")
    return _check_name(data.get("platform")), _public_from_entry(data, str(p))


def build_roster(public_files: Iterable[str | Path]) -> Roster:
    """One roster from the platforms' ``.secagg.pub`` files; ConfigError on a duplicate platform."""
    keys: dict[str, bytes] = {}
    for path in public_files:
        name, key = load_public(path)
        if name in keys:
            raise ConfigError(f"{path}: platform `{name}` is listed twice")
        keys[name] = key
    return Roster(keys)
