"""Issue 13's adversarial suite: one test per attack class, through the real ClientApp handlers.

Three deployed-style platforms (``platform`` in node_config, their own Ed25519 identity and the
operator's roster, a state dir) run ``clients.app``'s handlers in this process; ``HandlerGrid``
delivers the ServerApp's messages to them, so ``SecureGridTransport`` / ``GridTransport`` drive
real rounds with the tiny-random model. A malicious server is played by rewriting requests on
their way down, a malicious platform by rewriting its replies on their way up.

Every test's docstring says how the attack went on main 2fd0f8a (before issue 13).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF
from flwr.proto.node_pb2 import NodeInfo
from flwr.supercore.task_identity import TaskIdentity

import clients.app as clients_app
from clients import secure
from clients.app import handle_evaluate, handle_secagg_stage, handle_train
from common.config import AppConfig
from common.payload import ARRAYS, CONFIG, FLAT, arrays_to_state, state_to_arrays
from common.secagg import (
    HEADER_WORDS,
    STAGE_CONSISTENCY,
    STAGE_MASKED_INPUT,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    Identity,
    ProtocolError,
)
from common.secagg.identity import Roster, save_identity
from common.secagg.messages import UnmaskReply
from common.secagg.shamir import PRIME, SHARE_BYTES
from common.secure_wire import SECAGG, from_records, round_context, to_records
from server.federation import RoundAborted
from server.grid_transport import GridTransport
from server.secure import SecureGridTransport

TINY = {
    "model.base": "tiny-random", "model.max-length": 16, "data.history-len": 1, "lora.r": 2,
    "train.max-examples": 8, "train.batch-size": 8, "eval.max-rank-users": 3, "num-server-rounds": 1,
    "fed.min-nodes": 2, "fed.node-wait-s": 5.0, "fed.round-timeout-s": 60.0, "secure.stage-timeout-s": 30.0,
}  # fmt: skip
PLATFORMS = {101: "app", 102: "social_shop", 103: "web_shop"}  # the embedded synthetic dataset
Tamper = Callable[[int, Message, Message], "Message | None"]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take their run and source from the running task's identity, which Flower sets."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


_TRAINED: dict[tuple[str, int, bytes], Any] = {}


@pytest.fixture(autouse=True)
def train_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test trains the same (platform, round, global adapter): run the real ``fit`` once per key.

    The attacks are on the protocol around training, and CI has two cores; the handlers, the
    training code and its outputs stay real (the first call of each key computes them).
    """
    real_fit = clients_app.fit

    def fit(cfg: AppConfig, setup: Any, state: Any, server_round: int, store: Any, n_min: Any = None) -> Any:
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in state.values())).digest()
        key = (setup.platform, server_round, digest)
        if key not in _TRAINED:
            _TRAINED[key] = real_fit(cfg, setup, state, server_round, store, n_min)
        return _TRAINED[key]

    monkeypatch.setattr(clients_app, "fit", fit)


class HandlerGrid:
    """A Grid double: every message goes to the real ClientApp handler of an in-process platform.

    ``down(node, msg) -> msg | None`` rewrites (or swallows) a request, ``up(node, request, reply)``
    a reply; both default to honest delivery.
    """

    def __init__(self, contexts: dict[int, Context], down: Any = None, up: Tamper | None = None) -> None:
        self.contexts, self.down, self.up = contexts, down, up
        self.delivered: list[tuple[int, str, Message]] = []  # (node, message type, reply)
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def get_nodes(self) -> list[NodeInfo]:  # in-process platforms send no heartbeats, as simulated ones
        return [NodeInfo(node_id=n, heartbeat_interval=HEARTBEAT_INTERVAL_INF) for n in sorted(self.contexts)]

    def push_messages(self, messages: Any) -> list[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            ids.append(m.metadata.message_id)
            node = m.metadata.dst_node_id
            delivered = self.down(node, m) if self.down else m
            if delivered is None:
                continue
            delivered.metadata.__dict__["_message_id"] = m.metadata.message_id  # a rewrite answers as the original
            kind = delivered.metadata.message_type
            handler = {MessageType.TRAIN: handle_train, MessageType.EVALUATE: handle_evaluate}.get(
                kind, handle_secagg_stage
            )
            reply = handler(delivered, self.contexts[node])
            self.delivered.append((node, kind, reply))
            reply = self.up(node, delivered, reply) if self.up else reply
            if reply is not None:
                self._replies[m.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Any) -> list[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]


def _provision(tmp: Path, platforms: dict[int, str]) -> dict[int, dict[str, Any]]:
    """The operator's step: an identity per platform, one roster, each platform's node_config."""
    identities = {n: Identity.generate(p) for n, p in platforms.items()}
    for identity in identities.values():
        save_identity(identity, tmp / "keys")
    roster = tmp / "roster.json"
    roster.write_text(Roster.of(identities.values()).to_json())
    return {
        n: {"platform": p, "data-dir": "", "device": "cpu", "state-dir": str(tmp / "state"), "share-metrics": True,
            "secagg-identity": str(tmp / "keys" / f"{p}.secagg.key"), "secagg-roster": str(roster)}
        for n, p in platforms.items()
    }  # fmt: skip


def _contexts(node_configs: dict[int, dict[str, Any]]) -> dict[int, Context]:
    return {n: Context(run_id=1, node_id=n, node_config=c, state=RecordDict(), run_config={})
            for n, c in node_configs.items()}  # fmt: skip


def _cfg(tmp: Path, **changes: Any) -> AppConfig:
    return AppConfig().replace(**{**TINY, "secagg": True, "out-dir": str(tmp / "run"), **changes})


def _initial(cfg: AppConfig) -> dict[str, np.ndarray]:
    from common.modeling import build_scorer, get_trainable_state

    scorer, _ = build_scorer(cfg.model, cfg.lora, cfg.seed)
    return get_trainable_state(scorer)


def _errors(grid: HandlerGrid) -> dict[int, str]:
    return {n: r.error.reason for n, _, r in grid.delivered if r.has_error()}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, Any]], dict]:
    tmp = tmp_path_factory.mktemp("attacks")
    configs = _provision(tmp, PLATFORMS)
    return tmp, configs, _initial(_cfg(tmp))


# -- honest twin ---------------------------------------------------------------------
def test_honest_secure_round_through_the_handlers(federation: Any, tmp_path: Path) -> None:
    """The honest protocol: three deployed platforms, one secure round, all three in the sum."""
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    carried: list[tuple[str, set[str]]] = []

    def down(node: int, m: Message) -> Message:
        carried.append((m.metadata.message_type, set(m.content)))
        return m

    grid = HandlerGrid(_contexts(configs), down=down)
    fused, info, failures = SecureGridTransport(grid).train_round(state, cfg, 1)
    assert info["secure-aggregation"]["survivors"] == 3 and not failures, failures
    assert list(fused) == list(state) and not _errors(grid)
    # Every record is one more Flower object per deployed message: the stages after the first carry the
    # protocol's one record (the platforms keep the round's config), and so do the platforms' answers.
    assert {frozenset(keys) for kind, keys in carried if kind == MessageType.TRAIN} == {
        frozenset({ARRAYS, CONFIG, SECAGG})
    }
    assert [keys for kind, keys in carried if kind != MessageType.TRAIN] == [{SECAGG}] * 12  # 4 stages x 3
    assert all(set(reply.content) == {SECAGG} for _, kind, reply in grid.delivered if kind != MessageType.TRAIN)


def test_a_stage_without_its_rounds_config_is_refused_by_name(federation: Any, tmp_path: Path) -> None:
    """A platform that lost its round state (a restart between stages) says so instead of guessing a config."""
    _, configs, state = federation
    cfg = _cfg(tmp_path)

    def down(node: int, m: Message) -> Message:
        if node == 101 and m.metadata.message_type != MessageType.TRAIN:
            grid.contexts[101].state = RecordDict()  # what a restarted ClientApp finds
        return m

    grid = HandlerGrid(_contexts(configs), down=down)
    with pytest.raises(RoundAborted):  # app drops out at share_keys; 2 of 3 < t = 3
        SecureGridTransport(grid).train_round(state, cfg, 1)
    assert "without its round's config on this platform (was it restarted?)" in _errors(grid)[101]


# -- 1. key substitution / Sybils ----------------------------------------------------
def test_server_cannot_answer_in_a_platforms_place(federation: Any, tmp_path: Path) -> None:
    """The server swaps web_shop's setup reply for keys it made itself (signed by a key of its own).

    On main the roster was not signed: both honest platforms shared their secrets with the
    server's keys, so the server could unmask their inputs. Now both refuse at share_keys.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    impostor = Identity.generate("web_shop")

    def up(node: int, request: Message, reply: Message) -> Message:
        if node != 103 or request.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        msg = from_records(reply.content)
        from common.secagg import crypto

        sk_c, pk_c = crypto.generate_keypair()
        sk_s, pk_s = crypto.generate_keypair()
        statement = crypto.keys_statement(msg["session"], msg["round"], node, "web_shop", pk_c, pk_s,
                                          _context_of(request))  # fmt: skip
        forged = {**msg, "pk_c": pk_c, "pk_s": pk_s, "signature": impostor.sign(statement)}
        return Message(RecordDict(to_records(forged)), reply_to=request)

    grid = HandlerGrid(_contexts(configs), up=up)
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    errors = _errors(grid)
    assert all("signature of platform `web_shop` does not verify" in errors[n] for n in (101, 102)), errors


def test_server_cannot_list_one_platform_twice(federation: Any, tmp_path: Path) -> None:
    """A Sybil: the server shows app's genuinely signed entry again under a second node id.

    On main nothing tied a node to a platform: the roster was whatever the server sent.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)

    def down(node: int, m: Message) -> Message:
        if SECAGG not in m.content or from_records(m.content)["stage"] != STAGE_SHARE_KEYS:
            return m
        msg = from_records(m.content)
        msg["platforms"] = ["app", "app", "web_shop"]  # social_shop's slot now claims to be app
        content = RecordDict({**{k: v for k, v in m.content.items()}, **to_records(msg)})
        return Message(content, dst_node_id=node, message_type=m.metadata.message_type, group_id="1")

    grid = HandlerGrid(_contexts(configs), down=down)
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    assert all("Sybil" in e or "wrong keys or name" in e for e in _errors(grid).values()), _errors(grid)


# -- 2. split views at unmask -------------------------------------------------------
def _rewrite_stage(node_to_tamper: int, stage: str, change: Callable[[dict[str, Any]], None]) -> Any:
    """A ``down`` hook: ``change`` edits the protocol message of ``stage`` on its way to one node."""

    def down(node: int, m: Message) -> Message:
        if node != node_to_tamper or SECAGG not in m.content or from_records(m.content)["stage"] != stage:
            return m
        msg = from_records(m.content)
        change(msg)
        content = RecordDict({**{k: v for k, v in m.content.items()}, **to_records(msg)})
        return Message(content, dst_node_id=node, message_type=m.metadata.message_type, group_id="1")

    return down


def _call_web_shop_dropped(msg: dict[str, Any]) -> None:
    msg["active"], msg["dropped"] = [101, 102], [103]


def _only_one_peer(msg: dict[str, Any]) -> None:
    msg["senders"], msg["ciphertexts"] = msg["senders"][:1], msg["ciphertexts"][:1]


@pytest.mark.parametrize(
    ("stage", "change", "refusal"),
    [
        (STAGE_MASKED_INPUT, _only_one_peer, "only 2 nodes hold shares (threshold 3)"),
        (STAGE_CONSISTENCY, _call_web_shop_dropped, "only 2 survivors, below the threshold 3"),
        (STAGE_UNMASK, _call_web_shop_dropped, "only 2 survivors, below the threshold 3"),
        (STAGE_UNMASK, lambda m: m.__setitem__("signatures", [bytes(64), *m["signatures"][1:]]), "does not verify"),
    ],
    ids=["mask-with-fewer-than-t", "split-at-consistency", "split-at-unmask", "forged-signature"],
)
def test_a_split_view_reveals_nothing(
    federation: Any, tmp_path: Path, stage: str, change: Callable[[dict[str, Any]], None], refusal: str
) -> None:
    """The server tells app that web_shop dropped (after web_shop sent its masked input), to get
    web_shop's key share from app while the others hand over web_shop's mask-seed shares; or it
    asks app to mask with one peer's shares only (a sum over fewer than t platforms).

    On main 2fd0f8a there was no consistency stage and t was 2 of 3: app masked with t - 1 = 1
    peer and answered an unmask request calling web_shop dropped with web_shop's s_sk share. Now
    t = 3 > 2n/3, app masks only with t holders, signs only a survivor set of at least t and
    reveals only for the very set it signed, with t valid roster signatures on it; a refusal
    wipes app's secrets, and the round aborts with nothing revealed.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    contexts = _contexts(configs)
    grid = HandlerGrid(contexts, down=_rewrite_stage(101, stage, change))
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    assert refusal in _errors(grid)[101], _errors(grid)
    revealed = [from_records(r.content) for n, _, r in grid.delivered if n == 101 and not r.has_error()]
    assert not any("sk_owners" in m or "b_owners" in m for m in revealed)  # app sent no unmask reply
    assert secure.STATE not in contexts[101].state and secure.UPDATE not in contexts[101].state


# -- 3. the server sets the platforms' policy ---------------------------------------
def test_server_cannot_lower_a_platforms_minimum_cohort(federation: Any, tmp_path: Path) -> None:
    """The server runs a round with two platforms and asks for min cohort 2.

    On main the platform took min cohort and threshold from the server's own message and
    answered; each of the two then learns the other's update. A deployed platform's default
    policy (node_config, min cohort 3) refuses.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path, **{"secure.min-cohort": 2, "secure.threshold-fraction": 0.51})
    grid = HandlerGrid(_contexts({n: c for n, c in configs.items() if n != 103}))
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    errors = _errors(grid)
    assert len(errors) == 2 and all("below `min_cohort`=3" in e for e in errors.values()), errors


def test_server_cannot_lower_the_threshold(federation: Any, tmp_path: Path) -> None:
    """The server asks for t = 2 of 3 in the share_keys request (one platform's shares then suffice).

    On main t = max(ceil(f n), n // 2 + 1) = 2 of 3 was accepted. Now every platform requires
    t > 2n/3 and at least its own policy's fraction, and refuses before sharing anything.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    downs = [_rewrite_stage(n, STAGE_SHARE_KEYS, lambda m: m.__setitem__("threshold", 2)) for n in (101, 102, 103)]
    grid = HandlerGrid(_contexts(configs), down=lambda node, m: downs[node - 101](node, m))
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    errors = _errors(grid)
    assert len(errors) == 3 and all("threshold 2 for a roster of 3 is below" in e for e in errors.values()), errors


def test_a_platform_contributes_to_at_most_its_round_limit(federation: Any, tmp_path: Path) -> None:
    """Platforms set ``secagg-max-rounds = 1`` in their node_config; the server asks for round 2.

    On main a platform answered every round the server asked for. Now, past its own limit,
    it refuses before training (the limit is the platform's, the server cannot raise it).
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    limited = {n: {**c, "secagg-max-rounds": 1} for n, c in configs.items()}
    SecureGridTransport(HandlerGrid(_contexts(limited))).train_round(state, cfg, 1)  # the honest twin
    grid = HandlerGrid(_contexts(limited))
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 2)
    errors = _errors(grid)
    assert len(errors) == 3 and all("contributed to 1 rounds of this run, its limit" in e for e in errors.values())


# -- 4. re-runs, replays, inconsistent models ---------------------------------------
def test_a_round_is_contributed_to_once_even_after_a_restart(federation: Any, tmp_path: Path) -> None:
    """The server runs round 1 to the end, then runs round 1 again (same model, fresh session).

    On main every platform trained deterministically again and answered, so the server could
    difference two sums over different cohorts. Now each platform's on-disk record refuses the
    second round 1 before training, also from a fresh process (new Context, same state dir).
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    SecureGridTransport(HandlerGrid(_contexts(configs))).train_round(state, cfg, 1)
    grid = HandlerGrid(_contexts(configs))  # restarted platforms: nothing survives but their disk
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    errors = _errors(grid)
    assert len(errors) == 3 and all("already received this platform's masked input" in e for e in errors.values())


def test_a_replayed_setup_is_not_answered(federation: Any, tmp_path: Path) -> None:
    """Mid-round, the server replays app's train message (same session, same round) to get fresh keys.

    On main the replay was answered with new public keys for the same round. Now the platform
    refuses it (a round is never re-keyed) and the round's secrets are gone: app drops out.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    contexts = _contexts(configs)
    sent: dict[int, Message] = {}
    replayed: list[Message] = []

    def down(node: int, m: Message) -> Message:
        if m.metadata.message_type == MessageType.TRAIN:
            sent[node] = m
        elif node == 101 and not replayed:
            replayed.append(handle_train(sent[101], contexts[101]))
        return m

    with pytest.raises(RoundAborted):  # app is gone after the replay: 2 of 3 < t = 3
        SecureGridTransport(HandlerGrid(contexts, down=down)).train_round(state, cfg, 1)
    (reply,) = replayed
    assert reply.has_error() and "already started" in reply.error.reason  # an error reply: no keys


def _zero_adapter(content: RecordDict) -> None:
    record = content[ARRAYS]
    content[ARRAYS] = ArrayRecord({k: Array(np.zeros_like(a.numpy())) if k == FLAT else a for k, a in record.items()})


def _other_learning_rate(content: RecordDict) -> None:
    config = dict(content[CONFIG])
    content[CONFIG] = ConfigRecord({**config, "train.lr": float(config["train.lr"]) * 10})


@pytest.mark.parametrize("change", [_zero_adapter, _other_learning_rate], ids=["model", "training-config"])
def test_platforms_given_different_models_abort_the_round(
    federation: Any, tmp_path: Path, change: Callable[[RecordDict], None]
) -> None:
    """The server sends web_shop a neutralised (zero) adapter, or another training config (10x the
    learning rate), with a setup request to match it.

    On main nothing bound the round to the model or config: the round completed and the sum
    isolated the other platforms' updates. Now every key is signed over the round context (hash of
    the global adapter and training config), so the platforms that got the real ones reject
    web_shop's keys and web_shop rejects theirs.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)

    def down(node: int, m: Message) -> Message:
        if node != 103 or m.metadata.message_type != MessageType.TRAIN:
            return m
        content = RecordDict({**{k: v for k, v in m.content.items()}})
        change(content)
        msg = from_records(content)
        msg["context"] = round_context(content.get(ARRAYS), content.get(CONFIG))
        content[SECAGG] = to_records(msg)[SECAGG]
        return Message(content, dst_node_id=node, message_type=m.metadata.message_type, group_id="1")

    grid = HandlerGrid(_contexts(configs), down=down)
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    errors = _errors(grid)
    assert set(errors) == {101, 102, 103} and all("does not verify" in e for e in errors.values()), errors


def test_a_failed_stage_destroys_the_rounds_secrets(federation: Any, tmp_path: Path) -> None:
    """The server sends app a masked-input request with a tampered share bundle.

    On main the failing stage left the protocol state (X25519 secrets, b seed) and the trained
    update in context.state, usable by a later request. Now both are gone.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)

    def down(node: int, m: Message) -> Message:
        if node != 101 or SECAGG not in m.content or from_records(m.content)["stage"] != STAGE_MASKED_INPUT:
            return m
        msg = from_records(m.content)
        msg["ciphertexts"] = [bytes([c[0] ^ 1]) + c[1:] for c in msg["ciphertexts"]]
        content = RecordDict({**{k: v for k, v in m.content.items()}, **to_records(msg)})
        return Message(content, dst_node_id=node, message_type=m.metadata.message_type, group_id="1")

    contexts = _contexts(configs)
    grid = HandlerGrid(contexts, down=down)
    with pytest.raises(RoundAborted):  # app drops out at masked input; 2 of 3 < t = 3
        SecureGridTransport(grid).train_round(state, cfg, 1)
    assert "failed authentication" in _errors(grid)[101]
    assert secure.STATE not in contexts[101].state and secure.UPDATE not in contexts[101].state


# -- 5. malicious platforms ----------------------------------------------------------
def _masked_tamper(node_to_tamper: int, change: Callable[[np.ndarray], None]) -> Tamper:
    def up(node: int, request: Message, reply: Message) -> Message:
        if node != node_to_tamper or reply.has_error() or SECAGG not in reply.content:
            return reply
        msg = from_records(reply.content)
        if "masked" not in msg:
            return reply
        masked = msg["masked"].copy()
        change(masked)
        return Message(RecordDict(to_records({**msg, "masked": masked})), reply_to=request)

    return up


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda v: v.__setitem__(HEADER_WORDS + 5, v[HEADER_WORDS + 5] + np.uint64(1 << 50)), "clip-range"),  # a value
        (lambda v: v.__setitem__(1, v[1] + np.uint64(1 << 40)), "clipped-count"),  # a forged clipped count
        (lambda v: v.__setitem__(0, v[0] - np.uint64(1 << 30)), "total-weight"),  # weight driven to <= 0
    ],
    ids=["offset", "clipped-count", "zero-weight"],
)
def test_a_malicious_platforms_masked_vector_aborts_the_round_not_the_run(
    federation: Any, tmp_path: Path, change: Callable[[np.ndarray], None], check: str, caplog: Any
) -> None:
    """web_shop adds an offset to its masked vector (value, clipped count, or weight word).

    On main only the header's range was checked: an offset on a value went into the fused
    adapter; a weight driven to 0 raised InputError out of train_round and ended the whole run.
    Now the unmasked sum is checked (fused mean within [-c, c], total weight >= survivors,
    clip counts possible) and a violating round is refused with a log line naming the check.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    grid = HandlerGrid(_contexts(configs), up=_masked_tamper(103, change))
    with caplog.at_level(logging.WARNING), pytest.raises(RoundAborted, match=f"check `{check}`"):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    assert any(f"check `{check}`" in r.getMessage() for r in caplog.records)


def test_a_malformed_protocol_reply_drops_that_platform(federation: Any, tmp_path: Path, caplog: Any) -> None:
    """web_shop answers share_keys with a record that is not a protocol message at all.

    On main a ProtocolError escaping train_round ended the run. Now the server rejects the reply
    with a line naming the platform and the stage, web_shop drops out of the round, and (t = 3 of
    3 here) the round aborts: RoundAborted, which the federation loop records and survives.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)

    def up(node: int, request: Message, reply: Message) -> Message:
        if node != 103 or SECAGG not in request.content or from_records(request.content)["stage"] != STAGE_SHARE_KEYS:
            return reply
        return Message(RecordDict({SECAGG: ConfigRecord({"msg": b"not a secagg record"})}), reply_to=request)

    grid = HandlerGrid(_contexts(configs), up=up)
    with caplog.at_level(logging.WARNING), pytest.raises(RoundAborted, match="stage share_keys"):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    said = "web_shop (node 103) (share_keys): rejected: not a secagg record"  # named: its setup reply said who
    assert any(said in r.getMessage() for r in caplog.records)


def test_a_round_aborted_by_a_malicious_platform_does_not_end_the_run(federation: Any, tmp_path: Path) -> None:
    """The whole federation loop: web_shop drives round 1's total weight to zero, then behaves.

    On main the InputError of a zero total weight escaped train_round and ended the run. Now
    round 1 is recorded as aborted (naming the check), the adapter is kept, and round 2 fuses
    all three platforms.
    """
    from common.run_files import read_rounds
    from server.federation import run_federation

    _, configs, state = federation
    cfg = _cfg(tmp_path, **{"num-server-rounds": 2})
    zero_weight = _masked_tamper(103, lambda v: v.__setitem__(0, v[0] - np.uint64(1 << 30)))
    tampered: list[int] = []

    def up(node: int, request: Message, reply: Message) -> Message | None:
        if tampered or request.metadata.message_type != f"{MessageType.TRAIN}.secagg":
            return reply
        changed = zero_weight(node, request, reply)
        if changed is not reply:
            tampered.append(node)
        return changed

    run_federation(SecureGridTransport(HandlerGrid(_contexts(configs), up=up)), cfg, table=False)
    rounds = read_rounds(Path(cfg.out_dir))
    assert tampered == [103] and [r["round"] for r in rounds] == [1, 2], rounds
    assert "check `total-weight`" in rounds[0]["aborted"], rounds[0]
    assert "aborted" not in rounds[1] and rounds[1]["train"]["secure-aggregation"]["survivors"] == 3, rounds[1]


def test_a_share_outside_the_field_is_refused_when_parsed() -> None:
    """A share value >= p: on main the parser accepted it (caught, if at all, deep in the maths)."""
    share = PRIME.to_bytes(SHARE_BYTES, "big")
    msg = {"secagg": "crossfed-secagg/2", "stage": "unmask", "session": b"s" * 16, "round": 1, "node_id": 1,
           "b_owners": [1], "b_shares": [share], "sk_owners": [], "sk_shares": []}  # fmt: skip
    with pytest.raises(ProtocolError, match="share >= p"):
        UnmaskReply.parse(msg)
    ok = {**msg, "b_shares": [(PRIME - 1).to_bytes(SHARE_BYTES, "big")]}
    assert UnmaskReply.parse(ok).b_owners == (1,)


def _renamed(record: ArrayRecord) -> ArrayRecord:
    return state_to_arrays({f"evil.{k}": v for k, v in arrays_to_state(record).items()})


def _one_value_more(record: ArrayRecord) -> ArrayRecord:
    update = arrays_to_state(record)
    first = next(iter(update))
    return state_to_arrays({**update, first: np.append(update[first].ravel(), np.float32(0))})


def _float64(record: ArrayRecord) -> ArrayRecord:
    return ArrayRecord({k: Array(a.numpy().astype(np.float64)) if k == FLAT else a for k, a in record.items()})


@pytest.mark.parametrize(
    ("change", "error"),
    [(_renamed, "tensor names differ"), (_one_value_more, "has shape"), (_float64, "has dtype float64")],
    ids=["names", "shape", "dtype"],
)
def test_a_malformed_plain_reply_is_left_out(
    federation: Any, tmp_path: Path, change: Callable[[ArrayRecord], ArrayRecord], error: str
) -> None:
    """Outside secure mode, web_shop answers with tensors whose names, shape or dtype differ from the
    global adapter's.

    On main a renamed tensor raised FusionError out of train_round and ended the run; now web_shop
    is left out with an error line and the other two are fused.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path, secagg=False)
    clear = {n: {**c, "require-secagg": False} for n, c in configs.items()}

    def up(node: int, request: Message, reply: Message) -> Message:
        if node != 103 or reply.has_error():
            return reply
        return Message(RecordDict({**{k: v for k, v in reply.content.items()}, ARRAYS: change(reply.content[ARRAYS])}),
                       reply_to=request)  # fmt: skip

    fused, info, failures = GridTransport(HandlerGrid(_contexts(clear), up=up)).train_round(state, cfg, 1)
    assert sorted(info) == ["app", "social_shop"] and list(fused) == list(state)
    assert any("(node 103): malformed reply: " in f and error in f for f in failures), failures


def _context_of(request: Message) -> bytes:
    return round_context(request.content.get(ARRAYS), request.content.get(CONFIG))


# -- 6. one input per platform per round, for every secure sum (issue 22) ----------------
def _two_allowed(configs: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Platforms whose own policy accepts a cohort of two (so a one-platform difference is possible)."""
    return {n: {**c, "secagg-min-cohort": 2} for n, c in configs.items()}


def _eval_errors(grid: HandlerGrid) -> dict[int, str]:
    return {n: r.error.reason for n, kind, r in grid.delivered if r.has_error() and kind == MessageType.EVALUATE}


def test_metric_differencing_under_fresh_round_numbers_is_refused(federation: Any, tmp_path: Path) -> None:
    """The server asks for evaluations under round numbers nobody trained in: rounds 5 and 6, the
    second without app, and differences the two sums.

    On main 7f2a677 both sums came back (each (run, round, splits) was a fresh record), and their
    difference is app's exact validation example count and AUC. Now a platform evaluates only the
    round it has just trained in: both requests are refused before anything is evaluated.
    """
    from server.federation import AGGREGATE

    _, configs, state = federation
    cfg = _cfg(tmp_path, **{"secure.min-cohort": 2})
    allowed = _two_allowed(configs)
    everyone = HandlerGrid(_contexts(allowed))
    all_three, _ = SecureGridTransport(everyone).evaluate_round(state, cfg, 5, ("valid",))
    without_app = HandlerGrid(_contexts({n: c for n, c in allowed.items() if n != 101}))
    two, _ = SecureGridTransport(without_app).evaluate_round(state, cfg, 6, ("valid",))
    if AGGREGATE in all_three and AGGREGATE in two:  # the attack worked: say what it recovered
        a, b = all_three[AGGREGATE], two[AGGREGATE]
        count = a["valid.n"] - b["valid.n"]
        auc = (a["valid.auc"] * a["valid.n"] - b["valid.auc"] * b["valid.n"]) / count
        pytest.fail(f"differencing recovered app's count {count} and AUC {auc:.6f} "
                    f"(app's own: {all_three['app']['valid.n']}, {all_three['app']['valid.auc']:.6f})")  # fmt: skip
    errors, later = _eval_errors(everyone), _eval_errors(without_app)
    assert len(errors) == 3 and all("did not train in round 5" in e for e in errors.values()), errors
    assert len(later) == 2 and all("did not train in round 6" in e for e in later.values()), later


def test_a_round_gets_one_metric_sum_whatever_its_splits(federation: Any, tmp_path: Path) -> None:
    """After round 1's training and validation sum, the server asks for a second metric sum of round 1
    under other splits (valid + test) from the cohort without app.

    On main the record was per (round, splits): the second sum came back, and its validation part
    minus the first sum's is app's. Now the platforms keep one metric record per round.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path, **{"secure.min-cohort": 2})
    allowed = _two_allowed(configs)
    transport = SecureGridTransport(HandlerGrid(_contexts(allowed)))
    fused, _, _ = transport.train_round(state, cfg, 1)
    first, failures = transport.evaluate_round(fused, cfg, 1, ("valid",))
    assert not failures and len(first) == 4, failures  # three platforms and the aggregate
    grid = HandlerGrid(_contexts({n: c for n, c in allowed.items() if n != 101}))
    second, _ = SecureGridTransport(grid).evaluate_round(fused, cfg, 1, ("valid", "test"))
    errors = _eval_errors(grid)
    assert not second and len(errors) == 2, (second, errors)
    assert all("round 1 already received this platform's metrics" in e for e in errors.values()), errors


def test_round_numbers_only_move_forward(federation: Any, tmp_path: Path) -> None:
    """The server runs round 2, then asks for round 1 (which nobody has given an input to yet).

    On main the record refused only a round already in it, so a run could go back to any round
    number it had skipped. Now a round at or before the last one a platform trained in is refused.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    SecureGridTransport(HandlerGrid(_contexts(configs))).train_round(state, cfg, 2)
    grid = HandlerGrid(_contexts(configs))
    with pytest.raises(RoundAborted):
        SecureGridTransport(grid).train_round(state, cfg, 1)
    errors = _errors(grid)
    assert len(errors) == 3 and all("round 1 is not after round 2" in e for e in errors.values()), errors


def test_the_final_test_is_of_the_model_evaluated_in_that_round(federation: Any, tmp_path: Path) -> None:
    """The best round's test sum: the server sends another model (all zeros) than the one the
    platforms evaluated in that round, then the right one, then asks for a second test sum.

    On main any model was tested under any round. Now the test sum is once per run, of the very
    model (same hash) the platform evaluated in that round.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    transport = SecureGridTransport(HandlerGrid(_contexts(configs)))
    fused, _, _ = transport.train_round(state, cfg, 1)
    transport.evaluate_round(fused, cfg, 1, ("valid",))
    other = {k: np.zeros_like(v) for k, v in fused.items()}
    grid = HandlerGrid(_contexts(configs))
    wrong, _ = SecureGridTransport(grid).evaluate_round(other, cfg, 1, ("test",))
    errors = _eval_errors(grid)
    assert not wrong and len(errors) == 3, errors
    assert all("not the model this platform evaluated in round 1" in e for e in errors.values()), errors
    tested, failures = transport.evaluate_round(fused, cfg, 1, ("test",))
    assert not failures and "test.auc" in tested["*"], failures
    grid = HandlerGrid(_contexts(configs))
    again, _ = SecureGridTransport(grid).evaluate_round(fused, cfg, 1, ("test",))
    errors = _eval_errors(grid)
    assert not again and all("already received this platform's test metrics" in e for e in errors.values()), errors


@pytest.mark.parametrize(
    ("splits", "refusal"),
    [(("valid", "valid"), "names split `valid` twice"), (("valid", "train"), "unknown split")],
    ids=["repeated", "unknown"],
)
def test_an_evaluation_naming_a_split_twice_or_an_unknown_one_is_refused(
    federation: Any, tmp_path: Path, splits: tuple[str, ...], refusal: str
) -> None:
    """The server asks for `valid,valid` (or an unknown split) in round 1's metric sum.

    On main `valid,valid` was evaluated and each platform's validation metrics went into the sum
    twice: the sum was no longer one input per platform. Now the request is refused.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    grid = HandlerGrid(_contexts(configs))
    fused, _, _ = SecureGridTransport(grid).train_round(state, cfg, 1)
    evaluated, _ = SecureGridTransport(grid).evaluate_round(fused, cfg, 1, splits)
    errors = _eval_errors(grid)
    assert not evaluated and len(errors) == 3 and all(refusal in e for e in errors.values()), errors


# -- 7. a round's metric sum on the next round's training messages (issue 23) ------------
def test_the_metric_sum_rides_on_the_next_rounds_training(federation: Any, tmp_path: Path) -> None:
    """Round 2's training messages also carry round 1's metric sum: two sums, five messages a platform.

    Each sum keeps its own keys, threshold, consistency check and masked input; the metric sum's
    mean is the example-weighted mean of the metrics the platforms share (they opt in here).
    """
    from common.metrics import mean_metrics
    from server.federation import AGGREGATE

    _, configs, state = federation
    cfg = _cfg(tmp_path)
    grid = HandlerGrid(_contexts(configs))
    transport = SecureGridTransport(grid)
    fused, _, _ = transport.train_round(state, cfg, 1)
    before = len(grid.delivered)
    done = transport.train_and_evaluate(fused, cfg, 2, 1, ("valid",))
    assert len(grid.delivered) - before == 3 * 5 and not _errors(grid), _errors(grid)
    assert done.info["secure-aggregation"]["survivors"] == 3 and not done.failures, done.failures
    assert done.evaluation is not None
    evaluated, failures = done.evaluation
    assert not failures and sorted(evaluated) == [AGGREGATE, "app", "social_shop", "web_shop"], failures
    expected = mean_metrics({p: m for p, m in evaluated.items() if p != AGGREGATE})
    for key in ("valid.auc", "valid.logloss", "valid.n", "valid.hr@10"):
        assert abs(evaluated[AGGREGATE][key] - expected[key]) < 1e-4, key
    # ... and it was round 1's one metric sum: asking again, alone, is refused
    again = HandlerGrid(grid.contexts)
    second, _ = SecureGridTransport(again).evaluate_round(fused, cfg, 1, ("valid", "test"))
    errors = _eval_errors(again)
    assert not second and len(errors) == 3, errors
    assert all("round 1 already received this platform's metrics" in e for e in errors.values()), errors


def test_a_metric_sum_of_an_untrained_round_beside_training_is_refused_and_training_goes_on(
    federation: Any, tmp_path: Path
) -> None:
    """Beside round 2's training, the server asks for the metrics of round 5, which nobody trained in.

    Each platform says why in its reply and still trains: round 2 fuses all three, no metrics leave.
    """
    _, configs, state = federation
    cfg = _cfg(tmp_path)
    grid = HandlerGrid(_contexts(configs))
    transport = SecureGridTransport(grid)
    fused, _, _ = transport.train_round(state, cfg, 1)
    done = transport.train_and_evaluate(fused, cfg, 2, 5, ("valid",))
    assert done.info["secure-aggregation"]["survivors"] == 3 and not done.failures and not _errors(grid)
    assert done.evaluation is not None
    evaluated, failures = done.evaluation
    assert evaluated == {} and sum("did not train in round 5" in f for f in failures) == 3, failures


def test_a_secure_run_sends_five_messages_fewer_a_round(federation: Any, tmp_path: Path) -> None:
    """The whole loop over the handlers, two rounds: round 1's metrics ride on round 2's training, round 2's
    come in one closing metric sum, then the best round's test: 4 x 5 messages a platform (5 x 5 before).
    """
    from common.run_files import read_rounds
    from server.federation import run_federation

    _, configs, _ = federation
    cfg = _cfg(tmp_path, **{"num-server-rounds": 2, "fed.patience": 0})
    grid = HandlerGrid(_contexts(configs))
    summary = run_federation(SecureGridTransport(grid), cfg, table=False)
    rounds = read_rounds(Path(cfg.out_dir))
    assert [r["round"] for r in rounds] == [1, 2] and not _errors(grid), _errors(grid)
    for record in rounds:
        assert record["train"]["secure-aggregation"]["survivors"] == 3 and not record["failures"], record
        assert record["cohort"] == ["app", "social_shop", "web_shop"] and "valid.auc" in record["mean"], record
    kinds = [kind for node, kind, _ in grid.delivered if node == 101]
    assert len(kinds) == 4 * 5, kinds
    assert [k for k in kinds if "." not in k] == [MessageType.TRAIN, MessageType.TRAIN, MessageType.EVALUATE,
                                                  MessageType.EVALUATE]  # fmt: skip
    assert sorted(summary["test"]) == ["app", "social_shop", "web_shop"] and "test.auc" in summary["mean"]
