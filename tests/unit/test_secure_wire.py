"""The Flower wiring of secure aggregation, without Ray: records, client state, policy."""

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from clients import secure
from common.config import AppConfig
from common.payload import ARRAYS, CONFIG, config_record, state_to_arrays
from common.secagg import Manifest, ProtocolError, SecAggServer
from common.secure_wire import (
    EVAL_SUM,
    SECAGG,
    from_records,
    has_sum,
    merge_records,
    round_context,
    secagg_config,
    sum_error,
    sum_error_of,
    to_records,
)

CFG = AppConfig().replace(secagg=True)


def _updates(ids: list[int], seed: int = 0) -> dict[int, OrderedDict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        n: OrderedDict(
            a=rng.uniform(-0.5, 0.5, (4, 3)).astype(np.float32), b=rng.uniform(-0.5, 0.5, 5).astype(np.float32)
        )
        for n in ids
    }


def test_records_round_trip_with_arrays() -> None:
    msg = {"stage": "x", "node_id": 2**64 - 5, "blobs": [b"a", b"bc"], "masked": np.arange(6, dtype=np.uint64)}
    back = from_records(RecordDict(to_records(msg)))
    assert back["node_id"] == 2**64 - 5 and back["blobs"] == [b"a", b"bc"]
    np.testing.assert_array_equal(back["masked"], msg["masked"])


def test_two_sums_share_one_message_in_the_same_two_records() -> None:
    # Prepare: a training sum's message and a metric sum's, each with a masked vector of the same field name
    train = {"stage": "masked_input", "node_id": 7, "masked": np.arange(6, dtype=np.uint64)}
    metrics = {"stage": "masked_input", "node_id": 7, "masked": np.arange(3, dtype=np.uint64) + 100}
    # Execute
    content = RecordDict(to_records(train))
    merge_records(content, to_records(metrics, EVAL_SUM))
    # Assert: one record, masked vectors inside (each record is one object to fetch), and each sum reads
    # back its own message only
    assert set(content) == {SECAGG} and has_sum(content) and has_sum(content, EVAL_SUM)
    np.testing.assert_array_equal(from_records(content)["masked"], train["masked"])
    np.testing.assert_array_equal(from_records(content, EVAL_SUM)["masked"], metrics["masked"])
    assert sum_error_of(content) is None
    # ... and a platform that leaves the metric sum keeps the training sum's message intact
    alone = RecordDict(to_records(train))
    merge_records(alone, sum_error("ConfigError: did not train in round 5"))
    assert sum_error_of(alone) == "ConfigError: did not train in round 5" and not has_sum(alone, EVAL_SUM)
    np.testing.assert_array_equal(from_records(alone)["masked"], train["masked"])
    with pytest.raises(ProtocolError, match="no secure-aggregation record"):
        from_records(alone, EVAL_SUM)


def test_missing_or_foreign_record_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no secure-aggregation record"):
        from_records(RecordDict({}))
    with pytest.raises(ProtocolError):
        from_records(RecordDict({SECAGG: ConfigRecord({"msg": b"not a record"})}))


def _run_secure_round(ids, updates, weights, contexts, server, content_for=None, records=None):
    """Drive ``server`` through the ClientApp-side functions; ``content_for`` may rewrite a node's train content."""
    names = dict(zip(ids, ["app", "social_shop", "web_shop"], strict=True))  # the embedded dataset's platforms
    first = True
    while not server.finished:
        for node, request in server.requests().items():
            content = RecordDict(to_records(request))
            if first:
                content[ARRAYS], content[CONFIG] = state_to_arrays(GLOBAL), config_record(CFG, 1)
                if content_for is not None:
                    content = content_for(node, content)
                record = None if records is None else records[node]
                out = secure.start(content, contexts[node], CFG, updates[node], weights[node], names[node], record)
            else:
                out = secure.advance(content, contexts[node], CFG)
            assert set(out) == {SECAGG}  # nothing else leaves: no count, metric or adapter
            packed = bytes(out[SECAGG]["msg"])
            assert updates[node]["a"].tobytes()[:8] not in packed
            server.receive(node, from_records(RecordDict(out)))
        server.end_stage()
        first = False
    return server.result()


GLOBAL = OrderedDict(a=np.zeros((4, 3), np.float32), b=np.ones(5, np.float32))


def test_three_platforms_through_flower_records_give_the_weighted_mean() -> None:
    # Prepare: three platforms with their own Context (state survives between stages there only)
    ids = [11, 2**63 + 7, 2**40 + 3]
    updates, weights = _updates(ids), {ids[0]: 50, ids[1]: 10, ids[2]: 140}
    contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": i}, state=RecordDict(), run_config={})
                for i, n in enumerate(ids)}  # fmt: skip
    manifest = Manifest.from_arrays(updates[ids[0]])
    context = round_context(state_to_arrays(GLOBAL), config_record(CFG, 1))
    server = SecAggServer(secagg_config(CFG), manifest, ids, round=1, context=context)
    # Execute: every stage's request and reply go through Flower records
    result = _run_secure_round(ids, updates, weights, contexts, server)
    mean, bound = result.weighted_mean()
    # Assert
    expected = np.average(
        np.stack([manifest.flatten(updates[n], np.float64) for n in ids]), axis=0, weights=[weights[n] for n in ids]
    )
    np.testing.assert_allclose(mean, expected, rtol=0, atol=bound)
    assert result.total_weight == 200
    assert all(secure.STATE not in c.state and secure.UPDATE not in c.state for c in contexts.values())


def test_advance_without_a_trained_update_is_refused() -> None:
    ctx = Context(run_id=1, node_id=3, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="without a trained update"):
        secure.advance(RecordDict(), ctx, CFG)


@pytest.mark.parametrize(
    "node_config,requires,shares",
    [
        ({"partition-id": 0}, False, True),  # local simulation: plain allowed, metrics shared
        ({"platform": "web", "data-dir": "/d"}, True, False),  # deployed: secure only, metrics private
        ({"platform": "web", "require-secagg": False, "share-metrics": True}, False, True),  # explicit opt-outs
    ],
)
def test_platform_policy_defaults(node_config: dict, requires: bool, shares: bool) -> None:
    assert secure.requires_secagg(node_config) is requires
    assert secure.shares_metrics(node_config) is shares


@pytest.mark.parametrize(("cohort", "threshold"), [(3, 3), (4, 3), (5, 4), (10, 7), (30, 21)])
def test_default_threshold_is_strictly_above_two_thirds(cohort: int, threshold: int) -> None:
    # Execute / Assert: the app's defaults, not the protocol's, are what a federation runs with
    assert secagg_config(CFG).threshold(cohort) == threshold
