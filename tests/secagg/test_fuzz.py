"""Property-based fuzzing: every parser and entry point raises only SecAggError subclasses."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.secagg import (
    STAGES,
    ClientState,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    pack_record,
    unpack_record,
)
from common.secagg.messages import REPLIES, REQUESTS
from tests.secagg.helpers import drive_to, make_inputs, tiny_manifest

# SECAGG_FUZZ_EXAMPLES=5000 for a long local run; 150 keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("SECAGG_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
CFG = SecAggConfig(min_cohort=3, max_cohort=64)
MAN = tiny_manifest()
IDS = [0, 1, 2, 3]

_arrays = st.sampled_from(
    [
        np.zeros(3, np.uint64),
        np.zeros((2, 2), np.uint64),
        np.zeros(60, np.uint64),
        np.zeros(60, np.uint32),
        np.zeros(60, np.float64),
        np.array([1, "a"], dtype=object),
        np.array(3, dtype=np.uint64),
    ]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=300),
    _arrays,
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=8),
    st.lists(st.integers(-5, 2**65), max_size=8),
    st.lists(st.binary(max_size=200), max_size=8),
    st.dictionaries(st.text(max_size=5), _scalars, max_size=3),
)


def _samples():
    """One genuine message of every kind (requests and replies) to mutate."""
    out = {}
    for stage in STAGES:
        server, clients, inputs = drive_to(stage, CFG, MAN, IDS)
        req = server.requests()[0]
        out[("req", stage)] = (req, server, clients, inputs)
        out[("rep", stage)] = (clients[0].handle(req, *inputs[0]), server, clients, inputs)
    return out


SAMPLES = _samples()


@st.composite
def _mutated(draw, base: dict):
    msg = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "add", "replace", "bytes", "list", "int"]))
        keys = sorted(msg)
        if op == "drop" and keys:
            msg.pop(draw(st.sampled_from(keys)))
        elif op == "add":
            msg[draw(st.text(max_size=8))] = draw(_values)
        elif op == "replace" and keys:
            msg[draw(st.sampled_from(keys))] = draw(_values)
        elif op == "bytes" and keys:
            k = draw(st.sampled_from(keys))
            if isinstance(msg[k], bytes) and msg[k]:
                b = bytearray(msg[k])
                i = draw(st.integers(0, len(b) - 1))
                b[i] ^= draw(st.integers(1, 255))
                msg[k] = bytes(b[: draw(st.integers(0, len(b)))]) if draw(st.booleans()) else bytes(b)
        elif op == "list" and keys:
            k = draw(st.sampled_from(keys))
            if isinstance(msg[k], list) and msg[k]:
                lst = list(msg[k])
                choice = draw(st.sampled_from(["dup", "drop", "swap", "junk"]))
                if choice == "dup":
                    lst.append(lst[0])
                elif choice == "drop":
                    lst.pop()
                elif choice == "swap":
                    lst.reverse()
                else:
                    lst[0] = draw(_scalars)
                msg[k] = lst
        elif op == "int" and keys:
            k = draw(st.sampled_from(keys))
            if isinstance(msg[k], int):
                msg[k] = draw(st.sampled_from([-1, 0, 2**63, 2**64, 2**64 - 1, msg[k] + 1]))
    return msg


def _only_secagg_errors(fn, *args):
    """Any outcome but a non-SecAggError exception passes (pytest fails on those)."""
    with contextlib.suppress(SecAggError):
        fn(*args)


PARSERS = [(k, REQUESTS[k[1]] if k[0] == "req" else REPLIES[k[1]]) for k in SAMPLES]


@pytest.mark.parametrize(("key", "parser"), PARSERS, ids=[f"{k[0]}-{k[1]}" for k, _ in PARSERS])
def test_parsers_accept_genuine_messages(key, parser):
    parser.parse(SAMPLES[key][0])


@pytest.mark.parametrize(("key", "parser"), PARSERS, ids=[f"{k[0]}-{k[1]}" for k, _ in PARSERS])
@FUZZ
@given(data=st.data())
def test_parsers_raise_only_own_errors_on_mutations(key, parser, data):
    msg = data.draw(_mutated(SAMPLES[key][0]))
    _only_secagg_errors(parser.parse, msg)


@pytest.mark.parametrize("parser", list(REQUESTS.values()) + list(REPLIES.values()))
@FUZZ
@given(msg=st.one_of(_values, st.dictionaries(st.text(max_size=12), _values, max_size=12)))
def test_parsers_raise_only_own_errors_on_garbage(parser, msg):
    _only_secagg_errors(parser.parse, msg)


@pytest.mark.parametrize("stage", STAGES)
@FUZZ
@given(data=st.data())
def test_client_handle_raises_only_own_errors(stage, data):
    req, _, clients, inputs = SAMPLES[("req", stage)]
    old = clients[1]
    client = SecAggClient.from_state_bytes(old.state_bytes(), CFG, MAN, identity=old.identity, roster=old.roster)
    msg = data.draw(_mutated({**req, "node_id": 1}))
    _only_secagg_errors(client.handle, msg, *inputs[1])


@pytest.mark.parametrize("stage", STAGES)
@FUZZ
@given(data=st.data())
def test_server_receive_raises_only_own_errors(stage, data):
    reply, server, _, _ = SAMPLES[("rep", stage)]
    fresh = SecAggServer(CFG, MAN, IDS, session=server.session, round=server.round)
    # Reuse the driven server's stage data via a shallow copy of its state.
    fresh.__dict__.update({k: v for k, v in server.__dict__.items() if k != "_acc"})
    fresh._acc = None
    fresh._replied, fresh._rejected = set(), set()
    msg = data.draw(_mutated(reply))
    _only_secagg_errors(fresh.receive, 0, msg)


@FUZZ
@given(blob=st.binary(max_size=400))
def test_unpack_record_garbage(blob):
    _only_secagg_errors(unpack_record, blob)
    _only_secagg_errors(unpack_record, b"CFSA\x01" + blob)


@FUZZ
@given(data=st.data())
def test_client_state_from_mutated_bytes(data):
    good = SAMPLES[("rep", STAGES[2])][2][0].state_bytes()
    b = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(b)))
    _only_secagg_errors(ClientState.from_bytes, bytes(b[:cut]))
    _only_secagg_errors(ClientState.from_bytes, bytes(b))


@FUZZ
@given(record=st.dictionaries(st.text(max_size=12), _values, max_size=20))
def test_client_state_from_garbage_record(record):
    _only_secagg_errors(ClientState.from_record, record)
    try:
        blob = pack_record(record)
    except SecAggError:
        return
    assert unpack_record(blob).keys() == record.keys()


@FUZZ
@given(params=st.dictionaries(st.sampled_from(list(CFG.to_params()) + ["bogus"]), _scalars, max_size=9))
def test_config_from_params_raises_only_config_errors(params):
    _only_secagg_errors(SecAggConfig.from_params, params)


@FUZZ
@given(tensors=st.dictionaries(st.sampled_from(["lora_A", "lora_B", "x"]), _values, max_size=3), weight=_scalars)
def test_encode_input_raises_only_input_errors(tensors, weight):
    from common.secagg import encode_input

    _only_secagg_errors(encode_input, tensors, weight, MAN, CFG)


def test_roundtrip_record_with_every_type():
    rec = {
        "i": -5,
        "u": 2**64 - 1,
        "f": 1.5,
        "s": "x",
        "b": b"\x00",
        "li": [1, 2**64 - 1],
        "lb": [b"a", b""],
        "a": np.arange(3, dtype=np.uint64),
        "e": [],
    }
    back = unpack_record(pack_record(rec))
    assert back.keys() == rec.keys() and back["u"] == 2**64 - 1
    np.testing.assert_array_equal(back["a"], rec["a"])
    assert make_inputs([0])[0][1] >= 1
