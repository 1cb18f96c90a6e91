"""Every message survives Flower's own ConfigRecord/ArrayRecord protobuf serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from common.secagg import ClientState, SecAggConfig, join_arrays, run_round, split_arrays
from tests.secagg.helpers import expected_sum, make_inputs, tiny_manifest

flwr_app = pytest.importorskip("flwr.app")
serde = pytest.importorskip("flwr.common.serde")


def _through_flower(msg):
    scalars, arrays = split_arrays(msg)
    cfg_rec = serde.config_record_from_proto(serde.config_record_to_proto(flwr_app.ConfigRecord(scalars)))
    arr_rec = serde.array_record_from_proto(
        serde.array_record_to_proto(flwr_app.ArrayRecord({k: flwr_app.Array(v) for k, v in arrays.items()}))
    )
    return join_arrays(dict(cfg_rec), {k: arr_rec[k].numpy() for k in arr_rec})


def test_round_with_every_message_through_flower_serde():
    # Prepare
    cfg, man, ids = SecAggConfig(), tiny_manifest(), [3, 2**63 + 5, 2**64 - 1, 12]
    inputs = make_inputs(ids, seed=9)

    # Execute: both directions go through protobuf, clients restart from state bytes
    run = run_round(
        cfg,
        man,
        ids,
        inputs,
        drops={"unmask": [12]},
        restart_clients=True,
        intercept=lambda d, s, n, m: _through_flower(m),
    )

    # Assert
    assert run.result is not None, (run.client_errors, run.server_rejections, run.abort_reason)
    exp = expected_sum(inputs, ids, cfg, man)
    np.testing.assert_array_equal(run.result.weighted_sum, exp.weighted_sum)


def test_client_state_record_through_flower_serde():
    cfg, man, ids = SecAggConfig(), tiny_manifest(), [1, 2, 3]
    run = run_round(cfg, man, ids, make_inputs(ids), drops={"unmask": [1]})
    st = run.clients[1].state  # stalled at unmask: holds shares
    rec = flwr_app.ConfigRecord(st.to_record())
    back = serde.config_record_from_proto(serde.config_record_to_proto(rec))
    assert ClientState.from_record(dict(back)) == st
    blob = flwr_app.ConfigRecord({"secagg": st.to_bytes()})
    assert (
        ClientState.from_bytes(dict(serde.config_record_from_proto(serde.config_record_to_proto(blob)))["secagg"]) == st
    )
