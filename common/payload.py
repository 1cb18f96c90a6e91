"""What travels between ServerApp and ClientApp: named float32 tensors and flat config.

Only adapter + head tensors are ever packed here; user data and the base model never are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from common.config import AppConfig
from common.tensor_layout import TensorLayout

ARRAYS = "arrays"  # RecordDict key of the adapter + head tensors
CONFIG = "config"  # RecordDict key of the flat run config (+ round)
METRICS = "metrics"  # RecordDict key of a reply's metrics
INFO = "info"  # RecordDict key of a reply's non-numeric facts (platform name)
INFO_PLATFORM = "platform"  # INFO: which platform answered
# INFO, under secure aggregation: the smallest cohort this platform accepts (its `secagg-min-cohort`, or the
# run's `secure.min-cohort` when larger), so the server waits for that many before a round (server.quorum)
INFO_MIN_COHORT = "min-cohort"
EVAL = "eval"  # RecordDict key of an evaluate request's options (which splits)
# A train message that also asks for the metric sum of the adapter it carries (the previous round's):
# the config (with that round's number) the metric sum is bound to, as CONFIG is for training
EVAL_CONFIG = "eval-config"
ROUND_KEY = "server-round"


class PayloadError(ValueError):
    """A message is missing a record or carries tensors of the wrong kind."""


FLAT = "flat"  # the ArrayRecord's one float32 array: every tensor, raveled, in manifest order
MANIFEST = "manifest"  # the ArrayRecord's uint8 array: the tensor layout as JSON [[name, shape], ...]


def state_to_arrays(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """All tensors as ONE flat float32 array plus a manifest (``common.tensor_layout``).

    Why: Flower 1.42 moves every Array as its own objects, each pulled by its own HTTP call
    on every hop (ServerApp -> SuperLink -> SuperNode -> ClientApp, and back); an adapter of
    dozens of tensors spent most of a short deployed round in those calls.
    """
    layout = TensorLayout.from_arrays(state)
    blob = np.frombuffer(layout.to_json(), dtype=np.uint8)
    return ArrayRecord(OrderedDict([(FLAT, Array(layout.flatten(state, np.float32))), (MANIFEST, Array(blob.copy()))]))


def arrays_to_state(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """Back to named numpy tensors, refusing a malformed payload and NaN/Inf (a wrong update never reaches fusion)."""
    if set(record.keys()) != {FLAT, MANIFEST}:
        raise PayloadError(f"adapter payload must hold exactly `{FLAT}` and `{MANIFEST}`, got {sorted(record.keys())}")
    if record[FLAT].dtype != "float32":
        raise PayloadError(f"adapter payload has dtype {record[FLAT].dtype}, expected float32")
    try:
        layout = TensorLayout.from_json(record[MANIFEST].numpy().tobytes())
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"adapter payload manifest is unreadable: {exc}") from None
    flat = record[FLAT].numpy()
    if flat.ndim != 1 or layout.size != flat.size:
        raise PayloadError(f"adapter payload holds {flat.size} values, its manifest names {layout.size}")
    state = OrderedDict(layout.unflatten(flat))
    for name, value in state.items():
        if not np.all(np.isfinite(value)):
            raise PayloadError(f"tensor `{name}` contains NaN or Inf")
    return state


def eval_record(splits: Sequence[str]) -> ConfigRecord:
    return ConfigRecord({"splits": ",".join(splits)})


def parse_eval(record: object) -> tuple[str, ...]:
    """Which splits to evaluate; every split when the request does not say."""
    if not isinstance(record, ConfigRecord) or "splits" not in record:
        return ("valid", "test")
    splits = tuple(str(record["splits"]).split(","))
    if not splits or not set(splits) <= {"valid", "test"}:
        raise PayloadError(f"evaluate request names unknown splits {splits}, expected valid and/or test")
    repeated = sorted({s for s in splits if splits.count(s) > 1})
    if repeated:  # a split named twice would enter a secure metric sum twice: one input per platform
        raise PayloadError(f"evaluate request names split `{repeated[0]}` twice ({','.join(splits)}); "
                           "each split is evaluated once")  # fmt: skip
    return splits


def config_record(cfg: AppConfig, server_round: int) -> ConfigRecord:
    return ConfigRecord({**cfg.to_flat(), ROUND_KEY: server_round})


def parse_config(record: ConfigRecord) -> tuple[AppConfig, int]:
    flat = dict(record)
    server_round = flat.pop(ROUND_KEY, 0)
    return AppConfig.from_flat(flat), int(server_round)
