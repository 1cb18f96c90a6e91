"""Model builder and adapter (de)serialisation on the tiny random base."""

from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import LoraSpec, ModelSpec
from common.modeling import (
    ModelLoadError,
    build_scorer,
    get_trainable_state,
    load_adapter,
    resolve_base_path,
    save_adapter,
    set_trainable_state,
)

TINY = ModelSpec(base="tiny-random", max_length=32, dim=16)
LORA = LoraSpec(r=4, alpha=8)


def _scores(scorer, tokenizer) -> np.ndarray:
    """Score candidates 0 and 1 for a user who liked item 2 and disliked nothing."""
    enc = tokenizer(["Red Wool Scarf", "Blue Cotton Shirt", "Red Hat"], return_tensors="pt", padding=True)
    scorer.eval()
    with torch.no_grad():
        vectors = scorer.item_vectors(enc["input_ids"], enc["attention_mask"])
        liked, disliked = torch.tensor([[2], [2]]), torch.tensor([[-1], [-1]])
        stats = torch.tensor([[1.0, 0.1], [0.0, -0.1]])  # the candidates' train count and like-rate features
        return scorer(vectors, torch.tensor([0, 1]), liked, disliked, stats=stats).numpy()


def _perturbed(state: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(scale=0.1, size=v.shape)).astype(np.float32) for k, v in state.items()}


def test_only_the_shared_model_travels() -> None:
    scorer, _ = build_scorer(TINY, LORA)
    state = get_trainable_state(scorer)
    assert all("lora_" in k or k.startswith(("tower.", "user.", "head.")) for k in state)
    assert {k for k in state if k.startswith("head.")} == {
        "head.1.weight",
        "head.1.bias",
        "head.3.weight",
        "head.3.bias",
    }
    trainable = sum(p.numel() for p in scorer.parameters() if p.requires_grad)
    assert trainable == sum(v.size for v in state.values())


def test_a_private_head_does_not_travel() -> None:
    scorer, _ = build_scorer(ModelSpec(base="tiny-random", dim=16, private_head=True), LORA)
    state = get_trainable_state(scorer)
    assert state and not any(k.startswith("head.") for k in state)
    assert any(k.startswith("tower.") for k in state)


def test_save_load_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    # Prepare: a non-trivial adapter (B starts at zero, so perturb it)
    scorer, tokenizer = build_scorer(TINY, LORA)
    state = _perturbed(get_trainable_state(scorer), seed=1)
    set_trainable_state(scorer, state)
    before = _scores(scorer, tokenizer)
    # Execute
    folder = save_adapter(scorer, state, tmp_path / "adapter")
    reloaded, tok2 = load_adapter(TINY, LORA, folder)
    # Assert
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    np.testing.assert_array_equal(_scores(reloaded, tok2), before)
    assert not np.allclose(before, _scores(build_scorer(TINY, LORA)[0], tokenizer))


def test_wrong_shape_or_nan_update_refused() -> None:
    scorer, _ = build_scorer(TINY, LORA)
    state = get_trainable_state(scorer)
    name = next(iter(state))
    bad_shape = {**state, name: np.zeros((1, 1), np.float32)}
    with pytest.raises(ValueError, match=f"`{name}` has shape"):
        set_trainable_state(scorer, bad_shape)
    bad_value = {**state, name: np.full_like(state[name], np.nan)}
    with pytest.raises(ValueError, match="NaN"):
        set_trainable_state(scorer, bad_value)
    with pytest.raises(ValueError, match="missing"):
        set_trainable_state(scorer, {k: v for k, v in state.items() if k != name})


def test_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no Hugging Face model folder"):
        resolve_base_path(str(tmp_path / "nope"))


def test_unknown_target_module_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="lora.target-modules"):
        build_scorer(TINY, LoraSpec(target_modules="no_such_layer"))
