"""Key agreement, key derivation, share encryption and optional identity signatures.

* Key pairs: X25519, fresh per round; two per node -- ``c`` encrypts shares,
  ``s`` derives pairwise masks (only ``s_sk`` is ever reconstructed by the server).
* Every derived key is ``HKDF-SHA256(ikm, salt=roster hash, info=label)`` where the
  label names the protocol version, the purpose, the session, the round and the
  node ids (``_label``), so no key is reused across purposes, rounds or pairs.
* Shares travel in AES-256-GCM under a per-direction key; the associated data
  binds sender, receiver, round, session and the hash of the whole public-key
  roster. A ciphertext replayed to another node/round, a bit flip, or a roster in
  which the server swapped any public key fails authentication.
* Signed statements: every platform signs its round keys (``keys_statement``) and,
  before unmasking, the survivor set it saw (``consistency_statement``) with its
  long-term Ed25519 identity; peers verify against the operator's roster.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.secagg.errors import AbortError, ProtocolError

PROTOCOL = b"crossfed-secagg/2"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SIGNATURE_BYTES = 64

Purpose = bytes


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def _label(purpose: bytes, session: bytes, rnd: int, *ids: int) -> bytes:
    """Context label: protocol | purpose | len(session) session | round | ids."""
    return b"|".join([PROTOCOL, purpose, _u64(len(session)) + session, _u64(rnd), *map(_u64, ids)])


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# -- X25519 -------------------------------------------------------------------------
def generate_keypair() -> tuple[bytes, bytes]:
    """Fresh X25519 (private raw 32 bytes, public raw 32 bytes)."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def public_from_private(sk: bytes) -> bytes:
    """X25519 public key of a raw private key (used to verify a reconstructed s_sk)."""
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


def dh(sk: bytes, pk: bytes) -> bytes:
    """X25519 shared secret; AbortError on a low-order (all-zero output) public key."""
    try:
        shared = X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError as exc:  # all-zero shared secret or malformed key
        raise AbortError(f"invalid X25519 public key: {exc}") from None
    return shared


# -- roster -------------------------------------------------------------------------
def roster_hash(
    session: bytes,
    rnd: int,
    cohort_size: int,
    threshold: int,
    params_digest: bytes,
    node_ids: Sequence[int],
    platforms: Sequence[str],
    pk_c: Sequence[bytes],
    pk_s: Sequence[bytes],
) -> bytes:
    """SHA-256 over the round parameters and every (id, platform, pk_c, pk_s) of the roster."""
    h = hashlib.sha256(_label(b"roster", session, rnd, cohort_size, threshold))
    h.update(params_digest)
    for nid, name, c, s in zip(node_ids, platforms, pk_c, pk_s, strict=True):
        raw = name.encode()
        h.update(_u64(nid) + _u64(len(raw)) + raw + c + s)
    return h.digest()


def params_digest(params: Mapping[str, int | float], manifest_digest: bytes, context: bytes) -> bytes:
    """Hash of the protocol settings, adapter layout and round context (bound into the roster hash).

    ``context`` is the hash of the global adapter and training config every platform was
    given: two platforms shown different models derive different keys and the round aborts.
    """
    text = repr(sorted(params.items())).encode()
    return hashlib.sha256(_label(b"params", b"", 0) + text + manifest_digest + context).digest()


# -- share encryption ---------------------------------------------------------------
def _share_key_and_ad(
    my_sk_c: bytes, peer_pk_c: bytes, session: bytes, rnd: int, sender: int, receiver: int, roster: bytes
) -> tuple[bytes, bytes]:
    shared = dh(my_sk_c, peer_pk_c)
    key = hkdf(shared, roster, _label(b"share-enc", session, rnd, sender, receiver))
    ad = _label(b"share-ad", session, rnd, sender, receiver) + roster
    return key, ad


def encrypt_shares(
    sk_c: bytes,
    peer_pk_c: bytes,
    session: bytes,
    rnd: int,
    sender: int,
    receiver: int,
    roster: bytes,
    plaintext: bytes,
) -> bytes:
    """nonce || AES-256-GCM(plaintext) for ``sender`` -> ``receiver``."""
    key, ad = _share_key_and_ad(sk_c, peer_pk_c, session, rnd, sender, receiver, roster)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt_shares(
    sk_c: bytes,
    peer_pk_c: bytes,
    session: bytes,
    rnd: int,
    sender: int,
    receiver: int,
    roster: bytes,
    ciphertext: bytes,
) -> bytes:
    """Inverse of ``encrypt_shares``; AbortError if authentication fails."""
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise AbortError(f"share ciphertext from node {sender} is truncated")
    key, ad = _share_key_and_ad(sk_c, peer_pk_c, session, rnd, sender, receiver, roster)
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], ad)
    except InvalidTag:
        raise AbortError(
            f"share ciphertext from node {sender} failed authentication (tampered, replayed, "
            "or the public-key roster differs between nodes)"
        ) from None


# -- mask seeds ---------------------------------------------------------------------
def pairwise_seed(my_sk_s: bytes, peer_pk_s: bytes, session: bytes, rnd: int, a: int, b: int, roster: bytes) -> bytes:
    """Seed shared by nodes a and b (symmetric: same for (a, b) and (b, a))."""
    lo, hi = min(a, b), max(a, b)
    return hkdf(dh(my_sk_s, peer_pk_s), roster, _label(b"pairwise-mask", session, rnd, lo, hi))


def self_mask_seed(b_seed: bytes, session: bytes, rnd: int, node_id: int) -> bytes:
    """PRG key of a node's self mask, from its secret b seed."""
    return hkdf(b_seed, b"", _label(b"self-mask", session, rnd, node_id))


def commit_b(b_seed: bytes, session: bytes, rnd: int, node_id: int) -> bytes:
    """Hash commitment to b (b is 256 random bits, so the hash hides it)."""
    return hashlib.sha256(_label(b"b-commit", session, rnd, node_id) + b_seed).digest()


# -- signed statements (identities: ``identity.py``) ----------------------------------
def keys_statement(
    session: bytes, rnd: int, node_id: int, platform: str, pk_c: bytes, pk_s: bytes, context: bytes
) -> bytes:
    """What a platform signs in setup: its round keys, bound to its name, node id and round context."""
    name = platform.encode()
    return _label(b"keys", session, rnd, node_id) + _u64(len(name)) + name + pk_c + pk_s + context


def consistency_statement(
    session: bytes, rnd: int, roster: bytes, masked_with: Sequence[int], active: Sequence[int]
) -> bytes:
    """What a surviving platform signs before unmasking (Bonawitz et al., malicious setting).

    ``roster`` is the roster hash (round parameters, context, every public key);
    ``masked_with`` the node set it masked with (its view of U2), ``active`` the survivor set
    U3 it was shown. Honest platforms of one round sign byte-identical statements.
    """
    h = hashlib.sha256(_label(b"consistency", session, rnd, len(masked_with), len(active)) + roster)
    for nid in sorted(masked_with):
        h.update(_u64(nid))
    h.update(b"|")
    for nid in sorted(active):
        h.update(_u64(nid))
    return h.digest()


def check_key_bytes(value: bytes, what: str) -> None:
    """ProtocolError unless ``value`` is 32 bytes."""
    if len(value) != KEY_BYTES:
        raise ProtocolError(f"{what} must be {KEY_BYTES} bytes, got {len(value)}")
