"""Platform side of the protocol: a state machine with one method per stage.

    setup(request)                         -> reply {platform, pk_c, pk_s, signature}
    share_keys(request)                    -> reply {receivers, ciphertexts, b_commit}
    masked_input(request, tensors, weight) -> reply {masked: uint array}
    consistency(request)                   -> reply {signature}
    unmask(request)                        -> reply {b_owners, b_shares, sk_owners, sk_shares}

Each method parses the request, checks it is the expected next stage for the
current (session, round) and addressed to this node, and verifies everything
it can *before* revealing anything. Any failure wipes the round's secrets,
moves the client to ``aborted`` and raises a ``SecAggError`` (fail closed): a
client never answers the same stage twice, never answers an out-of-order stage
and never reveals both shares of one node.

Against a malicious server (Bonawitz et al., CCS 2017, malicious setting): every
roster entry must carry a signature by a platform of this platform's own roster
(``identity.Roster``, from the operator, not the server) on its round keys, its node id
and the round context (hash of the global adapter and training config); each platform
name appears once; the threshold must exceed 2n/3 of the roster and meet the local
``PlatformPolicy``; and shares are revealed only after t roster platforms signed the
identical (roster, set masked with, survivor set) statement this client signed.

Between stages all state lives in ``ClientState`` (``to_bytes``/``from_bytes``),
so a Flower ClientApp can keep it in ``context.state`` and be restarted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

import common.secagg.crypto as crypto
import common.secagg.shamir as shamir
from common.secagg.codec import pack_record, unpack_record
from common.secagg.config import PlatformPolicy, SecAggConfig
from common.secagg.errors import AbortError, ConfigError, InputError, ProtocolError
from common.secagg.fields import NODE, Bytes, Float, Int, Kind, List, Str
from common.secagg.identity import Identity, Roster
from common.secagg.messages import (
    CONTEXT_BYTES,
    STAGE_CONSISTENCY,
    STAGE_MASKED_INPUT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    stage_of,
)
from common.secagg.prg import apply_masks
from common.secagg.quantize import InputReport, Manifest, check_weight, encode_input

log = logging.getLogger(__name__)

IDLE, DONE, ABORTED = "idle", "done", "aborted"
# stage just completed -> stage accepted next
_NEXT = {
    STAGE_SETUP: STAGE_SHARE_KEYS,
    STAGE_SHARE_KEYS: STAGE_MASKED_INPUT,
    STAGE_MASKED_INPUT: STAGE_CONSISTENCY,
    STAGE_CONSISTENCY: STAGE_UNMASK,
}
# Settings the platform's policy may tighten; every other one must equal the platform's own.
_POLICY_PARAMS = ("min_cohort", "threshold_fraction")
NO_CONTEXT = bytes(CONTEXT_BYTES)


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


@dataclass
class ClientState:
    """Everything a client keeps between stages (secret: stays on the platform)."""

    node_id: int
    stage: str = IDLE
    session: bytes = b""
    round: int = -1
    cohort_size: int = 0
    threshold: int = 0
    min_cohort: int = 0  # the round's effective policy (server request tightened by the platform's)
    threshold_fraction: float = 1.0
    params_digest: bytes = b""
    sk_c: bytes = b""
    pk_c: bytes = b""
    sk_s: bytes = b""
    pk_s: bytes = b""
    b_seed: bytes = b""
    roster_ids: list[int] = field(default_factory=list)
    roster_platforms: list[str] = field(default_factory=list)
    roster_pk_c: list[bytes] = field(default_factory=list)
    roster_pk_s: list[bytes] = field(default_factory=list)
    roster_hash: bytes = b""
    # Nodes whose shares this client holds (its view of U2, plus itself), sorted,
    # with the held b / s_sk shares aligned to it.
    holders: list[int] = field(default_factory=list)
    held_b: list[bytes] = field(default_factory=list)
    held_sk: list[bytes] = field(default_factory=list)
    signed_active: list[int] = field(default_factory=list)  # the survivor set this client signed

    _SCHEMA: ClassVar[dict[str, Kind]] = {
        "node_id": NODE,
        "stage": Str(),
        "session": Bytes(lo=0, hi=64),
        "round": Int(-1),
        "cohort_size": Int(),
        "threshold": Int(),
        "min_cohort": Int(),
        "threshold_fraction": Float(),
        "params_digest": Bytes(0, 32),
        "sk_c": Bytes(0, 32),
        "pk_c": Bytes(0, 32),
        "sk_s": Bytes(0, 32),
        "pk_s": Bytes(0, 32),
        "b_seed": Bytes(0, 32),
        "roster_ids": List(NODE, unique=True),
        "roster_platforms": List(Str()),
        "roster_pk_c": List(Bytes(32)),
        "roster_pk_s": List(Bytes(32)),
        "roster_hash": Bytes(0, 32),
        "holders": List(NODE, unique=True),
        "held_b": List(Bytes(shamir.SHARE_BYTES)),
        "held_sk": List(Bytes(shamir.SHARE_BYTES)),
        "signed_active": List(NODE, unique=True),
    }

    def to_record(self) -> dict[str, Any]:
        """Plain dict (int, str, bytes, list[int], list[bytes]) for a Flower ConfigRecord."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClientState:
        """Inverse of ``to_record``; ProtocolError on anything malformed."""
        schema = cls._SCHEMA
        if not isinstance(record, Mapping) or set(record.keys()) != set(schema):
            raise ProtocolError("client state record has the wrong keys")
        values = {k: kind.check(f"state.{k}", record[k]) for k, kind in schema.items()}
        if values["stage"] not in (IDLE, DONE, ABORTED, *_NEXT):
            raise ProtocolError(f"client state has unknown stage {values['stage']!r}")
        roster = ("roster_ids", "roster_platforms", "roster_pk_c", "roster_pk_s")
        if len({len(values[k]) for k in roster}) != 1:
            raise ProtocolError("client state roster lists differ in length")
        if not len(values["holders"]) == len(values["held_b"]) == len(values["held_sk"]):
            raise ProtocolError("client state share lists differ in length")
        return cls(**values)

    def to_bytes(self) -> bytes:
        return pack_record(self.to_record())

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientState:
        return cls.from_record(unpack_record(data))

    def wipe(self) -> None:
        """Forget every secret of the round (keeps session/round for replay checks)."""
        self.sk_c = self.sk_s = self.b_seed = b""
        self.held_b, self.held_sk, self.holders = [], [], []


class SecAggClient:
    """One platform's protocol endpoint.

    ``config`` and ``manifest`` are what the platform expects (a setup request whose
    values differ is refused); ``policy`` is the platform's own minimum cohort, threshold
    and round limit (the server may only be stricter). ``identity`` signs this node's
    round keys and its survivor-set view; ``roster`` (from the operator) holds the public
    key of every platform this one will share secrets with. ``context`` is the hash of the
    global adapter and training config this platform was given for the round
    (``NO_CONTEXT`` where the caller binds none).
    """

    def __init__(
        self,
        node_id: int,
        config: SecAggConfig,
        manifest: Manifest,
        *,
        identity: Identity,
        roster: Roster,
        policy: PlatformPolicy | None = None,
        context: bytes = NO_CONTEXT,
        state: ClientState | None = None,
    ) -> None:
        NODE.check("node_id", node_id)
        config.check_vector_length(manifest.size)
        if not isinstance(identity, Identity) or not isinstance(roster, Roster):
            raise ConfigError("a secure-aggregation client needs its `identity` and the operator's `roster`")
        roster.check_own(identity)
        if not isinstance(context, bytes) or len(context) != CONTEXT_BYTES:
            raise ConfigError(f"`context` must be {CONTEXT_BYTES} bytes")
        self.config = config
        self.manifest = manifest
        self.identity, self.roster = identity, roster
        self.policy = policy if policy is not None else PlatformPolicy()
        self.context = context
        if state is not None and state.node_id != node_id:
            raise ProtocolError(f"state belongs to node {state.node_id}, not {node_id}")
        self.state = state if state is not None else ClientState(node_id=node_id)
        self.input_report: InputReport | None = None

    @property
    def node_id(self) -> int:
        return self.state.node_id

    @property
    def stage(self) -> str:
        return self.state.stage

    # -- dispatch -----------------------------------------------------------------
    def handle(self, msg: Any, tensors: Mapping[str, np.ndarray] | None = None, weight: Any = None) -> dict[str, Any]:
        """Answer any request by its ``stage`` field (tensors/weight only for masked_input)."""
        stage = stage_of(msg)
        if stage == STAGE_SETUP:
            return self.setup(msg)
        if stage == STAGE_SHARE_KEYS:
            return self.share_keys(msg)
        if stage == STAGE_MASKED_INPUT:
            if tensors is None or weight is None:
                raise InputError("masked_input needs the local tensors and weight")
            return self.masked_input(msg, tensors, weight)
        if stage == STAGE_CONSISTENCY:
            return self.consistency(msg)
        return self.unmask(msg)

    def _abort(self) -> None:
        self.state.wipe()
        self.state.stage = ABORTED

    def _guard(self, stage: str, msg: Any, parser: Any) -> Any:
        """Parse ``msg`` and check stage order, session, round and addressee."""
        st = self.state
        expected = _NEXT.get(st.stage)
        if expected != stage:
            raise ProtocolError(
                f"node {st.node_id}: unexpected {stage!r} message in state {st.stage!r}"
                + (f" (expected {expected!r})" if expected else "")
            )
        req = parser.parse(msg)
        if req.session != st.session or req.round != st.round:
            raise ProtocolError(f"node {st.node_id}: {stage!r} message is for another session/round")
        if req.node_id != st.node_id:
            raise ProtocolError(f"node {st.node_id}: {stage!r} message is addressed to node {req.node_id}")
        return req

    def _run(self, fn: Any, *args: Any) -> dict[str, Any]:
        try:
            out: dict[str, Any] = fn(*args)
        except Exception:
            # Fail closed on anything, including an unexpected bug.
            self._abort()
            raise
        return out

    # -- stage 0 ------------------------------------------------------------------
    def setup(self, msg: Any) -> dict[str, Any]:
        """Check the round parameters against local policy; make fresh key pairs and sign them."""
        return self._run(self._setup, msg)

    def _setup(self, msg: Any) -> dict[str, Any]:
        req = SetupRequest.parse(msg)
        st, cfg = self.state, self.config
        if req.node_id != st.node_id:
            raise ProtocolError(f"node {st.node_id}: setup is addressed to node {req.node_id}")
        if req.session == st.session and req.round <= st.round:
            raise ProtocolError(
                f"node {st.node_id}: round {req.round} of this session was already started "
                f"(last round {st.round}); a round is never re-keyed"
            )
        requested = req.params()
        for name, value in requested.items():
            mine = getattr(cfg, name)
            if name not in _POLICY_PARAMS and value != mine:
                raise ConfigError(f"`{name}` differs: server sent {value!r}, this platform uses {mine!r}")
        if req.manifest_digest != self.manifest.digest() or req.vector_length != self.manifest.size:
            raise ConfigError(
                f"adapter manifest differs from the server's (server: {req.vector_length} values)"
                f"; this platform has {self.manifest.size} values"
            )
        if req.context != self.context:
            raise AbortError(
                f"node {st.node_id}: the round's context (global adapter + training config) differs "
                "from what this platform was given"
            )
        effective = self.policy.apply(SecAggConfig.from_params(requested))
        effective.check_cohort(req.cohort_size)
        if st.stage not in (IDLE, DONE, ABORTED):
            log.warning("node %d: abandoning round %d for round %d", st.node_id, st.round, req.round)
        sk_c, pk_c = crypto.generate_keypair()
        sk_s, pk_s = crypto.generate_keypair()
        self.state = ClientState(
            node_id=st.node_id,
            stage=STAGE_SETUP,
            session=req.session,
            round=req.round,
            cohort_size=req.cohort_size,
            min_cohort=effective.min_cohort,
            threshold_fraction=effective.threshold_fraction,
            params_digest=crypto.params_digest(requested, self.manifest.digest(), req.context),
            sk_c=sk_c,
            pk_c=pk_c,
            sk_s=sk_s,
            pk_s=pk_s,
        )
        me = self.identity.platform
        sig = self.identity.sign(crypto.keys_statement(req.session, req.round, st.node_id, me, pk_c, pk_s, req.context))
        return SetupReply(req.session, req.round, st.node_id, me, pk_c, pk_s, sig).to_message()

    # -- stage 1 ------------------------------------------------------------------
    def share_keys(self, msg: Any) -> dict[str, Any]:
        """Verify the signed roster and threshold; Shamir-share b and s_sk; encrypt a bundle per peer."""
        return self._run(self._share_keys, msg)

    def _share_keys(self, msg: Any) -> dict[str, Any]:
        req: ShareKeysRequest = self._guard(STAGE_SHARE_KEYS, msg, ShareKeysRequest)
        st = self.state
        ids = list(req.node_ids)
        if st.node_id not in ids:
            raise AbortError(f"node {st.node_id}: the roster does not list this node")
        me = ids.index(st.node_id)
        if req.pk_c[me] != st.pk_c or req.pk_s[me] != st.pk_s or req.platforms[me] != self.identity.platform:
            raise AbortError(f"node {st.node_id}: the roster carries wrong keys or name for this node")
        if len(ids) > st.cohort_size:
            raise AbortError(f"roster of {len(ids)} nodes exceeds the cohort size {st.cohort_size}")
        if len(ids) < st.min_cohort:
            raise AbortError(f"roster of {len(ids)} platforms is below this platform's minimum cohort {st.min_cohort}")
        if len(set(req.platforms)) != len(ids):
            raise AbortError("the roster lists one platform under two node ids (Sybil)")
        all_keys = list(req.pk_c) + list(req.pk_s)
        if len(set(all_keys)) != len(all_keys):
            raise AbortError("the roster repeats a public key")
        policy = SecAggConfig(threshold_fraction=st.threshold_fraction, min_cohort=2).threshold(len(ids))
        if not policy <= req.threshold <= len(ids):
            raise AbortError(
                f"threshold {req.threshold} for a roster of {len(ids)} is below this platform's policy {policy} "
                "(t must exceed 2n/3)"
            )
        for nid, name, c, s, sig in zip(ids, req.platforms, req.pk_c, req.pk_s, req.signatures, strict=True):
            self.roster.verify(name, sig, crypto.keys_statement(st.session, st.round, nid, name, c, s, self.context))
        roster = crypto.roster_hash(
            st.session,
            st.round,
            st.cohort_size,
            req.threshold,
            st.params_digest,
            ids,
            req.platforms,
            req.pk_c,
            req.pk_s,
        )
        st.threshold = req.threshold
        b_seed = os.urandom(32)
        points = [shamir.eval_point(nid) for nid in ids]
        b_shares = shamir.split(b_seed, st.threshold, points)
        sk_shares = shamir.split(st.sk_s, st.threshold, points)
        receivers, ciphertexts = [], []
        for i, nid in enumerate(ids):
            if nid == st.node_id:
                continue
            plaintext = (
                _u64(st.node_id) + _u64(nid) + shamir.share_to_bytes(b_shares[i]) + shamir.share_to_bytes(sk_shares[i])
            )
            ciphertexts.append(
                crypto.encrypt_shares(st.sk_c, req.pk_c[i], st.session, st.round, st.node_id, nid, roster, plaintext)
            )
            receivers.append(nid)
        st.roster_ids, st.roster_platforms = ids, list(req.platforms)
        st.roster_pk_c, st.roster_pk_s = list(req.pk_c), list(req.pk_s)
        st.roster_hash, st.b_seed = roster, b_seed
        st.holders = [st.node_id]
        st.held_b = [shamir.share_to_bytes(b_shares[me])]
        st.held_sk = [shamir.share_to_bytes(sk_shares[me])]
        st.stage = STAGE_SHARE_KEYS
        commit = crypto.commit_b(b_seed, st.session, st.round, st.node_id)
        return ShareKeysReply(st.session, st.round, st.node_id, receivers, ciphertexts, commit).to_message()

    # -- stage 2 ------------------------------------------------------------------
    def masked_input(self, msg: Any, tensors: Mapping[str, np.ndarray], weight: Any) -> dict[str, Any]:
        """Decrypt and check received shares, validate and encode the input, mask it.

        The ``InputReport`` (weight cap, L2 clip, clipped-value count) is stored in
        ``self.input_report`` and logged at WARNING when anything was clipped; the
        cohort totals of these counts are also aggregated securely.
        """
        return self._run(self._masked_input, msg, tensors, weight)

    def _masked_input(self, msg: Any, tensors: Mapping[str, np.ndarray], weight: Any) -> dict[str, Any]:
        req: MaskedInputRequest = self._guard(STAGE_MASKED_INPUT, msg, MaskedInputRequest)
        st = self.state
        roster = dict(zip(st.roster_ids, range(len(st.roster_ids)), strict=True))
        senders = list(req.senders)
        for nid in senders:
            if nid == st.node_id or nid not in roster:
                raise AbortError(f"node {st.node_id}: share bundle from unexpected node {nid}")
        if len(senders) + 1 < st.threshold:
            raise AbortError(f"only {len(senders) + 1} nodes hold shares (threshold {st.threshold}); refusing to mask")
        received: dict[int, tuple[bytes, bytes]] = {}
        for nid, ct in zip(senders, req.ciphertexts, strict=True):
            pt = crypto.decrypt_shares(
                st.sk_c,
                st.roster_pk_c[roster[nid]],
                st.session,
                st.round,
                nid,
                st.node_id,
                st.roster_hash,
                ct,
            )
            if len(pt) != 16 + 2 * shamir.SHARE_BYTES:
                raise AbortError(f"share bundle from node {nid} has the wrong length")
            src, dst = int.from_bytes(pt[:8], "big"), int.from_bytes(pt[8:16], "big")
            if src != nid or dst != st.node_id:
                raise AbortError(f"share bundle from node {nid} names {src} -> {dst}")
            b_share, sk_share = pt[16 : 16 + shamir.SHARE_BYTES], pt[16 + shamir.SHARE_BYTES :]
            shamir.share_from_bytes(b_share)
            shamir.share_from_bytes(sk_share)
            received[nid] = (b_share, sk_share)

        # Validate and encode before any mask is derived; InputError aborts the round.
        if check_weight(weight) < 1:
            raise InputError("weight must be >= 1: a platform without training examples does not contribute")
        words, report = encode_input(tensors, weight, self.manifest, self.config)
        self.input_report = report

        masks = [(crypto.self_mask_seed(st.b_seed, st.session, st.round, st.node_id), 1)]
        for nid in senders:
            seed = crypto.pairwise_seed(
                st.sk_s, st.roster_pk_s[roster[nid]], st.session, st.round, st.node_id, nid, st.roster_hash
            )
            masks.append((seed, 1 if st.node_id < nid else -1))
        apply_masks(words, masks)

        holders = sorted([st.node_id, *senders])
        own_b, own_sk = st.held_b[0], st.held_sk[0]
        st.held_b = [own_b if n == st.node_id else received[n][0] for n in holders]
        st.held_sk = [own_sk if n == st.node_id else received[n][1] for n in holders]
        st.holders = holders
        # Nothing below needs the raw secrets any more: only the shares remain.
        st.sk_c = st.sk_s = st.b_seed = b""
        st.stage = STAGE_MASKED_INPUT
        return MaskedInputReply(st.session, st.round, st.node_id, words).to_message()

    # -- stage 3 ------------------------------------------------------------------
    def consistency(self, msg: Any) -> dict[str, Any]:
        """Check the survivor lists and sign (roster, set masked with, survivors); reveals nothing."""
        return self._run(self._consistency, msg)

    def _check_sets(self, active: set[int], dropped: set[int]) -> None:
        st = self.state
        if active & dropped:
            raise AbortError(
                f"node {st.node_id}: request lists {sorted(active & dropped)} as both "
                "active and dropped (would reveal both shares)"
            )
        if st.node_id in dropped:
            raise AbortError(f"node {st.node_id}: request lists this node as dropped")
        if st.node_id not in active:
            raise AbortError(f"node {st.node_id}: request does not list this node as active")
        holders = set(st.holders)
        unknown = (active | dropped) - holders
        if unknown:
            raise AbortError(f"node {st.node_id}: request names unknown nodes {sorted(unknown)}")
        missing = holders - active - dropped
        if missing:
            raise AbortError(f"node {st.node_id}: request omits nodes {sorted(missing)}")
        if len(active) < st.threshold:
            raise AbortError(f"node {st.node_id}: only {len(active)} survivors, below the threshold {st.threshold}")

    def _statement(self, active: list[int]) -> bytes:
        st = self.state
        return crypto.consistency_statement(st.session, st.round, st.roster_hash, st.holders, active)

    def _consistency(self, msg: Any) -> dict[str, Any]:
        req: ConsistencyRequest = self._guard(STAGE_CONSISTENCY, msg, ConsistencyRequest)
        st = self.state
        self._check_sets(set(req.active), set(req.dropped))
        st.signed_active = sorted(req.active)
        st.stage = STAGE_CONSISTENCY
        signature = self.identity.sign(self._statement(st.signed_active))
        return ConsistencyReply(st.session, st.round, st.node_id, signature).to_message()

    # -- stage 4 ------------------------------------------------------------------
    def unmask(self, msg: Any) -> dict[str, Any]:
        """After t valid signatures on the set this node signed: reveal b (active) or s_sk (dropped) shares."""
        return self._run(self._unmask, msg)

    def _unmask(self, msg: Any) -> dict[str, Any]:
        req: UnmaskRequest = self._guard(STAGE_UNMASK, msg, UnmaskRequest)
        st = self.state
        active, dropped = set(req.active), set(req.dropped)
        self._check_sets(active, dropped)
        if sorted(active) != st.signed_active:
            raise AbortError(f"node {st.node_id}: unmask request's survivor set differs from the one it signed")
        signers = set(req.signers)
        if not signers <= active:
            raise AbortError(f"node {st.node_id}: consistency signatures from non-survivors {sorted(signers - active)}")
        if len(signers) < st.threshold:
            raise AbortError(
                f"node {st.node_id}: {len(signers)} consistency signatures, below the threshold {st.threshold}"
            )
        statement = self._statement(st.signed_active)
        platform_of = dict(zip(st.roster_ids, st.roster_platforms, strict=True))
        for nid, sig in zip(req.signers, req.signatures, strict=True):
            self.roster.verify(platform_of[nid], sig, statement)
        index = {n: i for i, n in enumerate(st.holders)}
        b_owners = sorted(active)
        sk_owners = sorted(dropped)
        reply = UnmaskReply(
            st.session,
            st.round,
            st.node_id,
            b_owners,
            [st.held_b[index[n]] for n in b_owners],
            sk_owners,
            [st.held_sk[index[n]] for n in sk_owners],
        ).to_message()
        st.wipe()
        st.stage = DONE
        return reply

    # -- persistence --------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """Serialised state for ``context.state`` (contains secrets; never send it)."""
        return self.state.to_bytes()

    @classmethod
    def from_state_bytes(
        cls,
        data: bytes,
        config: SecAggConfig,
        manifest: Manifest,
        *,
        identity: Identity,
        roster: Roster,
        policy: PlatformPolicy | None = None,
        context: bytes = NO_CONTEXT,
    ) -> SecAggClient:
        """Rebuild a client from ``state_bytes`` output (e.g. after a process restart)."""
        state = ClientState.from_bytes(data)
        return cls(
            state.node_id,
            config,
            manifest,
            identity=identity,
            roster=roster,
            policy=policy,
            context=context,
            state=state,
        )
