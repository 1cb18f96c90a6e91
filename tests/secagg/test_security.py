"""A deviating server or network: every attack is paired with its honest twin."""

from __future__ import annotations

import contextlib
import itertools
import os

import numpy as np
import pytest

from common.secagg import (
    STAGE_CONSISTENCY,
    STAGE_MASKED_INPUT,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    AbortError,
    ProtocolError,
    SecAggClient,
    crypto,
    run_round,
    shamir,
)
from common.secagg.messages import UnmaskReply, UnmaskRequest
from tests.secagg.helpers import drive_to, expected_sum, make_inputs

IDS = list(range(6))  # t = 5


def server_threshold(cfg):
    return cfg.threshold(len(IDS))


# -- unmask request checks -----------------------------------------------------------
def _unmask_req(server, node, **changes):
    msg = dict(server.requests()[node])
    msg.update(changes)
    return msg


def test_honest_unmask_request_answered(cfg, manifest):
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    reply = UnmaskReply.parse(clients[0].handle(_unmask_req(server, 0)))
    assert list(reply.b_owners) == IDS and list(reply.sk_owners) == []


@pytest.mark.parametrize(
    ("active", "dropped", "match"),
    [
        (IDS, [1], "both active and dropped"),  # asks for both shares of node 1
        ([1, 2, 3, 4, 5], [0], "this node as dropped"),
        ([1, 2, 3, 4, 5], [], "not list this node as active"),
        (IDS + [77], [], "unknown nodes"),
        ([0, 1, 2, 3, 4], [], "omits nodes"),
        ([0, 1, 2], [3, 4, 5], "below the threshold"),
    ],
)
def test_malicious_unmask_request_refused(cfg, manifest, active, dropped, match):
    # Prepare
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    bad = _unmask_req(server, 0, active=active, dropped=dropped)

    # Execute / Assert: refused, secrets wiped, the honest request is refused afterwards too
    with pytest.raises(AbortError, match=match):
        clients[0].handle(bad)
    assert clients[0].stage == "aborted" and clients[0].state.held_b == []
    with pytest.raises(ProtocolError):
        clients[0].handle(_unmask_req(server, 0))


def test_duplicate_ids_in_unmask_request_refused(cfg, manifest):
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    with pytest.raises(ProtocolError, match="duplicate"):
        clients[0].handle(_unmask_req(server, 0, active=[0, 0, 1, 2, 3, 4, 5]))


def _split_view_shares(cfg, manifest, told_dropped, colluders=()):
    """Play a server that tells ``told_dropped`` "1 dropped" and the rest "1 active" at the
    consistency check, forges colluders' signatures on both views, then asks every node to
    unmask with the signatures collected on its own view. Returns the shares of node 1 it got.
    """
    server, clients, _ = drive_to(STAGE_CONSISTENCY, cfg, manifest, IDS)
    reqs = server.requests()
    views = {True: ([a for a in IDS if a != 1], [1]), False: (IDS, [])}  # told_dropped -> (active, dropped)
    sigs: dict[bool, dict[int, bytes]] = {True: {}, False: {}}
    for n in IDS:
        view = n in told_dropped
        active, dropped = views[view]
        with contextlib.suppress(AbortError):  # node 1 refuses to be called dropped
            sigs[view][n] = clients[n].handle({**reqs[n], "active": active, "dropped": dropped})["signature"]
    for c in colluders:  # a colluding platform signs whatever the server wants
        st = clients[c].state
        for view, (active, _) in views.items():
            statement = crypto.consistency_statement(st.session, st.round, st.roster_hash, st.holders, active)
            sigs[view][c] = clients[c].identity.sign(statement)
    b_shares, sk_shares = 0, 0
    for n in IDS:
        if n in colluders or n not in sigs[n in told_dropped]:
            continue
        view = n in told_dropped
        active, dropped = views[view]
        signers = sorted(sigs[view])
        req = UnmaskRequest(server.session, server.round, n, active, dropped, signers,
                            [sigs[view][v] for v in signers]).to_message()  # fmt: skip
        try:
            reply = UnmaskReply.parse(clients[n].handle(req))
        except AbortError:
            continue
        b_shares += 1 in reply.b_owners
        sk_shares += 1 in reply.sk_owners
    return b_shares + len([c for c in colluders if c != 1]), sk_shares + len(colluders), server.threshold


@pytest.mark.parametrize("colluders", [(), (4,)])
def test_split_view_attack_cannot_collect_both_shares(cfg, manifest, colluders):
    """Tell some nodes "1 dropped" (-> s_sk shares) and others "1 active" (-> b shares).

    Fails on main 2fd0f8a: clients there answered any unmask request with t-1 senders, so a
    split handed the server t shares of both of node 1's secrets. Now every node reveals only
    after t roster signatures on the very statement it signed, so over every split, and with a
    colluding platform that signs both views (k = 1 < 2t - n = 4), one side stays below t.
    """
    others = [n for n in IDS if n not in (1, *colluders)]
    for k in range(len(others) + 1):
        for told_dropped in itertools.combinations(others, k):
            b_shares, sk_shares, t = _split_view_shares(cfg, manifest, set(told_dropped), colluders)
            assert b_shares < t or sk_shares < t, (told_dropped, b_shares, sk_shares)


def test_unmask_needs_t_signatures_on_the_signed_set(cfg, manifest):
    """On main 2fd0f8a there was no consistency check: any well-formed unmask request was answered."""
    # Honest twin first: the server's own unmask request (t signatures) is answered ...
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    good = server.requests()[0]
    # ... but with one signature fewer than t, or a forged one, nothing is revealed.
    short = {**good, "signers": good["signers"][: server.threshold - 1],
             "signatures": good["signatures"][: server.threshold - 1]}  # fmt: skip
    with pytest.raises(AbortError, match="below the threshold"):
        clients[0].handle(short)
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    good = server.requests()[0]
    forged = {**good, "signatures": [bytes(64)] + list(good["signatures"][1:])}
    with pytest.raises(AbortError, match="does not verify"):
        clients[0].handle(forged)
    assert clients[0].state.held_b == []
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    assert UnmaskReply.parse(clients[0].handle(server.requests()[0])).b_owners == tuple(IDS)


# -- roster tampering ----------------------------------------------------------------
def _swap_key(field, victim, target):
    def intercept(direction, stage, node, msg):
        if direction == "down" and stage == STAGE_SHARE_KEYS and node == victim:
            msg = dict(msg)
            keys = list(msg[field])
            keys[msg["node_ids"].index(target)] = crypto.generate_keypair()[1]
            msg[field] = keys
        return msg

    return intercept


@pytest.mark.parametrize("field", ["pk_c", "pk_s"])
def test_swapped_public_key_rejected(cfg, manifest, field):
    # Server shows node 0 a roster where node 1's key is the server's own.
    # The signature on node 1's keys no longer verifies: node 0 refuses before sharing anything,
    # and the round goes on without it (or aborts); node 0's input is never in a sum.
    run = run_round(cfg, manifest, IDS, make_inputs(IDS), intercept=_swap_key(field, 0, 1))
    assert "signature of platform `platform-1` does not verify" in run.client_errors[0]
    assert run.result is None or 0 not in run.result.survivors


def test_unswapped_roster_accepted(cfg, manifest):
    # Negative twin: the same interception hook, leaving the roster as is.
    run = run_round(cfg, manifest, IDS, make_inputs(IDS), intercept=lambda d, s, n, m: m)
    assert run.result is not None and run.client_errors == {}


def test_roster_with_wrong_own_key_rejected(cfg, manifest):
    run = run_round(cfg, manifest, IDS, make_inputs(IDS), intercept=_swap_key("pk_c", 2, 2))
    assert "wrong keys or name for this node" in run.client_errors[2]


def test_roster_repeating_a_key_rejected(cfg, manifest):
    def intercept(direction, stage, node, msg):
        if direction == "down" and stage == STAGE_SHARE_KEYS:
            msg = dict(msg)
            keys = list(msg["pk_s"])
            keys[3] = keys[4]
            msg["pk_s"] = keys
        return msg

    run = run_round(cfg, manifest, IDS, make_inputs(IDS), intercept=intercept)
    assert run.result is None and "repeats a public key" in run.client_errors[0]


# -- share ciphertexts ---------------------------------------------------------------
def _masked_req(server, node, senders, cts):
    msg = dict(server.requests()[node])
    msg["senders"], msg["ciphertexts"] = senders, cts
    return msg


def test_genuine_share_bundles_accepted(cfg, manifest):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    reply = clients[0].handle(server.requests()[0], *inputs[0])
    assert reply["masked"].dtype == np.uint64


def _attack_bundles(server, mutate):
    req = server.requests()[0]
    senders, cts = list(req["senders"]), list(req["ciphertexts"])
    return mutate(senders, cts)


@pytest.mark.parametrize("position", [0, 11, 12, 50, 159, 175])
def test_bit_flipped_share_rejected(cfg, manifest, position):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)

    def flip(senders, cts):
        ct = bytearray(cts[0])
        ct[position] ^= 0x01
        cts[0] = bytes(ct)
        return senders, cts

    msg = _masked_req(server, 0, *_attack_bundles(server, flip))
    with pytest.raises(AbortError, match="failed authentication"):
        clients[0].handle(msg, *inputs[0])


def test_bundle_redirected_to_another_receiver_rejected(cfg, manifest):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    for_node2 = server.requests()[2]
    from_1_to_2 = for_node2["ciphertexts"][for_node2["senders"].index(1)]

    def redirect(senders, cts):
        cts[senders.index(1)] = from_1_to_2
        return senders, cts

    msg = _masked_req(server, 0, *_attack_bundles(server, redirect))
    with pytest.raises(AbortError, match="failed authentication"):
        clients[0].handle(msg, *inputs[0])


def test_bundle_relabelled_as_other_sender_rejected(cfg, manifest):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)

    def relabel(senders, cts):
        i, j = senders.index(1), senders.index(3)
        cts[i], cts[j] = cts[j], cts[i]
        return senders, cts

    msg = _masked_req(server, 0, *_attack_bundles(server, relabel))
    with pytest.raises(AbortError, match="failed authentication"):
        clients[0].handle(msg, *inputs[0])


def test_bundle_replayed_from_previous_round_rejected(cfg, manifest):
    # Prepare: round 1 bundles from node 1 to node 0, same session and same keys would
    # not even exist (keys are fresh); replay the old ciphertext into round 2.
    old_server, _, _ = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS, rnd=1)
    old_req = old_server.requests()[0]
    old_ct = old_req["ciphertexts"][old_req["senders"].index(1)]
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS, rnd=2)

    def replay(senders, cts):
        cts[senders.index(1)] = old_ct
        return senders, cts

    msg = _masked_req(server, 0, *_attack_bundles(server, replay))
    with pytest.raises(AbortError, match="failed authentication"):
        clients[0].handle(msg, *inputs[0])


def test_bundle_from_unknown_or_self_sender_rejected(cfg, manifest):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    req = server.requests()[0]
    msg = _masked_req(server, 0, [0] + req["senders"][1:], req["ciphertexts"])
    with pytest.raises(AbortError, match="unexpected node 0"):
        clients[0].handle(msg, *inputs[0])


def test_too_few_bundles_refused(cfg, manifest):
    server, clients, inputs = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    req = server.requests()[0]
    msg = _masked_req(server, 0, req["senders"][:2], req["ciphertexts"][:2])
    with pytest.raises(AbortError, match="threshold"):
        clients[0].handle(msg, *inputs[0])


def _enc_args():
    sk_a, pk_a = crypto.generate_keypair()
    sk_b, pk_b = crypto.generate_keypair()
    return sk_a, pk_a, sk_b, pk_b


def test_aead_roundtrip():
    sk_a, pk_a, sk_b, pk_b = _enc_args()
    roster = os.urandom(32)
    ct = crypto.encrypt_shares(sk_a, pk_b, b"s" * 16, 3, 1, 2, roster, b"hello")
    assert crypto.decrypt_shares(sk_b, pk_a, b"s" * 16, 3, 1, 2, roster, ct) == b"hello"


@pytest.mark.parametrize(
    "change",
    [
        {"session": b"t" * 16},
        {"rnd": 4},
        {"sender": 9},
        {"receiver": 9},
        {"roster": b"\x00" * 32},
        {"wrong_key": True},
    ],
)
def test_aead_binds_every_context_field(change):
    # Negative twin of the round trip: any change of key or bound context fails.
    sk_a, pk_a, sk_b, pk_b = _enc_args()
    roster = os.urandom(32)
    ct = crypto.encrypt_shares(sk_a, pk_b, b"s" * 16, 3, 1, 2, roster, b"hello")
    args = {"session": b"s" * 16, "rnd": 3, "sender": 1, "receiver": 2, "roster": roster}
    args.update({k: v for k, v in change.items() if k != "wrong_key"})
    peer = crypto.generate_keypair()[1] if change.get("wrong_key") else pk_a
    with pytest.raises(AbortError):
        crypto.decrypt_shares(
            sk_b, peer, args["session"], args["rnd"], args["sender"], args["receiver"], args["roster"], ct
        )


def test_low_order_public_key_rejected():
    sk, _ = crypto.generate_keypair()
    with pytest.raises(AbortError):
        crypto.dh(sk, bytes(32))


# -- a client sending bad shares -----------------------------------------------------
def _finish_with_bad_share(cfg, manifest, responders):
    server, clients, inputs = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    reqs = server.requests()
    for n in responders:
        reply = clients[n].handle(reqs[n])
        if n == responders[0]:  # a lying node corrupts its share of node 2's b
            b = list(reply["b_shares"])
            b[2] = shamir.share_to_bytes((shamir.share_from_bytes(b[2]) + 1) % shamir.PRIME)
            reply["b_shares"] = b
        server.receive(n, reply)
    return server, inputs


def test_bad_share_detected_and_bypassed_with_spare_responders(cfg, manifest):
    server, inputs = _finish_with_bad_share(cfg, manifest, IDS)
    server.end_stage()
    exp = expected_sum(inputs, IDS, cfg, manifest)
    np.testing.assert_array_equal(server.result().weighted_sum, exp.weighted_sum)


def test_bad_share_with_exactly_t_responders_aborts(cfg, manifest):
    # Negative twin: no spare shares, so the commitment check fails and the round aborts
    # rather than output a wrong sum.
    server, _ = _finish_with_bad_share(cfg, manifest, IDS[: server_threshold(cfg)])
    with pytest.raises(AbortError, match="could not reconstruct b of node 2"):
        server.end_stage()
    assert server.aborted


def test_client_reveals_nothing_for_round_it_did_not_mask(cfg, manifest):
    # A node that dropped before masking holds shares but is never asked; if asked
    # anyway (out of order), it refuses.
    server, clients, _ = drive_to(STAGE_MASKED_INPUT, cfg, manifest, IDS)
    fake = {
        "secagg": "crossfed-secagg/1",
        "stage": "unmask",
        "session": server.session,
        "round": server.round,
        "node_id": 0,
        "active": IDS,
        "dropped": [],
    }
    with pytest.raises(ProtocolError, match="unexpected 'unmask'"):
        clients[0].handle(fake)


def test_fresh_client_from_bytes_refuses_to_skip_stages(cfg, manifest):
    server, clients, _ = drive_to(STAGE_UNMASK, cfg, manifest, IDS)
    old = clients[0]
    restored = SecAggClient.from_state_bytes(old.state_bytes(), cfg, manifest, identity=old.identity, roster=old.roster)
    reply = restored.handle(_unmask_req(server, 0))
    assert reply["stage"] == "unmask"
    with pytest.raises(ProtocolError):
        restored.handle(_unmask_req(server, 0))  # repeated
