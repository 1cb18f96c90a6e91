"""Whole rounds: exact sums, weighted means, the dropout matrix, aborts, stalls, restarts."""

from __future__ import annotations

import numpy as np
import pytest

from common.secagg import (
    STAGE_CONSISTENCY,
    STAGE_MASKED_INPUT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    STAGES,
    AbortError,
    ConfigError,
    Identity,
    Manifest,
    PlatformPolicy,
    ProtocolError,
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    make_clients,
    run_round,
)
from tests.secagg.helpers import expected_sum, flat, make_inputs

N = 7  # t = floor(2 * 7 / 3) + 1 = 5: two dropouts after setup (setup drops lower t)


def test_exact_modular_sum_no_drops(cfg, manifest):
    # Prepare
    ids = [5, 17, 2**64 - 2, 40, 41, 99]
    inputs = make_inputs(ids, seed=1)

    # Execute
    run = run_round(cfg, manifest, ids, inputs)

    # Assert: bit-identical to the plain modular sum of the encodings
    res = run.result
    assert res is not None and run.abort_reason == ""
    exp = expected_sum(inputs, ids, cfg, manifest)
    np.testing.assert_array_equal(res.weighted_sum, exp.weighted_sum)
    assert res.total_weight == exp.total_weight == sum(w for _, w in inputs.values())
    assert res.survivors == tuple(sorted(ids))


def test_weighted_mean_matches_np_average(cfg, manifest):
    ids = list(range(N))
    inputs = make_inputs(ids, seed=2)
    res = run_round(cfg, manifest, ids, inputs).result
    mean, bound = res.weighted_mean()
    xs = np.stack([flat(t) for t, _ in inputs.values()])
    ws = [w for _, w in inputs.values()]
    assert np.max(np.abs(mean - np.average(xs, axis=0, weights=ws))) <= bound
    assert res.total_weight == sum(ws)
    tensors = manifest.unflatten(mean)
    assert tensors["lora_B"].shape == (8, 3)


def test_modulus_32(manifest):
    cfg = SecAggConfig(modulus_bits=32, quant_bits=12, max_weight=1000, max_cohort=64)
    ids = list(range(4))
    inputs = make_inputs(ids, seed=3)
    res = run_round(cfg, manifest, ids, inputs).result
    exp = expected_sum(inputs, ids, cfg, manifest)
    np.testing.assert_array_equal(res.weighted_sum, exp.weighted_sum)


def _drop_cases():
    t = SecAggConfig().threshold(N)
    for stage in STAGES:
        # Before setup closes, t is not fixed: any drop leaving min_cohort (3) platforms is fine.
        for k in range(0, (N - 3 if stage == STAGE_SETUP else N - t) + 1):
            yield stage, k


@pytest.mark.parametrize(("stage", "k"), list(_drop_cases()))
def test_drop_matrix_exact_survivor_sum(cfg, manifest, stage, k):
    # Prepare: drop the k highest ids at ``stage``
    ids = list(range(N))
    inputs = make_inputs(ids, seed=10 + k)
    dropped = ids[N - k :]

    # Execute
    run = run_round(cfg, manifest, ids, inputs, drops={stage: dropped}, restart_clients=True)

    # Assert: nodes lost before their masked input are out; at unmask they are in
    res = run.result
    assert res is not None, run.abort_reason
    survivors = ids if stage in (STAGE_CONSISTENCY, STAGE_UNMASK) else ids[: N - k]
    assert list(res.survivors) == survivors
    exp = expected_sum(inputs, survivors, cfg, manifest)
    np.testing.assert_array_equal(res.weighted_sum, exp.weighted_sum)
    assert res.total_weight == exp.total_weight
    assert res.dropped[stage] == tuple(dropped)


def test_drops_spread_over_stages(cfg, manifest):
    ids = list(range(N))
    inputs = make_inputs(ids, seed=4)
    drops = {STAGE_SHARE_KEYS: [0], STAGE_UNMASK: [3]}
    res = run_round(cfg, manifest, ids, inputs, drops=drops).result
    assert list(res.survivors) == [1, 2, 3, 4, 5, 6]
    exp = expected_sum(inputs, [1, 2, 3, 4, 5, 6], cfg, manifest)
    np.testing.assert_array_equal(res.weighted_sum, exp.weighted_sum)


@pytest.mark.parametrize("stage", STAGES)
def test_too_many_drops_abort_cleanly(cfg, manifest, stage):
    # Prepare: n - t + 1 = 3 drops (at setup: n - min_cohort + 1 = 5)
    ids = list(range(N))
    inputs = make_inputs(ids, seed=5)
    dropped = [0, 1, 2, 3, 4] if stage == STAGE_SETUP else [0, 1, 2]

    # Execute
    run = run_round(cfg, manifest, ids, inputs, drops={stage: dropped}, record=True)

    # Assert: no output, and no node revealed any share unless unmask was reached
    assert run.result is None and run.server.aborted
    assert ("need 3" if stage == STAGE_SETUP else "need 5") in run.abort_reason
    with pytest.raises(ProtocolError, match="no result"):
        run.server.result()
    unmask_replies = [m for d, s, _, m in run.transcript if d == "up" and s == STAGE_UNMASK]
    if stage != STAGE_UNMASK:
        assert unmask_replies == []
    else:
        assert len(unmask_replies) < run.server.threshold  # t - 1 shares reveal nothing


def test_cumulative_drops_over_limit_abort(cfg, manifest):
    ids = list(range(N))
    run = run_round(
        cfg, manifest, ids, make_inputs(ids), drops={STAGE_SETUP: [0], STAGE_SHARE_KEYS: [1], STAGE_MASKED_INPUT: [2]}
    )
    assert run.result is None and "masked_input" in run.abort_reason


def test_below_min_cohort_refused(manifest):
    cfg = SecAggConfig(min_cohort=5)
    with pytest.raises(Exception, match="min_cohort"):
        SecAggServer(cfg, manifest, range(4))
    # Setup survivors below min_cohort abort even if >= t.
    run = run_round(cfg, manifest, range(6), make_inputs(range(6)), drops={STAGE_SETUP: [0, 1]})
    assert run.result is None and "need 5" in run.abort_reason


def test_stalled_node_is_a_drop_and_its_late_reply_is_rejected(cfg, manifest):
    # Prepare: drive the server by hand; node 2 gets the masked_input request but is slow.
    ids = list(range(N))
    inputs = make_inputs(ids, seed=6)
    server = SecAggServer(cfg, manifest, ids, round=3)
    clients = make_clients(cfg, manifest, ids)
    for _ in range(2):  # setup, share_keys
        server.step({n: clients[n].handle(m) for n, m in server.requests().items()})
    reqs = server.requests()
    late = clients[2].handle(reqs[2], *inputs[2])

    # Execute: everyone else answers, the transport times out on node 2
    for n in ids:
        if n != 2:
            server.receive(n, clients[n].handle(reqs[n], *inputs[n]))
    assert server.awaiting == (2,)
    server.end_stage(no_reply=[2])

    # Assert: the late reply is refused, the round completes without node 2
    with pytest.raises(ProtocolError):
        server.receive(2, late)
    replies = {n: clients[n].handle(m) for n, m in server.requests().items()}
    assert 2 not in replies
    server.step(replies)  # consistency
    server.step({n: clients[n].handle(m) for n, m in server.requests().items()})  # unmask
    res = server.result()
    assert 2 not in res.survivors and res.dropped[STAGE_MASKED_INPUT] == (2,)
    exp = expected_sum(inputs, [0, 1, 3, 4, 5, 6], cfg, manifest)
    np.testing.assert_array_equal(res.weighted_sum, exp.weighted_sum)


def test_end_stage_rejects_silent_list_naming_a_replier(cfg, manifest):
    ids = list(range(4))
    server = SecAggServer(cfg, manifest, ids)
    client = make_clients(cfg, manifest, ids)[0]
    server.receive(0, client.handle(server.requests()[0]))
    with pytest.raises(ProtocolError, match="did reply"):
        server.end_stage(no_reply=[0])


def test_multi_round_with_persistent_clients(cfg, manifest):
    ids = list(range(4))
    clients = make_clients(cfg, manifest, ids)
    session = b"s" * 16
    for rnd in range(3):
        inputs = make_inputs(ids, seed=rnd)
        run = run_round(cfg, manifest, ids, inputs, clients=clients, session=session, round=rnd)
        exp = expected_sum(inputs, ids, cfg, manifest)
        np.testing.assert_array_equal(run.result.weighted_sum, exp.weighted_sum)
        clients = run.clients


def _federation(cfg, manifest, ids, rogue=None):
    """Clients with fresh random identities; ``rogue`` signs with a key the roster does not list."""
    identities = {n: Identity.generate(f"shop-{n}") for n in ids}
    roster = Roster.of(identities.values())
    policy = PlatformPolicy(min_cohort=cfg.min_cohort)
    clients = {n: SecAggClient(n, cfg, manifest, identity=identities[n], roster=roster, policy=policy) for n in ids}
    if rogue is not None:  # the rogue key is only swapped in after construction checked the roster
        clients[rogue].identity = Identity.generate(f"shop-{rogue}")
    return clients


def test_identity_signatures_accepted(cfg, manifest):
    ids = list(range(4))
    run = run_round(cfg, manifest, ids, make_inputs(ids), clients=_federation(cfg, manifest, ids),
                    restart_clients=True)  # fmt: skip
    assert run.result is not None, run.client_errors


def test_identity_signatures_forged_key_rejected(cfg, manifest):
    # Negative twin: node 3 signs with a key that is not the registered one.
    ids = list(range(4))
    run = run_round(cfg, manifest, ids, make_inputs(ids), clients=_federation(cfg, manifest, ids, rogue=3))
    assert run.result is None
    assert all("signature of platform `shop-3` does not verify" in run.client_errors[n] for n in (0, 1, 2))


def test_client_refuses_a_roster_without_its_own_identity(cfg, manifest):
    me, other = Identity.generate("a"), Identity.generate("b")
    with pytest.raises(ConfigError, match="does not list platform `a`"):
        SecAggClient(0, cfg, manifest, identity=me, roster=Roster.of([other]))
    with pytest.raises(ConfigError, match="identity"):
        SecAggClient(0, cfg, manifest, identity=None, roster=Roster.of([other]))  # type: ignore[arg-type]


def test_server_step_api(cfg, manifest):
    ids = list(range(4))
    inputs = make_inputs(ids, seed=8)
    server = SecAggServer(cfg, manifest, ids)
    clients = make_clients(cfg, manifest, ids)
    reqs = server.requests()
    while reqs:
        reqs = server.step({n: clients[n].handle(m, *inputs[n]) for n, m in reqs.items()})
    assert server.finished and not server.aborted
    with pytest.raises(ProtocolError):
        server.end_stage()


def test_abort_raises_abort_error(cfg, manifest):
    server = SecAggServer(cfg, manifest, range(4))
    with pytest.raises(AbortError):
        server.end_stage()
    assert server.aborted
    with pytest.raises(ProtocolError):
        server.requests()


def test_large_flat_vector_round():
    cfg = SecAggConfig()
    man = Manifest.flat(50_000)
    rng = np.random.default_rng(0)
    inputs = {n: ({"vector": rng.standard_normal(50_000).astype(np.float32)}, 10 + n) for n in range(3)}
    res = run_round(cfg, man, range(3), inputs).result
    exp = sum((10 + n) * np.clip(inputs[n][0]["vector"].astype(np.float64), -1, 1) for n in range(3))
    assert np.max(np.abs(res.weighted_sum - exp)) <= res.sum_error_bound
    assert res.clipped_values == sum(int(np.sum(np.abs(inputs[n][0]["vector"]) > 1)) for n in range(3))
