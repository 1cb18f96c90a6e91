"""The platform's side of secure aggregation, between Flower messages.

Round r: the ``train`` message carries the global adapter and the protocol's setup
request; the platform trains, keeps its update in ``context.state`` (it never leaves
in the clear) and answers with its public keys. The ``train.secagg`` messages that
follow carry the remaining stages; the protocol state (secrets included) is kept in
``context.state`` between them, because the ClientApp process may not survive.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from common.config import AppConfig
from common.secagg import STAGE_MASKED_INPUT, STAGE_UNMASK, Manifest, SecAggClient, stage_of
from common.secure_wire import from_records, secagg_config, to_records

STATE = "secagg-state"  # context.state ConfigRecord: {"client": bytes, "weight": int}
UPDATE = "secagg-update"  # context.state ArrayRecord: the trained adapter + head awaiting masking

REQUIRE_KEY = "require-secagg"  # node_config: refuse rounds in the clear (default: on outside simulation)
SHARE_METRICS_KEY = "share-metrics"  # node_config: send per-platform evaluation metrics under secagg


def requires_secagg(node_config: Mapping[str, object]) -> bool:
    """Deployed platforms (no simulation ``partition-id``) only train under secure aggregation."""
    return bool(node_config.get(REQUIRE_KEY, "partition-id" not in node_config))


def shares_metrics(node_config: Mapping[str, object]) -> bool:
    """Under secure aggregation, per-platform metrics leave only when the platform opts in."""
    return bool(node_config.get(SHARE_METRICS_KEY, "partition-id" in node_config))


def start(
    msg_content: RecordDict, context: Context, cfg: AppConfig, update: Mapping[str, np.ndarray], weight: int
) -> dict[str, ConfigRecord | ArrayRecord]:
    """After local training: park the update, answer the setup stage."""
    client = SecAggClient(context.node_id, secagg_config(cfg), Manifest.from_arrays(update))
    reply = client.handle(from_records(msg_content))
    context.state[UPDATE] = ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in update.items()))
    context.state[STATE] = ConfigRecord({"client": client.state_bytes(), "weight": int(weight)})
    return to_records(reply)


def advance(msg_content: RecordDict, context: Context, cfg: AppConfig) -> dict[str, ConfigRecord | ArrayRecord]:
    """One later stage (share keys, masked input, unmask); the parked update is masked, never sent."""
    saved, parked = context.state.get(STATE), context.state.get(UPDATE)
    if not isinstance(saved, ConfigRecord) or not isinstance(parked, ArrayRecord):
        raise ValueError("secure-aggregation stage without a trained update on this platform (was it restarted?)")
    update = OrderedDict((k, a.numpy()) for k, a in parked.items())
    client = SecAggClient.from_state_bytes(saved["client"], secagg_config(cfg), Manifest.from_arrays(update))
    request = from_records(msg_content)
    stage = stage_of(request)
    if stage == STAGE_MASKED_INPUT:
        reply = client.handle(request, update, int(saved["weight"]))
    else:
        reply = client.handle(request)
    if stage == STAGE_UNMASK:  # the round is over for this platform: forget secrets and update
        del context.state[STATE], context.state[UPDATE]
    else:
        context.state[STATE] = ConfigRecord({"client": client.state_bytes(), "weight": saved["weight"]})
    return to_records(reply)
