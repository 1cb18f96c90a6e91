"""Typed protocol messages: one frozen dataclass per stage and direction, parsed from a plain dict.

Every message is a plain dict ``str -> int | float | str | bytes | list[int] |
list[bytes] | list[str] | np.ndarray`` (the only array is the uint masked vector), which
``codec.pack_record`` packs whole (``common.secure_wire`` sends it as one ConfigRecord field;
``split_arrays`` / ``join_arrays`` separate the array for an ``ArrayRecord``). Every message carries

    secagg   "crossfed-secagg/2"
    stage    "setup" | "share_keys" | "masked_input" | "consistency" | "unmask"
    session  bytes (16..64): the run's session id
    round    int: the federated round
    node_id  int: recipient (requests) or sender (replies), unsigned 64-bit

Parsers (``<Message>.parse(msg)``) check keys (no missing, no unknown), types,
ranges and lengths and raise only ``ProtocolError``. Semantic checks (is this
my roster? is the stage expected now?) live in the client and server; the byte encoding of a
record is ``common.secagg.codec``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

from common.secagg.crypto import KEY_BYTES, NONCE_BYTES, PROTOCOL, SIGNATURE_BYTES, TAG_BYTES
from common.secagg.errors import ProtocolError
from common.secagg.fields import MAX_LIST, NODE, NODES, SHARE, Array, Bytes, Float, Int, Kind, List, Str
from common.secagg.shamir import SHARE_BYTES

VERSION = PROTOCOL.decode()

STAGE_SETUP = "setup"
STAGE_SHARE_KEYS = "share_keys"
STAGE_MASKED_INPUT = "masked_input"
STAGE_CONSISTENCY = "consistency"
STAGE_UNMASK = "unmask"
STAGES = (STAGE_SETUP, STAGE_SHARE_KEYS, STAGE_MASKED_INPUT, STAGE_CONSISTENCY, STAGE_UNMASK)
CONTEXT_BYTES = 32  # SHA-256 of the global adapter and training config of the round

SESSION_MIN, SESSION_MAX = 16, 64

# Plaintext of one encrypted share bundle: sender | receiver | b share | s_sk share.
SHARE_PLAINTEXT_BYTES = 8 + 8 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES


KEY = Bytes(KEY_BYTES)
SIGNATURE = Bytes(SIGNATURE_BYTES)

_HEADER: dict[str, Kind] = {
    "secagg": Str(),
    "stage": Str(),
    "session": Bytes(lo=SESSION_MIN, hi=SESSION_MAX),
    "round": Int(),
    "node_id": NODE,
}

M = TypeVar("M", bound="ProtocolMessage")


@dataclass(frozen=True)
class ProtocolMessage:
    """Common header of every message; subclasses add their fields and SCHEMA."""

    session: bytes
    round: int
    node_id: int

    STAGE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Kind]] = {}

    def __post_init__(self) -> None:
        """List fields become tuples: a parsed message is immutable."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    def to_message(self) -> dict[str, Any]:
        """The plain dict that travels."""
        out: dict[str, Any] = {"secagg": VERSION, "stage": self.STAGE}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def parse(cls: type[M], msg: Any) -> M:
        """Validate ``msg`` and build the typed message; ProtocolError otherwise."""
        if not isinstance(msg, Mapping):
            raise ProtocolError(f"{cls.STAGE} message must be a mapping, got {type(msg).__name__}")
        schema = {**_HEADER, **cls.SCHEMA}
        keys = list(msg.keys())
        if any(not isinstance(k, str) for k in keys):
            raise ProtocolError("message keys must be str")
        missing = [k for k in schema if k not in msg]
        unknown = [k for k in keys if k not in schema]
        if missing or unknown:
            raise ProtocolError(f"{cls.STAGE} message: missing {missing}, unknown {unknown}")
        values = {k: kind.check(k, msg[k]) for k, kind in schema.items()}
        if values.pop("secagg") != VERSION:
            raise ProtocolError(f"unsupported protocol version, expected {VERSION!r}")
        stage = values.pop("stage")
        if stage != cls.STAGE:
            raise ProtocolError(f"expected a {cls.STAGE!r} message, got stage {stage!r}")
        obj = cls(**values)
        obj._check()
        return obj

    def _check(self) -> None:
        """Cross-field structural checks of a subclass."""


def _same_length(key_a: str, a: list[Any], key_b: str, b: list[Any]) -> None:
    if len(a) != len(b):
        raise ProtocolError(f"`{key_a}` and `{key_b}` differ in length ({len(a)} vs {len(b)})")


# -- stage 0: setup -----------------------------------------------------------------
@dataclass(frozen=True)
class SetupRequest(ProtocolMessage):
    """Server -> node: start a round. Carries the config so the node can compare."""

    cohort_size: int
    context: bytes
    vector_length: int
    manifest_digest: bytes
    clip_range: float
    l2_clip: float
    quant_bits: int
    modulus_bits: int
    max_weight: int
    max_cohort: int
    min_cohort: int
    threshold_fraction: float

    STAGE: ClassVar[str] = STAGE_SETUP
    SCHEMA: ClassVar[dict[str, Kind]] = {
        "cohort_size": Int(1, MAX_LIST),
        "context": Bytes(CONTEXT_BYTES),
        "vector_length": Int(1),
        "manifest_digest": Bytes(32),
        "clip_range": Float(),
        "l2_clip": Float(),
        "quant_bits": Int(),
        "modulus_bits": Int(),
        "max_weight": Int(),
        "max_cohort": Int(),
        "min_cohort": Int(),
        "threshold_fraction": Float(),
    }

    def params(self) -> dict[str, int | float]:
        """The ``SecAggConfig`` fields carried by the request."""
        names = (
            "clip_range",
            "l2_clip",
            "quant_bits",
            "modulus_bits",
            "max_weight",
            "max_cohort",
            "min_cohort",
            "threshold_fraction",
        )
        return {n: getattr(self, n) for n in names}


@dataclass(frozen=True)
class SetupReply(ProtocolMessage):
    """Node -> server: the node's two fresh public keys, signed with its platform identity."""

    platform: str
    pk_c: bytes
    pk_s: bytes
    signature: bytes

    STAGE: ClassVar[str] = STAGE_SETUP
    SCHEMA: ClassVar[dict[str, Kind]] = {
        "platform": Str(),
        "pk_c": KEY,
        "pk_s": KEY,
        "signature": SIGNATURE,
    }


# -- stage 1: share keys ------------------------------------------------------------
@dataclass(frozen=True)
class ShareKeysRequest(ProtocolMessage):
    """Server -> every node that answered setup: the signed key roster (same for all) and t.

    The threshold is fixed here, from the nodes that answered setup, so a platform lost
    before it sent keys costs no dropout tolerance; each node checks it against its policy.
    """

    threshold: int
    node_ids: Sequence[int]
    platforms: Sequence[str]
    pk_c: Sequence[bytes]
    pk_s: Sequence[bytes]
    signatures: Sequence[bytes]

    STAGE: ClassVar[str] = STAGE_SHARE_KEYS
    SCHEMA: ClassVar[dict[str, Kind]] = {
        "threshold": Int(1, MAX_LIST),
        "node_ids": NODES,
        "platforms": List(Str()),
        "pk_c": List(KEY),
        "pk_s": List(KEY),
        "signatures": List(SIGNATURE),
    }

    def _check(self) -> None:
        ids = list(self.node_ids)
        if self.threshold > len(ids):
            raise ProtocolError("`threshold` exceeds the roster size")
        _same_length("node_ids", ids, "platforms", list(self.platforms))
        _same_length("node_ids", ids, "pk_c", list(self.pk_c))
        _same_length("node_ids", ids, "pk_s", list(self.pk_s))
        _same_length("node_ids", ids, "signatures", list(self.signatures))
        if ids != sorted(ids):
            raise ProtocolError("`node_ids` must be sorted ascending")


@dataclass(frozen=True)
class ShareKeysReply(ProtocolMessage):
    """Node -> server: one encrypted share bundle per other roster node, plus a commitment to b."""

    receivers: Sequence[int]
    ciphertexts: Sequence[bytes]
    b_commit: bytes

    STAGE: ClassVar[str] = STAGE_SHARE_KEYS
    SCHEMA: ClassVar[dict[str, Kind]] = {
        "receivers": NODES,
        "ciphertexts": List(Bytes(SHARE_CIPHERTEXT_BYTES)),
        "b_commit": Bytes(32),
    }

    def _check(self) -> None:
        _same_length("receivers", list(self.receivers), "ciphertexts", list(self.ciphertexts))


# -- stage 2: masked input ----------------------------------------------------------
@dataclass(frozen=True)
class MaskedInputRequest(ProtocolMessage):
    """Server -> node: the share bundles other nodes encrypted for this node."""

    senders: Sequence[int]
    ciphertexts: Sequence[bytes]

    STAGE: ClassVar[str] = STAGE_MASKED_INPUT
    SCHEMA: ClassVar[dict[str, Kind]] = {
        "senders": NODES,
        "ciphertexts": List(Bytes(SHARE_CIPHERTEXT_BYTES)),
    }

    def _check(self) -> None:
        _same_length("senders", list(self.senders), "ciphertexts", list(self.ciphertexts))


@dataclass(frozen=True, eq=False)
class MaskedInputReply(ProtocolMessage):
    """Node -> server: ``[n, stats, n*q(x)] + masks`` as uint words mod 2^bits."""

    masked: np.ndarray

    STAGE: ClassVar[str] = STAGE_MASKED_INPUT
    SCHEMA: ClassVar[dict[str, Kind]] = {"masked": Array()}


# -- stage 3: consistency check ----------------------------------------------------
@dataclass(frozen=True)
class ConsistencyRequest(ProtocolMessage):
    """Server -> node that sent a masked input: who did (active) and who did not (dropped)."""

    active: Sequence[int]
    dropped: Sequence[int]

    STAGE: ClassVar[str] = STAGE_CONSISTENCY
    SCHEMA: ClassVar[dict[str, Kind]] = {"active": NODES, "dropped": NODES}


@dataclass(frozen=True)
class ConsistencyReply(ProtocolMessage):
    """Node -> server: its identity's signature of (roster, set it masked with, active set)."""

    signature: bytes

    STAGE: ClassVar[str] = STAGE_CONSISTENCY
    SCHEMA: ClassVar[dict[str, Kind]] = {"signature": SIGNATURE}


# -- stage 4: unmask ----------------------------------------------------------------
@dataclass(frozen=True)
class UnmaskRequest(ProtocolMessage):
    """Server -> node that signed: the same sets again, and every signature collected on them."""

    active: Sequence[int]
    dropped: Sequence[int]
    signers: Sequence[int]
    signatures: Sequence[bytes]

    STAGE: ClassVar[str] = STAGE_UNMASK
    SCHEMA: ClassVar[dict[str, Kind]] = {
        "active": NODES,
        "dropped": NODES,
        "signers": NODES,
        "signatures": List(SIGNATURE),
    }

    def _check(self) -> None:
        _same_length("signers", list(self.signers), "signatures", list(self.signatures))


@dataclass(frozen=True)
class UnmaskReply(ProtocolMessage):
    """Node -> server: shares of b for active nodes, shares of s_sk for dropped ones (each < p)."""

    b_owners: Sequence[int]
    b_shares: Sequence[bytes]
    sk_owners: Sequence[int]
    sk_shares: Sequence[bytes]

    STAGE: ClassVar[str] = STAGE_UNMASK
    SCHEMA: ClassVar[dict[str, Kind]] = {
        "b_owners": NODES,
        "b_shares": List(SHARE),
        "sk_owners": NODES,
        "sk_shares": List(SHARE),
    }

    def _check(self) -> None:
        _same_length("b_owners", list(self.b_owners), "b_shares", list(self.b_shares))
        _same_length("sk_owners", list(self.sk_owners), "sk_shares", list(self.sk_shares))


REQUESTS: dict[str, type[ProtocolMessage]] = {
    STAGE_SETUP: SetupRequest,
    STAGE_SHARE_KEYS: ShareKeysRequest,
    STAGE_MASKED_INPUT: MaskedInputRequest,
    STAGE_CONSISTENCY: ConsistencyRequest,
    STAGE_UNMASK: UnmaskRequest,
}
REPLIES: dict[str, type[ProtocolMessage]] = {
    STAGE_SETUP: SetupReply,
    STAGE_SHARE_KEYS: ShareKeysReply,
    STAGE_MASKED_INPUT: MaskedInputReply,
    STAGE_CONSISTENCY: ConsistencyReply,
    STAGE_UNMASK: UnmaskReply,
}


def stage_of(msg: Any) -> str:
    """The ``stage`` field of a message; ProtocolError if absent or unknown."""
    if not isinstance(msg, Mapping):
        raise ProtocolError(f"message must be a mapping, got {type(msg).__name__}")
    stage = msg.get("stage")
    if not isinstance(stage, str) or stage not in STAGES:
        raise ProtocolError(f"unknown or missing stage {stage!r}")
    return str(stage)


# -- Flower helpers -----------------------------------------------------------------
def split_arrays(msg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(scalars and lists for a ConfigRecord, ndarrays for an ArrayRecord)."""
    scalars = {k: v for k, v in msg.items() if not isinstance(v, np.ndarray)}
    arrays = {k: v for k, v in msg.items() if isinstance(v, np.ndarray)}
    return scalars, arrays


def join_arrays(scalars: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of ``split_arrays``; ProtocolError on a key present in both."""
    both = set(scalars) & set(arrays)
    if both:
        raise ProtocolError(f"keys in both the config and array parts: {sorted(both)}")
    return {**dict(scalars), **dict(arrays)}
