"""Server side of the protocol: a state machine driven one stage at a time.

    server = SecAggServer(config, manifest, node_ids, session=..., round=r)
    while not server.finished:
        requests = server.requests()            # {node_id: message} for this stage
        ... send, wait until the transport's timeout ...
        for node_id, reply in arrived.items():
            try:
                server.receive(node_id, reply)  # ProtocolError: that node counts as dropped
            except ProtocolError: ...
        server.end_stage()                      # whoever did not answer is dropped;
                                                # AbortError if fewer than t remain
    result = server.result()

Stage sets (Bonawitz et al. notation): U1 answered setup, U2 answered share_keys,
U3 sent a masked input, U3' signed the consistency statement (U2, U3), U4 answered
unmask. t is fixed when setup closes, from |U1| (t > 2|U1|/3). Each set must hold at
least t nodes (and U1 at least ``min_cohort``), otherwise the round aborts with no
output; the server never asks for an unmask below t signed survivors. The server holds
no roster: the platforms verify every signature; an honest server only collects them.

Unmasking: sum(y_u for u in U3) - sum(PRG(b_u) for u in U3)
           - sum(+-PRG(s_uv) for u in U2 minus U3, v in U3),
with b_u rebuilt from t shares of U4 (checked against u's commitment) and
s_sk_u rebuilt likewise (checked against u's public key pk_s).
Masked vectors are added to one running sum on arrival, so memory is one vector.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import common.secagg.crypto as crypto
import common.secagg.shamir as shamir
from common.secagg.config import HEADER_WORDS, SecAggConfig
from common.secagg.errors import AbortError, ConfigError, InputError, ProtocolError
from common.secagg.fields import NODE
from common.secagg.messages import (
    CONTEXT_BYTES,
    STAGE_CONSISTENCY,
    STAGE_MASKED_INPUT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    STAGES,
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
)
from common.secagg.prg import apply_masks
from common.secagg.quantize import Manifest, decode_sum, weighted_mean

log = logging.getLogger(__name__)

DONE, ABORTED = "done", "aborted"
_ORDER = STAGES
# How many t-subsets to try when a reconstruction fails its check (a node sent a bad share).
MAX_SUBSETS = 256


@dataclass(frozen=True)
class SecAggResult:
    """What the server learns: cohort totals only."""

    weighted_sum: np.ndarray  # (D,) float64, sum_i n_i * x_i over survivors
    total_weight: int  # sum_i n_i (capped weights)
    survivors: tuple[int, ...]  # U3: nodes whose inputs are in the sum
    dropped: dict[str, tuple[int, ...]]  # stage -> nodes lost at that stage
    clipped_values: int  # cohort total of values clipped to [-c, c]
    norm_clipped: int  # platforms whose L2 norm was clipped
    weight_capped: int  # platforms whose weight hit max_weight
    sum_error_bound: float  # per-coordinate bound on |weighted_sum - exact|
    config: SecAggConfig = field(repr=False)

    def weighted_mean(self) -> tuple[np.ndarray, float]:
        """(weighted mean, per-coordinate error bound) -- see ``quantize.weighted_mean``."""
        return weighted_mean(self.weighted_sum, self.total_weight, self.config)


class SecAggServer:
    """Coordinator of one round for a sampled cohort ``node_ids``."""

    def __init__(
        self,
        config: SecAggConfig,
        manifest: Manifest,
        node_ids: Iterable[int],
        *,
        session: bytes | None = None,
        round: int = 0,  # noqa: A002 - the protocol's name for it
        threshold: int | None = None,
        context: bytes = bytes(CONTEXT_BYTES),
    ) -> None:
        ids = sorted(int(NODE.check("node_ids", n)) for n in node_ids)
        if len(set(ids)) != len(ids):
            raise ConfigError("`node_ids` has duplicates")
        config.check_cohort(len(ids))
        config.check_vector_length(manifest.size)
        min_t = config.threshold(len(ids))
        if threshold is not None and not min_t <= threshold <= len(ids):
            raise ConfigError(f"`threshold` must be in [{min_t}, {len(ids)}] for {len(ids)} nodes, got {threshold}")
        if not isinstance(context, bytes) or len(context) != CONTEXT_BYTES:
            raise ConfigError(f"`context` must be {CONTEXT_BYTES} bytes")
        self.session = os.urandom(16) if session is None else session
        if not isinstance(self.session, bytes) or not 16 <= len(self.session) <= 64:
            raise ConfigError("`session` must be 16..64 bytes")
        if not isinstance(round, int) or isinstance(round, bool) or round < 0:
            raise ConfigError(f"`round` must be an int >= 0, got {round!r}")
        self.config, self.manifest, self.round, self.context = config, manifest, round, context
        # t until setup closes: the most the round can need; then fixed from |U1| (never below ``threshold``).
        self._min_threshold = threshold or 0
        self.threshold = max(min_t, self._min_threshold)
        self.cohort = tuple(ids)
        self.length = HEADER_WORDS + manifest.size
        self.stage = STAGE_SETUP
        self.abort_reason = ""
        self.dropped: dict[str, tuple[int, ...]] = {}
        self._expected: set[int] = set(ids)
        self._replied: set[int] = set()
        self._rejected: set[int] = set()
        self._params_digest = crypto.params_digest(config.to_params(), manifest.digest(), context)
        # per-stage data
        self.u1: tuple[int, ...] = ()
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self.signers: tuple[int, ...] = ()  # U3': signed the consistency statement
        self.u4: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
        self._keys: dict[int, SetupReply] = {}
        self._bundles: dict[int, dict[int, bytes]] = {}  # sender -> receiver -> ciphertext
        self._commits: dict[int, bytes] = {}
        self._acc: np.ndarray | None = None
        self._unmask: dict[int, UnmaskReply] = {}
        self._result: SecAggResult | None = None
        self._roster_hash = b""
        self._lagrange: dict[tuple[int, ...], list[int]] = {}

    # -- status -------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stage in (DONE, ABORTED)

    @property
    def aborted(self) -> bool:
        return self.stage == ABORTED

    @property
    def awaiting(self) -> tuple[int, ...]:
        """Nodes asked in this stage that have not (validly) replied yet."""
        return tuple(sorted(self._expected - self._replied - self._rejected))

    def _abort(self, reason: str) -> None:
        self.stage = ABORTED
        self.abort_reason = reason
        if self._acc is not None:
            self._acc.fill(0)
        self._acc = None
        self._unmask.clear()
        log.warning("secagg round %d aborted: %s", self.round, reason)
        raise AbortError(reason)

    # -- outgoing -----------------------------------------------------------------
    def requests(self) -> dict[int, dict[str, Any]]:
        """Messages for the current stage, keyed by recipient node id."""
        s, r, cfg = self.session, self.round, self.config
        if self.stage == STAGE_SETUP:
            return {
                n: SetupRequest(
                    s,
                    r,
                    n,
                    cohort_size=len(self.cohort),
                    context=self.context,
                    vector_length=self.manifest.size,
                    manifest_digest=self.manifest.digest(),
                    clip_range=cfg.clip_range,
                    l2_clip=cfg.l2_clip,
                    quant_bits=cfg.quant_bits,
                    modulus_bits=cfg.modulus_bits,
                    max_weight=cfg.max_weight,
                    max_cohort=cfg.max_cohort,
                    min_cohort=cfg.min_cohort,
                    threshold_fraction=cfg.threshold_fraction,
                ).to_message()
                for n in self.cohort
            }
        if self.stage == STAGE_SHARE_KEYS:
            ids = list(self.u1)
            names = [self._keys[n].platform for n in ids]
            pk_c = [self._keys[n].pk_c for n in ids]
            pk_s = [self._keys[n].pk_s for n in ids]
            sigs = [self._keys[n].signature for n in ids]
            t = self.threshold
            return {n: ShareKeysRequest(s, r, n, t, ids, names, pk_c, pk_s, sigs).to_message() for n in ids}
        if self.stage == STAGE_MASKED_INPUT:
            out = {}
            for v in self.u2:
                senders = [u for u in self.u2 if u != v]
                cts = [self._bundles[u][v] for u in senders]
                out[v] = MaskedInputRequest(s, r, v, senders, cts).to_message()
            return out
        dropped = sorted(set(self.u2) - set(self.u3))
        if self.stage == STAGE_CONSISTENCY:
            return {v: ConsistencyRequest(s, r, v, list(self.u3), dropped).to_message() for v in self.u3}
        if self.stage == STAGE_UNMASK:
            signers = list(self.signers)
            sigs = [self._signatures[v] for v in signers]
            return {v: UnmaskRequest(s, r, v, list(self.u3), dropped, signers, sigs).to_message() for v in signers}
        raise ProtocolError(f"no requests in state {self.stage!r}")

    # -- incoming -----------------------------------------------------------------
    def receive(self, node_id: int, reply: Any) -> None:
        """Validate and absorb one reply of the current stage from ``node_id``.

        A ProtocolError leaves the server unchanged except that the node is
        treated as not having answered (dropped) for the rest of the round.
        """
        if self.finished:
            raise ProtocolError(f"round is {self.stage}; reply from node {node_id} ignored")
        if node_id not in self._expected:
            raise ProtocolError(f"node {node_id} was not asked in stage {self.stage!r}")
        if node_id in self._replied or node_id in self._rejected:
            raise ProtocolError(f"node {node_id} already answered stage {self.stage!r}")
        try:
            self._receive(node_id, reply)
        except ProtocolError:
            self._rejected.add(node_id)
            raise
        self._replied.add(node_id)

    def _header(self, parser: Any, node_id: int, reply: Any) -> Any:
        msg = parser.parse(reply)
        if msg.session != self.session or msg.round != self.round:
            raise ProtocolError(f"reply from node {node_id} is for another session/round")
        if msg.node_id != node_id:
            raise ProtocolError(f"reply from node {node_id} claims to be from node {msg.node_id}")
        return msg

    def _receive(self, node_id: int, reply: Any) -> None:
        if self.stage == STAGE_SETUP:
            m: Any = self._header(SetupReply, node_id, reply)
            seen = {k for r in self._keys.values() for k in (r.pk_c, r.pk_s)}
            if m.pk_c in seen or m.pk_s in seen or m.pk_c == m.pk_s:
                raise ProtocolError(f"node {node_id} reused a public key")
            if any(r.platform == m.platform for r in self._keys.values()):
                raise ProtocolError(f"node {node_id} claims platform `{m.platform}`, which another node already has")
            self._keys[node_id] = m
        elif self.stage == STAGE_SHARE_KEYS:
            m = self._header(ShareKeysReply, node_id, reply)
            if set(m.receivers) != set(self.u1) - {node_id}:
                raise ProtocolError(f"node {node_id} did not send one share bundle per roster node")
            self._bundles[node_id] = dict(zip(m.receivers, m.ciphertexts, strict=True))
            self._commits[node_id] = m.b_commit
        elif self.stage == STAGE_MASKED_INPUT:
            m = self._header(MaskedInputReply, node_id, reply)
            vec = m.masked
            if vec.dtype != self.config.uint_dtype or vec.shape != (self.length,):
                raise ProtocolError(
                    f"masked vector from node {node_id}: expected {self.config.uint_dtype} "
                    f"({self.length},), got {vec.dtype} {vec.shape}"
                )
            if self._acc is None:
                self._acc = np.zeros(self.length, dtype=self.config.uint_dtype)
            np.add(self._acc, vec, out=self._acc)  # wraps mod 2^bits
        elif self.stage == STAGE_CONSISTENCY:
            self._signatures[node_id] = self._header(ConsistencyReply, node_id, reply).signature
        elif self.stage == STAGE_UNMASK:
            m = self._header(UnmaskReply, node_id, reply)
            if list(m.b_owners) != list(self.u3) or list(m.sk_owners) != sorted(set(self.u2) - set(self.u3)):
                raise ProtocolError(f"node {node_id} answered unmask for the wrong nodes")
            self._unmask[node_id] = m
        else:  # pragma: no cover - guarded by receive
            raise ProtocolError(f"no replies expected in state {self.stage!r}")

    # -- stage transitions --------------------------------------------------------
    def end_stage(self, no_reply: Iterable[int] = ()) -> None:
        """Close the current stage with the replies received so far.

        Every asked node without a valid reply is dropped (``no_reply`` may name
        the ones the transport timed out; naming a node that did reply is an error).
        Raises AbortError (and the round ends with no output) if too few remain.
        """
        if self.finished:
            raise ProtocolError(f"round is already {self.stage}")
        late = set(no_reply) & self._replied
        if late:
            raise ProtocolError(f"nodes {sorted(late)} are listed as silent but did reply")
        stage = self.stage
        survivors = tuple(sorted(self._replied))
        self.dropped[stage] = tuple(sorted(self._expected - self._replied))
        if self.dropped[stage]:
            log.info("secagg round %d stage %s: dropped %s", self.round, stage, self.dropped[stage])
        # Setup: t is not fixed yet; the signed roster needs min_cohort platforms.
        need = self.config.min_cohort if stage == STAGE_SETUP else self.threshold
        if len(survivors) < need:
            self._abort(
                f"stage {stage!r}: {len(survivors)} of {len(self._expected)} nodes answered, "
                f"need {need} (t = {self.threshold}: at most {len(self.u1 or self.cohort) - self.threshold} "
                "dropouts tolerated after setup)"
            )
        if stage == STAGE_SETUP:
            self.u1 = survivors
            self.threshold = max(self.config.threshold(len(survivors)), min(self._min_threshold, len(survivors)))
        elif stage == STAGE_SHARE_KEYS:
            self.u2 = survivors
            # Bundles addressed to nodes that fell out are not needed any more.
            for u in self.u2:
                self._bundles[u] = {v: c for v, c in self._bundles[u].items() if v in self.u2}
        elif stage == STAGE_MASKED_INPUT:
            self.u3 = survivors
            self._bundles.clear()
        elif stage == STAGE_CONSISTENCY:
            self.signers = survivors
        else:
            self.u4 = survivors
            self._finish()
            return
        self.stage = _ORDER[_ORDER.index(stage) + 1]
        self._expected, self._replied, self._rejected = set(survivors), set(), set()

    def step(self, replies: Mapping[int, Any]) -> dict[int, dict[str, Any]]:
        """Absorb ``replies`` (bad ones count as drops), close the stage, return next requests."""
        for node_id, reply in replies.items():
            try:
                self.receive(node_id, reply)
            except ProtocolError as exc:
                log.warning("secagg: rejected reply from node %d: %s", node_id, exc)
        self.end_stage()
        return {} if self.finished else self.requests()

    # -- unmasking ----------------------------------------------------------------
    def _finish(self) -> None:
        assert self._acc is not None  # U3 >= t >= 1 replies were added
        s, r = self.session, self.round
        roster_ids = list(self.u1)
        self._roster_hash = crypto.roster_hash(
            s,
            r,
            len(self.cohort),
            self.threshold,
            self._params_digest,
            roster_ids,
            [self._keys[n].platform for n in roster_ids],
            [self._keys[n].pk_c for n in roster_ids],
            [self._keys[n].pk_s for n in roster_ids],
        )
        responders = list(self.u4)
        dropped = sorted(set(self.u2) - set(self.u3))
        masks: list[tuple[bytes, int]] = []
        for u in self.u3:
            shares = {v: self._unmask[v].b_shares[self.u3.index(u)] for v in responders}
            b = self._reconstruct(u, shares, "b", lambda sec, u=u: crypto.commit_b(sec, s, r, u) == self._commits[u])
            masks.append((crypto.self_mask_seed(b, s, r, u), -1))
        for u in dropped:
            shares = {v: self._unmask[v].sk_shares[dropped.index(u)] for v in responders}
            sk = self._reconstruct(u, shares, "s_sk", lambda sec, u=u: _pk_matches(sec, self._keys[u].pk_s))
            for v in self.u3:
                seed = crypto.pairwise_seed(sk, self._keys[v].pk_s, s, r, u, v, self._roster_hash)
                # v added +PRG if v < u, else -PRG: remove it.
                masks.append((seed, -1 if v < u else 1))
        apply_masks(self._acc, masks)
        try:
            agg = decode_sum(self._acc, self.config, len(self.u3))
        except InputError as exc:
            self._abort(f"unmasked aggregate refused: {exc}")
        self._acc = None
        self._unmask.clear()
        self.stage = DONE
        self._result = SecAggResult(
            weighted_sum=agg.weighted_sum,
            total_weight=agg.total_weight,
            survivors=self.u3,
            dropped=dict(self.dropped),
            clipped_values=agg.clipped_values,
            norm_clipped=agg.norm_clipped,
            weight_capped=agg.weight_capped,
            sum_error_bound=agg.sum_error_bound,
            config=self.config,
        )
        if agg.clipped_values or agg.norm_clipped or agg.weight_capped:
            log.warning(
                "secagg round %d: cohort clipped %d values, %d platform(s) L2-clipped, %d weight(s) capped",
                r,
                agg.clipped_values,
                agg.norm_clipped,
                agg.weight_capped,
            )

    def _reconstruct(self, owner: int, shares: Mapping[int, bytes], what: str, check: Any) -> bytes:
        """Rebuild a secret from t shares, trying other t-subsets if the check fails."""
        t = self.threshold
        holders = sorted(shares)
        values = {v: shamir.share_from_bytes(shares[v]) for v in holders}
        for subset in itertools.islice(itertools.combinations(holders, t), MAX_SUBSETS):
            points = [shamir.eval_point(v) for v in subset]
            if subset not in self._lagrange:  # same responders for every secret: compute once
                self._lagrange[subset] = shamir.lagrange_at_zero(points)
            try:
                secret = shamir.combine(points, [values[v] for v in subset], self._lagrange[subset])
            except ProtocolError:
                continue
            if check(secret):
                return secret
        self._abort(f"could not reconstruct {what} of node {owner}: shares are inconsistent")
        raise AssertionError("unreachable")  # pragma: no cover

    # -- output -------------------------------------------------------------------
    def result(self) -> SecAggResult:
        """The aggregate; ProtocolError unless the round finished successfully."""
        if self._result is None:
            raise ProtocolError(
                f"no result: round is {self.stage!r}" + (f" ({self.abort_reason})" if self.abort_reason else "")
            )
        return self._result


def _pk_matches(sk: bytes, pk: bytes) -> bool:
    try:
        return crypto.public_from_private(sk) == pk
    except ValueError:
        return False


__all__: Sequence[str] = ["SecAggResult", "SecAggServer"]
