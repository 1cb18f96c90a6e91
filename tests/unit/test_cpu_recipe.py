"""The CPU recipe's pieces on the tiny random base: the cached-layer encoder, the item cache, steps
without the encoder, and cold-start dropout (``lora.top-layers``, ``train.item-cache``,
``train.encoder-every``, ``train.cold-dropout``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clients.trainer import PlatformBatches, _logits, batch_logits, fill_item_cache, text_vectors, train
from common.config import AppConfig, ConfigError, LoraSpec, ModelSpec, TrainSpec
from common.modeling import ModelLoadError, PrivateParts, build_scorer, get_trainable_state
from tests.tiny import scorer_with_private_values, tiny_part, tiny_table

TINY = ModelSpec(base="tiny-random", max_length=32, dim=16)
CPU = torch.device("cpu")


def _perturb_lora(scorer) -> None:
    """LoRA B starts at zero (the adapter is the identity): give it values so the top layer really changes."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for name, param in scorer.encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)


def test_lora_sits_in_the_top_layers_only() -> None:
    scorer, _ = build_scorer(TINY, LoraSpec(r=4, top_layers=1))
    names = [n for n, p in scorer.encoder.named_parameters() if p.requires_grad]
    assert names and all(".layer.1." in n for n in names)  # tiny-random has layers 0 and 1
    shared = [n for n in get_trainable_state(scorer) if "lora_" in n]
    assert len(shared) == len(names) and all(".layer.1." in n for n in shared)


def test_more_top_layers_than_the_base_has_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="`lora.top-layers` = 3 but the base model has 2 layers"):
        build_scorer(TINY, LoraSpec(r=4, top_layers=3))


@pytest.mark.parametrize("top", [1, 2])
def test_cached_lower_layers_give_the_uncached_model_outputs(top: int) -> None:
    # Prepare: a scorer whose adapter is not the identity, and a catalogue of items of many lengths
    scorer, _ = build_scorer(TINY, LoraSpec(r=4, top_layers=top))
    _perturb_lora(scorer)
    scorer.eval()
    table = tiny_table(num_items=40)
    rows = np.array([5, 0, 39, 12, 12, 7])  # unsorted, a repeat: the order is kept
    # Execute
    with torch.no_grad():
        cached = text_vectors(scorer, table, rows, CPU)
        scorer.top_layers = 0  # the same weights through the whole encoder, every layer run
        full = text_vectors(scorer, table, rows, CPU)
    # Assert
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    assert len(table.lower) == 1 and next(iter(table.lower.values())).shape[:2] == table.tokens.shape


def test_the_lower_cache_keeps_the_last_two_scorers_per_catalogue() -> None:
    table = tiny_table()
    scorers = [build_scorer(TINY, LoraSpec(r=4, top_layers=1), seed=s)[0] for s in range(3)]
    for scorer in scorers:
        table.lower_states(scorer, CPU)
    assert [key for key, _ in table.lower] == [s.cache_key for s in scorers[1:]]


def test_the_lower_cache_holds_no_dropout_noise() -> None:
    # Prepare: the tiny base with dropout switched on in every layer, in training mode
    scorer, _ = build_scorer(TINY, LoraSpec(r=4, top_layers=1))
    for module in scorer.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    scorer.train()
    table = tiny_table()
    ids = torch.from_numpy(table.tokens)
    # Execute
    first = scorer.lower_states(ids, (ids != 0).long())
    second = scorer.lower_states(ids, (ids != 0).long())
    # Assert: deterministic, and the modules are back in training mode
    torch.testing.assert_close(first, second)
    assert scorer.encoder.get_base_model().encoder.layer[0].training


def _trained(spec: TrainSpec, lora: LoraSpec) -> tuple[dict, dict]:
    scorer, _ = build_scorer(TINY, lora)
    before = get_trainable_state(scorer)
    part = tiny_part(n=64)
    train(scorer, [part], spec, CPU, seed=0)
    assert part.pooled is None  # the item cache lives for one local training
    return before, get_trainable_state(scorer)


def _changed(before: dict, after: dict, marker: str) -> bool:
    return any(not np.array_equal(before[k], after[k]) for k in before if marker in k)


def test_encoder_every_0_keeps_the_adapter_and_trains_the_rest() -> None:
    before, after = _trained(TrainSpec(batch_size=16, encoder_every=0), LoraSpec(r=4, top_layers=1))
    assert not _changed(before, after, "lora_")
    assert _changed(before, after, "tower.") and _changed(before, after, "head.")


@pytest.mark.parametrize("every", [1, 3])
def test_the_item_cache_trains_the_adapter_on_encoder_steps(every: int) -> None:
    spec = TrainSpec(batch_size=16, item_cache=True, encoder_every=every)
    before, after = _trained(spec, LoraSpec(r=4, top_layers=1))
    assert _changed(before, after, "lora_B")


def test_a_cached_step_scores_as_an_encoded_step_when_the_cache_is_fresh() -> None:
    # Prepare: a pooled cache filled from the current adapter
    scorer, _ = build_scorer(TINY, LoraSpec(r=4, top_layers=1))
    _perturb_lora(scorer)
    scorer.eval()
    part = tiny_part(n=32)
    with torch.no_grad():
        plain = batch_logits(scorer, part, part.data, CPU, history_grad=False)
        fill_item_cache(scorer, [part], CPU)
        cached = batch_logits(scorer, part, part.data, CPU, history_grad=False, encode=False)
        encoded = batch_logits(scorer, part, part.data, CPU, history_grad=False, encode=True)
    # Assert: all three read the same text states
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoded, plain, rtol=1e-5, atol=1e-5)


def test_a_cold_row_is_scored_as_an_item_without_private_parts_or_statistics() -> None:
    # Prepare: private parts with values, item statistics with values
    scorer, part = scorer_with_private_values(n=12)
    data = dataclasses.replace(part.data, stats=np.random.default_rng(0).normal(size=(12, 2)).astype(np.float32))
    cold = np.arange(12) % 2 == 0
    rows = [data.items, data.liked, data.disliked]
    vectors = text_vectors(scorer, part.table, np.arange(len(part.table)), CPU).detach()
    with torch.no_grad():
        # Execute
        got = _logits(scorer, part, vectors + part.private.item_residual, rows, data, CPU, cold)
        # The oracle: the same rows with the item's private parameters zeroed and no statistics
        bare = PrivateParts(len(part.table), 6, 16, "embed", pick=True)
        bare.load_state_dict(part.private.state_dict())
        bare.item_bias.zero_()
        bare.item_pick_bias.zero_()
        bare.item_residual.zero_()
        # history items keep their residuals: only the candidate is new
        history_vectors = vectors + part.private.item_residual
        user, counts = scorer.users(history_vectors, *(torch.from_numpy(r) for r in rows[1:]),
                                    part.private.user_vectors(torch.from_numpy(data.users)))  # fmt: skip
        items = torch.from_numpy(data.items)
        oracle = scorer.score(user, counts, vectors[items], torch.zeros(12, 2)).float()
        oracle[:, 0] += part.private.user_bias[torch.from_numpy(data.users)]
        warm = _logits(scorer, part, vectors + part.private.item_residual, rows, data, CPU)
    # Assert: cold rows equal the oracle, warm rows are untouched
    torch.testing.assert_close(got[torch.from_numpy(cold)], oracle[torch.from_numpy(cold)], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[torch.from_numpy(~cold)], warm[torch.from_numpy(~cold)])


def test_cold_dropout_and_encoder_every_are_checked() -> None:
    with pytest.raises(ConfigError, match="train.cold-dropout"):
        AppConfig().replace(**{"train.cold-dropout": 1.0})
    with pytest.raises(ConfigError, match="train.encoder-every"):
        AppConfig().replace(**{"train.encoder-every": -1})
    assert AppConfig().replace(**{"train.encoder-every": 0}).train.uses_item_cache
    assert not AppConfig().train.uses_item_cache


def test_cold_dropout_trains() -> None:
    before, after = _trained(TrainSpec(batch_size=16, cold_dropout=0.5), LoraSpec(r=4))
    assert _changed(before, after, "head.")


def test_platform_batches_start_without_a_cache() -> None:
    table = tiny_table()
    assert PlatformBatches(table, tiny_part().data, PrivateParts(len(table), 6, 16, "embed")).pooled is None


def test_simulate_takes_the_cpu_size_preset_and_set_wins_over_it() -> None:
    from simulations.cli import build_parser, simulate_config

    args = build_parser().parse_args(["simulate", "--out", "/tmp/x", "--size", "cpu", "--set", "train.encoder-every=2"])
    cfg = simulate_config(args)
    assert cfg.lora.top_layers == 1 and cfg.train.max_examples == 0 and cfg.eval.max_rank_users == 0
    assert cfg.train.item_cache and cfg.train.encoder_every == 2
    assert simulate_config(build_parser().parse_args(["simulate", "--out", "/tmp/x"])).lora.top_layers == 0
