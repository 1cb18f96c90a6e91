"""The adapter payload: one flat float32 array plus a manifest, exact round trip, bad payloads refused."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common.payload import FLAT, MANIFEST, PayloadError, arrays_to_state, state_to_arrays


def _state() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return OrderedDict([
        ("base_model.layer.0.lora_A.weight", rng.normal(size=(4, 32)).astype(np.float32)),
        ("base_model.layer.0.lora_B.weight", rng.normal(size=(32, 4)).astype(np.float32)),
        ("head.bias", np.array([0.5], dtype=np.float32)),
        ("head.scale", np.array(2.0, dtype=np.float32)),  # a 0-d tensor keeps its shape
    ])  # fmt: skip


def test_round_trip_is_exact_and_keeps_names_order_and_shapes() -> None:
    state = _state()
    back = arrays_to_state(state_to_arrays(state))
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].shape == value.shape and back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], value)


def test_record_holds_two_arrays_whatever_the_number_of_tensors() -> None:
    record = state_to_arrays(_state())
    assert list(record.keys()) == [FLAT, MANIFEST]
    assert tuple(record[FLAT].shape) == (4 * 32 + 32 * 4 + 1 + 1,)


def test_float64_input_travels_as_float32() -> None:
    back = arrays_to_state(state_to_arrays({"w": np.array([[1.5, -2.0]], dtype=np.float64)}))
    assert back["w"].dtype == np.float32 and back["w"].tolist() == [[1.5, -2.0]]


def test_empty_state_round_trips() -> None:
    assert arrays_to_state(state_to_arrays({})) == OrderedDict()


def test_nan_is_refused_naming_the_tensor() -> None:
    state = _state()
    state["head.bias"] = np.array([np.nan], dtype=np.float32)
    with pytest.raises(PayloadError, match="tensor `head.bias` contains NaN or Inf"):
        arrays_to_state(state_to_arrays(state))


def _record(flat: np.ndarray, manifest: object) -> ArrayRecord:
    blob = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8).copy()
    return ArrayRecord(OrderedDict([(FLAT, Array(flat)), (MANIFEST, Array(blob))]))


def test_manifest_that_does_not_match_the_values_is_refused() -> None:
    with pytest.raises(PayloadError, match="holds 3 values, its manifest names 4"):
        arrays_to_state(_record(np.zeros(3, np.float32), [["w", [2, 2]]]))


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [([["w", [2]], ["w", [2]]], "`w` is listed twice"), ([["w", [-2, -2]]], r"negative dimension in \(-2, -2\)")],
)
def test_manifest_from_another_party_naming_a_tensor_twice_or_a_negative_shape_is_refused(
    manifest: list, problem: str
) -> None:
    with pytest.raises(PayloadError, match=f"manifest is unreadable: .*{problem}"):
        arrays_to_state(_record(np.zeros(4, np.float32), manifest))


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(PayloadError, match="dtype float64, expected float32"):
        arrays_to_state(_record(np.zeros(4, np.float64), [["w", [2, 2]]]))


def test_unreadable_manifest_is_refused() -> None:
    blob = np.frombuffer(b"not json", dtype=np.uint8).copy()
    record = ArrayRecord(OrderedDict([(FLAT, Array(np.zeros(1, np.float32))), (MANIFEST, Array(blob))]))
    with pytest.raises(PayloadError, match="manifest is unreadable"):
        arrays_to_state(record)


def test_per_tensor_record_of_the_old_format_is_refused() -> None:
    record = ArrayRecord(OrderedDict([("w", Array(np.zeros(2, np.float32)))]))
    with pytest.raises(PayloadError, match="must hold exactly `flat` and `manifest`, got \\['w'\\]"):
        arrays_to_state(record)
