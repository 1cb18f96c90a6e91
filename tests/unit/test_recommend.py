"""Serving maths: private rows lined up by id, saved ids, warm-start fallback, current histories, user/score split."""

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.private_state import PrivateStore
from clients.tasks import align_rows
from common.config import ConfigError, LoraSpec, ModelSpec
from common.data import Interaction, Item, PlatformData
from common.modeling import build_scorer
from common.splits import current_histories


def _saved() -> dict[str, np.ndarray]:
    return {
        "item_bias": np.array([1.0, 2.0, 3.0], np.float32),
        "item_residual": np.arange(6, dtype=np.float32).reshape(3, 2),
        "user_bias": np.array([10.0, 20.0], np.float32),
    }


def test_align_rows_matches_by_id_new_ids_start_at_zero_gone_ids_dropped() -> None:
    # Prepare: items a, b, c were saved; now the catalogue is c, x, a (b gone, x new); users u, v -> v, w
    saved_index = {"items": ["a", "b", "c"], "users": ["u", "v"]}
    index = {"items": ["c", "x", "a"], "users": ["v", "w"]}
    # Execute
    out = align_rows(_saved(), saved_index, index)
    # Assert
    np.testing.assert_array_equal(out["item_bias"], [3.0, 0.0, 1.0])
    np.testing.assert_array_equal(out["item_residual"], [[4.0, 5.0], [0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(out["user_bias"], [20.0, 0.0])


def test_align_rows_refuses_ids_that_do_not_fit_the_rows() -> None:
    with pytest.raises(ValueError, match=r"`item_bias` has 3 rows but 2 saved items ids"):
        align_rows(_saved(), {"items": ["a", "b"], "users": ["u", "v"]}, {"items": ["a"], "users": ["u"]})


def test_align_rows_same_ids_is_identity() -> None:
    index = {"items": ["a", "b", "c"], "users": ["u", "v"]}
    out = align_rows(_saved(), index, index)
    for name, value in _saved().items():
        np.testing.assert_array_equal(out[name], value)


@pytest.mark.parametrize("items,ok", [(3, True), (4, False)])
def test_align_rows_without_saved_ids_needs_equal_counts(items: int, ok: bool) -> None:
    index = {"items": [f"i{k}" for k in range(items)], "users": ["u", "v"]}
    if ok:
        np.testing.assert_array_equal(align_rows(_saved(), None, index)["item_bias"], [1.0, 2.0, 3.0])
    else:
        with pytest.raises(ValueError, match=r"`item_bias` was saved for 3 items without their ids .* now has 4"):
            align_rows(_saved(), None, index)


@pytest.mark.parametrize("on_disk", [True, False])
def test_store_keeps_ids_with_each_round(tmp_path: Path, on_disk: bool) -> None:
    # Prepare
    store = PrivateStore(tmp_path / "p" if on_disk else None)
    # Execute
    store.save(1, _saved(), {"items": ["a", "b", "c"], "users": ["u", "v"]})
    store.save(2, _saved())
    # Assert: the latest round at or before r, its own ids (or none)
    assert store.index(1) == {"items": ["a", "b", "c"], "users": ["u", "v"]}
    assert store.index(2) is None
    assert store.index(0) is None


def test_warm_start_falls_back_to_the_earlier_run_until_the_store_has_its_own(tmp_path: Path) -> None:
    # Prepare: an old run saved rounds 1 and 2; the new run starts from round 1 of it
    old = PrivateStore(tmp_path / "old")
    old.save(1, {"item_bias": np.ones(3, np.float32)}, {"items": ["a", "b", "c"], "users": []})
    old.save(2, {"item_bias": np.full(3, 2.0, np.float32)})
    new = PrivateStore(tmp_path / "new").warm_start(old, 1)
    # Execute / Assert: nothing of its own yet -> the old run's round 1, with its ids
    np.testing.assert_array_equal(new.load(5)["item_bias"], np.ones(3))
    assert new.index(5) == {"items": ["a", "b", "c"], "users": []}
    # ... and its own rounds win once saved
    new.save(6, {"item_bias": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(new.load(6)["item_bias"], np.zeros(3))
    np.testing.assert_array_equal(new.load(5)["item_bias"], np.ones(3))  # before round 6: still the old one


def test_current_histories_are_the_latest_likes_and_dislikes_most_recent_first() -> None:
    # Prepare: ratings > 3 are likes; file order breaks the tie at t=3
    items = {i: Item(i, i) for i in "abcdef"}
    rows = [Interaction("u", "a", 1, 5), Interaction("u", "b", 2, 1), Interaction("u", "c", 3, 4),
            Interaction("u", "d", 3, 2), Interaction("u", "e", 4, 5), Interaction("w", "f", 1, 1)]  # fmt: skip
    data = PlatformData("shop", items, rows, "rating")
    # Execute
    out = current_histories(data, like_threshold=3.0, history_len=2)
    # Assert
    assert out["u"].liked == ("e", "c") and out["u"].disliked == ("d", "b")
    assert out["u"].seen == frozenset("abcde")
    assert out["w"].liked == () and out["w"].disliked == ("f",)


def test_users_then_score_equals_forward() -> None:
    # Prepare: a tiny scorer, random item vectors and histories with padding
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", dim=8), LoraSpec(r=2), seed=0)
    scorer.eval()
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(30, 8, generator=gen)
    liked = torch.tensor([[1, 2, -1], [-1, -1, -1], [5, 6, 7]])
    disliked = torch.tensor([[3, -1, -1], [4, -1, -1], [-1, -1, -1]])
    candidates = torch.tensor([9, 10, 11])
    residual, stats = torch.randn(3, 8, generator=gen), torch.randn(3, 2, generator=gen)
    # Execute
    with torch.no_grad():
        expected = scorer(vectors, candidates, liked, disliked, residual, stats)
        user, counts = scorer.users(vectors, liked, disliked, residual)
        got = scorer.score(user, counts, vectors[candidates], stats)
    # Assert: one user vector reused for every candidate is the same maths as the per-row forward
    torch.testing.assert_close(got, expected)
    share = counts[:, 0].tolist()
    assert share == pytest.approx([2 / 3, 0.0, 1.0])


def test_score_items_with_the_precomputed_item_part_equals_score() -> None:
    # Prepare
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", dim=8), LoraSpec(r=2), seed=0)
    scorer.eval()
    gen = torch.Generator().manual_seed(1)
    items, user, counts = torch.randn(50, 8, generator=gen), torch.randn(8, generator=gen), torch.rand(3, generator=gen)
    stats = torch.randn(50, 2, generator=gen)  # the items' count and like-rate features
    # Execute
    with torch.no_grad():
        expected = scorer.score(user.expand(50, -1), counts.expand(50, -1), items, stats)
        got = scorer.score_items(user, counts, items, scorer.item_head_part(items, stats))
    # Assert: the split first layer is the same linear map, for both outputs (like, pick)
    assert got.shape == (50, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_serve_refuses_an_address_in_use_before_loading_anything() -> None:
    from common.ports import check_listen

    # Prepare: a port some other server listens on
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # Execute / Assert: one line naming the address and the flags
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}: .*in use \(--host / --port\)"):
            check_listen("127.0.0.1", port)
    check_listen("127.0.0.1", port)  # free again: accepted
