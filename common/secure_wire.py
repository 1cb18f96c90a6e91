"""Secure-aggregation messages on Flower records, and the protocol config from the run config.

A protocol message (``common.secagg``: scalars, lists, bytes and uint arrays) travels as
one packed bytes field in a ConfigRecord (``common.secagg.codec``: node ids are 64-bit
unsigned, more than a ConfigRecord int holds), its masked vector included: every record is
one more Flower object, i.e. one more HTTP call for each sender and receiver of a deployed
message (a masked input in an ArrayRecord of its own was five). Both sides use these two
functions, so the wire format lives in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from common.config import AppConfig
from common.secagg import ProtocolError, SecAggConfig, pack_record, unpack_record

SECAGG = "secagg"  # RecordDict key: ConfigRecord {"msg": the packed message}
SECAGG_ACTION = "secagg"  # follow-up stages are message type "train.secagg"
# A second secure sum riding on the same messages as a round's training sum: the metric sum of the
# previous round's fused adapter (the adapter the train message carries). It shares the record: its
# packed message is the ConfigRecord's field ``msg-eval``; a platform that cannot take part in it says
# why in the field ``error-eval`` and goes on with the training sum.
EVAL_SUM = "-eval"


def to_records(msg: Mapping[str, Any], ns: str = "") -> dict[str, ConfigRecord]:
    """The protocol message as records; ``ns`` (``EVAL_SUM``) names a second sum of the same message,
    whose record ``merge_records`` joins with the first's."""
    return {SECAGG: ConfigRecord({"msg" + ns: pack_record(msg)})}


def merge_records(into: MutableMapping[str, Any], records: Mapping[str, Any]) -> None:
    """Add ``records`` to a message's content, joining the fields of a ConfigRecord both hold (two sums')."""
    for key, record in records.items():
        held = into.get(key)
        if isinstance(held, ConfigRecord) and isinstance(record, ConfigRecord):
            into[key] = ConfigRecord({**dict(held), **dict(record)})
        else:
            into[key] = record


def has_sum(content: RecordDict, ns: str = "") -> bool:
    """Whether ``content`` carries a message of the ``ns`` sum."""
    record = content.get(SECAGG)
    return isinstance(record, ConfigRecord) and "msg" + ns in record


def sum_error(reason: str, ns: str = EVAL_SUM) -> dict[str, ConfigRecord]:
    """The record a platform sends instead of its part of the ``ns`` sum when it cannot take part."""
    return {SECAGG: ConfigRecord({"error" + ns: reason})}


def sum_error_of(content: RecordDict, ns: str = EVAL_SUM) -> str | None:
    """The reason a platform gave for leaving the ``ns`` sum of this message (None: it did not)."""
    record = content.get(SECAGG)
    return str(record["error" + ns]) if isinstance(record, ConfigRecord) and "error" + ns in record else None


def from_records(content: RecordDict, ns: str = "") -> dict[str, Any]:
    """The protocol message in ``content``; ProtocolError (never KeyError) when it is missing."""
    record = content.get(SECAGG)
    if not isinstance(record, ConfigRecord) or not isinstance(record.get("msg" + ns), bytes):
        raise ProtocolError("message carries no secure-aggregation record")
    return unpack_record(record["msg" + ns])


def round_context(arrays: object, config: object) -> bytes:
    """SHA-256 of the global adapter (ArrayRecord) and training config (ConfigRecord) of a train message.

    Both sides compute it from the records themselves (names, dtypes, shapes, bytes; config
    items sorted by key), so every platform can check it was given what the others were.
    """
    h = hashlib.sha256(b"crossfed-secagg/round-context|")
    if isinstance(arrays, ArrayRecord):
        for name, arr in arrays.items():
            value = np.ascontiguousarray(arr.numpy())
            h.update(repr((name, value.dtype.str, value.shape)).encode())
            h.update(value.tobytes())
    h.update(b"|config|")
    if isinstance(config, ConfigRecord):
        h.update(repr(sorted((k, type(v).__name__, v) for k, v in config.items())).encode())
    return h.digest()


def secagg_config(cfg: AppConfig) -> SecAggConfig:
    s = cfg.secure
    return SecAggConfig(
        clip_range=s.clip_range, l2_clip=s.l2_clip, quant_bits=s.quant_bits, max_weight=s.max_weight,
        min_cohort=s.min_cohort, threshold_fraction=s.threshold_fraction,
    )  # fmt: skip
