"""Fusion maths against numpy's own weighted average."""

from collections import OrderedDict

import numpy as np
import pytest

from common.fusion import FusionError, server_step, weighted_average


def _states(k: int, seed: int) -> list[OrderedDict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [OrderedDict(a=rng.normal(size=(3, 4)).astype(np.float32), b=rng.normal(size=5).astype(np.float32))
            for _ in range(k)]  # fmt: skip


@pytest.mark.parametrize("k,weights", [(1, [7]), (2, [1, 1]), (3, [10, 200, 3]), (4, [0, 5, 1, 2])])
def test_weighted_average_matches_np_average(k: int, weights: list[float]) -> None:
    # Prepare
    states = _states(k, seed=k)
    # Execute
    fused = weighted_average(states, weights)
    # Assert
    for name in ("a", "b"):
        expected = np.average(np.stack([s[name] for s in states]), axis=0, weights=weights)
        np.testing.assert_allclose(fused[name], expected, rtol=1e-6, atol=1e-7)
        assert fused[name].dtype == np.float32


def test_equal_updates_fuse_to_themselves() -> None:
    state = _states(1, seed=0)[0]
    fused = weighted_average([state, state, state], [1, 2, 3])
    np.testing.assert_allclose(fused["a"], state["a"], rtol=1e-6)


@pytest.mark.parametrize(
    "weights,match",
    [([1, -1], "weights"), ([0, 0], "weights"), ([1, float("nan")], "weights"), ([1], "2 updates but 1")],
)
def test_bad_weights_refused(weights: list[float], match: str) -> None:
    with pytest.raises(FusionError, match=match):
        weighted_average(_states(2, seed=1), weights)


def test_mismatched_tensors_refused() -> None:
    a, b = _states(2, seed=2)
    del b["b"]
    with pytest.raises(FusionError, match="update 1"):
        weighted_average([a, b], [1, 1])
    with pytest.raises(FusionError, match="no updates"):
        weighted_average([], [])


def test_server_step_plain_is_exactly_fused() -> None:
    cur, fused = _states(2, seed=4)
    new, vel = server_step(cur, fused, None)
    for name in cur:
        np.testing.assert_array_equal(new[name], fused[name])


def test_server_step_momentum_by_hand() -> None:
    cur = OrderedDict(w=np.array([1.0], np.float32))
    fused = OrderedDict(w=np.array([3.0], np.float32))
    # delta = 2, v = 0.5 * 4 + 2 = 4, new = 1 + 0.5 * 4 = 3
    new, vel = server_step(cur, fused, OrderedDict(w=np.array([4.0], np.float32)), lr=0.5, momentum=0.5)
    assert vel["w"].tolist() == [4.0]
    assert new["w"].tolist() == [3.0]
