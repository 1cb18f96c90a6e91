"""What travels between ServerApp and ClientApp: named float32 tensors and flat config.

Only adapter + head tensors are ever packed here; user data and the base model never are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from common.config import AppConfig

ARRAYS = "arrays"  # RecordDict key of the adapter + head tensors
CONFIG = "config"  # RecordDict key of the flat run config (+ round)
METRICS = "metrics"  # RecordDict key of a reply's metrics
INFO = "info"  # RecordDict key of a reply's non-numeric facts (platform name)
EVAL = "eval"  # RecordDict key of an evaluate request's options (which splits)
ROUND_KEY = "server-round"


class PayloadError(ValueError):
    """A message is missing a record or carries tensors of the wrong kind."""


def state_to_arrays(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v, dtype=np.float32))) for k, v in state.items()))


def arrays_to_state(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """Back to numpy, refusing non-float32 tensors and NaN/Inf (a wrong update never reaches fusion)."""
    state: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, arr in record.items():
        if arr.dtype != "float32":
            raise PayloadError(f"tensor `{name}` has dtype {arr.dtype}, expected float32")
        value = arr.numpy()
        if not np.all(np.isfinite(value)):
            raise PayloadError(f"tensor `{name}` contains NaN or Inf")
        state[name] = value
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
    return splits


def config_record(cfg: AppConfig, server_round: int) -> ConfigRecord:
    return ConfigRecord({**cfg.to_flat(), ROUND_KEY: server_round})


def parse_config(record: ConfigRecord) -> tuple[AppConfig, int]:
    flat = dict(record)
    server_round = flat.pop(ROUND_KEY, 0)
    return AppConfig.from_flat(flat), int(server_round)
