"""Stage order, addressing and local-policy checks on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from common.secagg import (
    STAGE_MASKED_INPUT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    AbortError,
    ClientState,
    ConfigError,
    Identity,
    InputError,
    Manifest,
    ProtocolError,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from tests.secagg.helpers import client_for, drive_to, make_inputs

IDS = list(range(4))  # t = 3


def _fresh(cfg, manifest, node=0):
    return client_for(node, cfg, manifest, IDS)


def test_in_order_stages_accepted(cfg, manifest):
    server, clients, _ = drive_to(STAGE_SHARE_KEYS, cfg, manifest, IDS)
    assert clients[0].stage == STAGE_SETUP
    reply = clients[0].handle(server.requests()[0])
    assert reply["stage"] == STAGE_SHARE_KEYS and clients[0].stage == STAGE_SHARE_KEYS


@pytest.mark.parametrize("stage", [STAGE_SHARE_KEYS, STAGE_MASKED_INPUT, STAGE_UNMASK])
def test_stage_before_setup_rejected(cfg, manifest, stage):
    server, _, inputs = drive_to(stage, cfg, manifest, IDS)
    client = _fresh(cfg, manifest)
    with pytest.raises(ProtocolError, match="unexpected"):
        client.handle(server.requests()[0], *inputs[0])


@pytest.mark.parametrize(
    ("at", "skip_to"),
    [(STAGE_SHARE_KEYS, STAGE_MASKED_INPUT), (STAGE_SHARE_KEYS, STAGE_UNMASK), (STAGE_MASKED_INPUT, STAGE_UNMASK)],
)
def test_skipped_stage_rejected(cfg, manifest, at, skip_to):
    # Clients sit in the stage before ``at``; a request of a later stage arrives.
    later, _, inputs = drive_to(skip_to, cfg, manifest, IDS)
    _, clients, _ = drive_to(at, cfg, manifest, IDS)
    msg = dict(later.requests()[0])
    with pytest.raises(ProtocolError):
        clients[0].handle(msg, *inputs[0])
    assert clients[0].stage == "aborted"


@pytest.mark.parametrize("stage", [STAGE_SHARE_KEYS, STAGE_MASKED_INPUT, STAGE_UNMASK])
def test_repeated_stage_message_rejected(cfg, manifest, stage):
    server, clients, inputs = drive_to(stage, cfg, manifest, IDS)
    req = server.requests()[0]
    clients[0].handle(req, *inputs[0])
    with pytest.raises(ProtocolError, match="unexpected"):
        clients[0].handle(req, *inputs[0])


def test_repeated_or_old_setup_rejected_new_round_accepted(cfg, manifest):
    server, clients, _ = drive_to(STAGE_SHARE_KEYS, cfg, manifest, IDS, rnd=5)
    again = SecAggServer(cfg, manifest, IDS, session=server.session, round=5).requests()[0]
    with pytest.raises(ProtocolError, match="re-keyed"):
        clients[0].handle(again)
    old = SecAggServer(cfg, manifest, IDS, session=server.session, round=4).requests()[0]
    with pytest.raises(ProtocolError, match="re-keyed"):
        clients[0].handle(old)
    new = SecAggServer(cfg, manifest, IDS, session=server.session, round=6).requests()[0]
    assert clients[0].handle(new)["stage"] == STAGE_SETUP


def test_wrong_session_round_or_addressee_rejected(cfg, manifest):
    for change in ({"session": b"X" * 16}, {"round": 2}, {"node_id": 3}):
        server, clients, _ = drive_to(STAGE_SHARE_KEYS, cfg, manifest, IDS)
        msg = {**server.requests()[0], **change}
        with pytest.raises(ProtocolError):
            clients[0].handle(msg)


def test_setup_addressed_to_other_node_rejected(cfg, manifest):
    req = SecAggServer(cfg, manifest, IDS).requests()[1]
    with pytest.raises(ProtocolError, match="addressed to node 1"):
        _fresh(cfg, manifest).handle(req)


@pytest.mark.parametrize(
    ("server_cfg", "field"),
    [
        ({"clip_range": 2.0}, "`clip_range`"),
        ({"quant_bits": 20}, "`quant_bits`"),
        ({"max_weight": 10}, "`max_weight`"),
        ({"l2_clip": 3.0}, "`l2_clip`"),
    ],
)
def test_config_mismatch_refused(cfg, manifest, server_cfg, field):
    other = SecAggConfig(**{**cfg.to_params(), **server_cfg})
    req = SecAggServer(other, manifest, IDS).requests()[0]
    with pytest.raises(ConfigError, match=field):
        _fresh(cfg, manifest).handle(req)


def test_manifest_mismatch_refused(cfg, manifest):
    req = SecAggServer(cfg, Manifest.flat(manifest.size), IDS).requests()[0]
    with pytest.raises(ConfigError, match="manifest"):
        _fresh(cfg, manifest).handle(req)


def test_threshold_below_policy_refused(cfg, manifest):
    # A roster of 4 needs t > 8/3, i.e. 3; the server asks for 2.
    server, clients, _ = drive_to(STAGE_SHARE_KEYS, cfg, manifest, IDS)
    req = {**server.requests()[0], "threshold": 2}
    with pytest.raises(AbortError, match="threshold 2 .* below this platform's policy 3"):
        clients[0].handle(req)
    assert clients[0].stage == "aborted" and clients[0].state.sk_s == b""


def test_stricter_server_request_is_applied(cfg, manifest):
    # Honest twin: a server asking for a larger threshold fraction than the platform's is obeyed.
    strict = SecAggConfig(**{**cfg.to_params(), "threshold_fraction": 0.99})
    req = SecAggServer(strict, manifest, IDS).requests()[0]
    client = _fresh(cfg, manifest)
    client.handle(req)
    assert client.state.threshold_fraction == 0.99


def test_server_threshold_override_validated(cfg, manifest):
    with pytest.raises(ConfigError, match="`threshold`"):
        SecAggServer(cfg, manifest, IDS, threshold=2)
    assert SecAggServer(cfg, manifest, IDS, threshold=4).threshold == 4


def test_cohort_over_policy_refused(manifest):
    small = SecAggConfig(max_cohort=5)
    big = SecAggConfig(max_cohort=50)
    req = SecAggServer(big, manifest, range(8)).requests()[0]
    req = {**req, "max_cohort": 5}
    with pytest.raises(ConfigError, match="`max_cohort`"):
        client_for(0, small, manifest, IDS).handle(req)


def test_roster_bigger_than_cohort_refused(cfg, manifest):
    server, clients, _ = drive_to(STAGE_SHARE_KEYS, cfg, manifest, IDS)
    msg = dict(server.requests()[0])
    clients[0].state.cohort_size = 3  # the setup said 3, the roster lists 4
    with pytest.raises(AbortError, match="exceeds the cohort size"):
        clients[0].handle(msg)


def test_bad_input_aborts_client_before_any_mask(cfg, manifest):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    tensors, w = inputs[0]
    bad = {**tensors, "lora_A": np.full((4, 8), np.nan, np.float32)}
    with pytest.raises(InputError, match="non-finite"):
        clients[0].handle(server.requests()[0], bad, w)
    assert clients[0].stage == "aborted"
    with pytest.raises(InputError, match="needs the local tensors"):
        clients[1].handle(server.requests()[1])


# -- server side ---------------------------------------------------------------------
def test_server_rejects_duplicate_unknown_and_impostor_replies(cfg, manifest):
    server = SecAggServer(cfg, manifest, IDS)
    reqs = server.requests()
    replies = {n: _fresh(cfg, manifest, n).handle(reqs[n]) for n in IDS}
    server.receive(0, replies[0])
    with pytest.raises(ProtocolError, match="already answered"):
        server.receive(0, replies[0])
    with pytest.raises(ProtocolError, match="not asked"):
        server.receive(9, replies[1])
    with pytest.raises(ProtocolError, match="claims to be from node 2"):
        server.receive(1, replies[2])
    # node 1 is now treated as dropped for the stage; its genuine reply is refused.
    with pytest.raises(ProtocolError, match="already answered"):
        server.receive(1, replies[1])
    server.receive(2, replies[2])
    server.receive(3, replies[3])
    server.end_stage()
    assert server.dropped[STAGE_SETUP] == (1,)


def test_server_rejects_reused_public_key(cfg, manifest):
    server = SecAggServer(cfg, manifest, IDS)
    reqs = server.requests()
    r0 = _fresh(cfg, manifest, 0).handle(reqs[0])
    r1 = {**_fresh(cfg, manifest, 1).handle(reqs[1]), "pk_s": r0["pk_c"]}
    server.receive(0, r0)
    with pytest.raises(ProtocolError, match="reused a public key"):
        server.receive(1, r1)


def test_server_rejects_incomplete_share_keys_reply(cfg, manifest):
    server, clients, _ = drive_to(STAGE_SHARE_KEYS, cfg, manifest, IDS)
    reply = clients[0].handle(server.requests()[0])
    reply["receivers"], reply["ciphertexts"] = reply["receivers"][:-1], reply["ciphertexts"][:-1]
    with pytest.raises(ProtocolError, match="one share bundle per roster node"):
        server.receive(0, reply)


@pytest.mark.parametrize(
    "masked",
    [np.zeros(5, np.uint64), np.zeros(4 + 56, np.uint32), np.zeros((2, 30), np.uint64), np.zeros(60, np.int64)],
)
def test_server_rejects_malformed_masked_vector(cfg, manifest, masked):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    reply = clients[0].handle(server.requests()[0], *inputs[0])
    with pytest.raises(ProtocolError):
        server.receive(0, {**reply, "masked": masked})
    assert 0 not in server.awaiting  # counted as dropped, not awaited


def test_server_rejects_unmask_reply_for_wrong_nodes(cfg, manifest):
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    reply = clients[0].handle(server.requests()[0])
    reply["b_owners"], reply["b_shares"] = reply["b_owners"][:-1], reply["b_shares"][:-1]
    with pytest.raises(ProtocolError, match="wrong nodes"):
        server.receive(0, reply)


def test_client_state_roundtrip_bytes_and_record(cfg, manifest):
    server, clients, _ = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    st = clients[1].state
    assert ClientState.from_bytes(st.to_bytes()) == st
    assert ClientState.from_record(st.to_record()) == st
    with pytest.raises(ProtocolError):
        ClientState.from_bytes(st.to_bytes()[:-3])
    with pytest.raises(ProtocolError):
        ClientState.from_record({**st.to_record(), "stage": "bogus"})


def test_state_of_other_node_refused(cfg, manifest):
    st = ClientState(node_id=3)
    ok = _fresh(cfg, manifest, node=2)
    with pytest.raises(ProtocolError):
        SecAggClient(2, cfg, manifest, identity=ok.identity, roster=ok.roster, state=st)


def test_make_inputs_is_seeded():
    a, b = make_inputs([0, 1], seed=3), make_inputs([0, 1], seed=3)
    np.testing.assert_array_equal(a[1][0]["lora_A"], b[1][0]["lora_A"])


@pytest.mark.parametrize("key", [b"short", "x" * 32, None])
def test_bad_identity_keys_refused(key):
    with pytest.raises(ConfigError, match="identity key"):
        Identity("shop", key)  # type: ignore[arg-type]
