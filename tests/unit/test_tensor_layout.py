"""The tensor layout behind every flat vector (payload, secure aggregation): exact round trip, exact JSON."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from common.tensor_layout import LayoutError, TensorLayout, TensorSpec


def _state() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return OrderedDict(a=rng.normal(size=(3, 4)).astype(np.float32), b=rng.normal(size=5).astype(np.float32))


def test_flatten_unflatten_round_trip() -> None:
    state = _state()
    layout = TensorLayout.from_arrays(state)
    vec = layout.flatten(state, np.float64)
    assert vec.shape == (layout.size,) == (17,) and vec.dtype == np.float64
    back = layout.unflatten(vec)
    assert list(back) == ["a", "b"]
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])
    with pytest.raises(LayoutError, match="flat vector of 17 values"):
        layout.unflatten(vec[:-1])


def test_flatten_is_every_tensor_raveled_in_layout_order() -> None:
    state = OrderedDict(w=np.arange(6, dtype=np.float64).reshape(2, 3).T, s=np.array(7.0))  # non-contiguous, 0-d
    layout = TensorLayout.from_arrays(state)
    assert layout.specs == (TensorSpec("w", (3, 2), "float64"), TensorSpec("s", (), "float64"))
    assert layout.flatten(state).tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 7.0]
    assert layout.flatten(state).dtype == np.float32
    assert TensorLayout([]).flatten({}).shape == (0,)


def test_tensors_that_do_not_match_the_layout_are_refused() -> None:
    layout = TensorLayout([TensorSpec("w", (2, 2))])
    with pytest.raises(LayoutError, match="`w` of the layout is missing"):
        layout.flatten({"v": np.zeros((2, 2))})
    with pytest.raises(LayoutError, match=r"`w` has shape \(4,\), the layout says \(2, 2\)"):
        layout.flatten({"w": np.zeros(4)})


def test_json_is_names_and_shapes_and_reads_back() -> None:
    layout = TensorLayout.from_arrays({"a.lora_A": np.zeros((2, 3), np.float32), "head": np.zeros((), np.float32)})
    assert layout.to_json() == b'[["a.lora_A", [2, 3]], ["head", []]]'
    assert TensorLayout.from_json(layout.to_json()) == layout
    with pytest.raises(ValueError):
        TensorLayout.from_json(b'[["w"]]')
