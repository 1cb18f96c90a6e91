"""Levers of the comparison: exact LoRA fusion (freeze-a), FedAdam, FedProx, private heads."""

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch

from clients.trainer import train
from common.config import AppConfig, ConfigError
from common.fusion import FusionError, lora_deltas, server_adam_step, server_step, server_update, weighted_average
from common.modeling import HEAD_PREFIX, build_scorer, get_trainable_state
from tests.tiny import tiny_part

TINY = {"model.base": "tiny-random", "lora.r": 4, "model.max-length": 32, "model.dim": 16}
MODULES = ("layer.0.query", "layer.0.value", "layer.1.query")


def _lora_state(rng: np.random.Generator, a: dict[str, np.ndarray] | None, r: int = 3) -> OrderedDict:
    """A peft-like state: per module ``lora_A.weight`` (r, in=5) and ``lora_B.weight`` (out=4, r)."""
    state = OrderedDict()
    for m in MODULES:
        state[f"{m}.lora_A.weight"] = a[m] if a is not None else rng.normal(size=(r, 5)).astype(np.float32)
        state[f"{m}.lora_B.weight"] = rng.normal(size=(4, r)).astype(np.float32)
    return state


def _mean_delta(states: list[OrderedDict], weights: list[float]) -> dict[str, np.ndarray]:
    deltas = [lora_deltas(s, scaling=2.0) for s in states]
    return {k: np.average(np.stack([d[k] for d in deltas]), axis=0, weights=weights) for k in deltas[0]}


def test_frozen_a_fusion_is_exactly_the_mean_delta_w() -> None:
    # Prepare: three platforms share A (same seeded init), each has its own trained B
    rng = np.random.default_rng(0)
    shared_a = {m: rng.normal(size=(3, 5)).astype(np.float32) for m in MODULES}
    states = [_lora_state(rng, shared_a) for _ in range(3)]
    weights = [120.0, 30.0, 7.0]
    # Execute
    fused = weighted_average(states, weights)
    # Assert: A comes back bit-identical, and B_fused.A == sum_i w_i B_i.A / sum_i w_i
    for m in MODULES:
        assert np.array_equal(fused[f"{m}.lora_A.weight"], shared_a[m])
    expected = _mean_delta(states, weights)
    got = lora_deltas(fused, scaling=2.0)
    for k, value in expected.items():
        np.testing.assert_allclose(got[k], value, rtol=1e-5, atol=1e-6)


def test_trained_a_fusion_is_not_the_mean_delta_w() -> None:
    # Prepare: the negative twin: every platform trained its own A
    rng = np.random.default_rng(0)
    states = [_lora_state(rng, None) for _ in range(3)]
    weights = [120.0, 30.0, 7.0]
    # Execute
    fused = weighted_average(states, weights)
    # Assert: mean(B).mean(A) != mean(B.A), by a wide margin
    expected = _mean_delta(states, weights)
    got = lora_deltas(fused, scaling=2.0)
    for k, value in expected.items():
        assert not np.allclose(got[k], value, rtol=1e-2, atol=1e-2)


def test_lora_deltas_by_hand() -> None:
    state = {"m.lora_A.weight": np.array([[1.0, 2.0]]), "m.lora_B.weight": np.array([[3.0], [4.0]]), "head.w": 0}
    np.testing.assert_array_equal(lora_deltas(state, 0.5)["m.weight"], [[1.5, 3.0], [2.0, 4.0]])


def test_freeze_a_trains_only_b_and_a_is_the_same_on_every_platform() -> None:
    # Prepare: two "platforms" build their model from the run seed
    cfg = AppConfig().replace(**TINY, **{"lora.freeze-a": True})
    one, _ = build_scorer(cfg.model, cfg.lora, seed=3)
    two, _ = build_scorer(cfg.model, cfg.lora, seed=3)
    before = get_trainable_state(one)
    # Execute
    train(one, [tiny_part()], cfg.train, torch.device("cpu"), seed=0)
    after = get_trainable_state(one)
    # Assert
    a_keys = [k for k in before if ".lora_A." in k]
    b_keys = [k for k in before if ".lora_B." in k]
    assert a_keys and b_keys
    assert all(np.array_equal(before[k], get_trainable_state(two)[k]) for k in a_keys)  # same seed, same A
    assert all(np.array_equal(before[k], after[k]) for k in a_keys)  # A never moved
    assert any(not np.array_equal(before[k], after[k]) for k in b_keys)  # B did
    assert not any(p.requires_grad for n, p in one.named_parameters() if ".lora_A." in n)


def test_freeze_a_off_trains_a() -> None:
    cfg = AppConfig().replace(**TINY)
    scorer, _ = build_scorer(cfg.model, cfg.lora, seed=3)
    before = get_trainable_state(scorer)
    train(scorer, [tiny_part()], cfg.train, torch.device("cpu"), seed=0)
    after = get_trainable_state(scorer)
    assert any(not np.array_equal(before[k], after[k]) for k in before if ".lora_A." in k)


def test_fedprox_keeps_the_update_close_to_the_global_adapter() -> None:
    # Prepare: the same start, data and seed; only mu differs
    def distance(mu: float) -> float:
        cfg = AppConfig().replace(**TINY, **{"train.proximal-mu": mu, "train.local-epochs": 3, "train.lr": 0.01})
        scorer, _ = build_scorer(cfg.model, cfg.lora, seed=1)
        start = get_trainable_state(scorer)
        train(scorer, [tiny_part(48)], cfg.train, torch.device("cpu"), seed=0)
        end = get_trainable_state(scorer)
        return float(np.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in start)))

    # Execute
    free, proximal = distance(0.0), distance(50.0)
    # Assert
    assert proximal < 0.8 * free, (proximal, free)


def test_fedadam_first_step_by_hand() -> None:
    # delta = 2; m = 0.1 * 2 = 0.2; v = 0.01 * 4 = 0.04; new = 1 + 0.5 * 0.2 / (0.2 + 0.1) = 1.3333
    cur = OrderedDict(w=np.array([1.0], np.float32))
    new, moments = server_adam_step(cur, OrderedDict(w=np.array([3.0], np.float32)), None, 0.5, 0.9, 0.99, 0.1)
    np.testing.assert_allclose(new["w"], [1.0 + 0.5 * 0.2 / 0.3], rtol=1e-6)
    np.testing.assert_allclose(moments["m:w"], [0.2])
    np.testing.assert_allclose(moments["v:w"], [0.04])
    # second step, no change proposed (delta = 0): the momentum keeps moving w
    again, _ = server_adam_step(new, new, moments, 0.5, 0.9, 0.99, 0.1)
    m, v = 0.9 * 0.2, 0.99 * 0.04
    np.testing.assert_allclose(again["w"], new["w"] + 0.5 * m / (np.sqrt(v) + 0.1), rtol=1e-6)


def test_server_update_dispatches() -> None:
    cur = OrderedDict(w=np.array([1.0], np.float32))
    fused = OrderedDict(w=np.array([2.0], np.float32))
    np.testing.assert_array_equal(server_update(cur, fused, None, "avg")[0]["w"], server_step(cur, fused, None)[0]["w"])
    assert server_update(cur, fused, None, "adam", lr=0.1)[0]["w"][0] > 1.0
    with pytest.raises(FusionError, match="unknown server optimizer"):
        server_update(cur, fused, None, "sgd")


@pytest.mark.parametrize(
    "override,match",
    [
        ({"fed.optimizer": "sgd"}, "`fed.optimizer` must be one of avg, adam"),
        ({"fed.adam-beta1": 1.0}, r"`fed.adam-beta1` must be in \[0, 1\)"),
        ({"fed.adam-tau": 0.0}, "`fed.adam-tau` must be positive"),
    ],
)
def test_lever_config_errors_name_the_key(override: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AppConfig().replace(**override)


def _two_shops(private: dict) -> tuple[AppConfig, Any, Any, dict]:
    """Two embedded shops in process with the tiny model, ``private`` overrides; (cfg, transport, scorer, start)."""
    from simulations.compare.inprocess import InProcessTransport, setups_for

    cfg = AppConfig().replace(**TINY, **{"train.max-examples": 32, "eval.max-rank-users": 2, "data.history-len": 3,
                                         **private})  # fmt: skip
    transport = InProcessTransport(setups_for(cfg, ["app", "web_shop"], device="cpu"))
    scorer, _ = build_scorer(cfg.model, cfg.lora, cfg.seed)
    return cfg, transport, scorer, get_trainable_state(scorer)


def test_private_heads_stay_on_their_platform() -> None:
    # Prepare: the embedded shops, tiny model, the head kept private
    cfg, transport, scorer, start = _two_shops({"model.private-head": True})
    initial_head = scorer.initial_private
    # Execute
    fused, _, _ = transport.train_round(start, cfg, 1)
    # Assert: no head tensor travels; each platform kept its own trained head, next to its private parameters
    assert not any(k.startswith(HEAD_PREFIX) for k in [*start, *fused])
    app, web = transport.stores["app"].load(1), transport.stores["web_shop"].load(1)
    heads = [k for k in app if k.startswith(HEAD_PREFIX)]
    assert heads and {"item_bias", "user_residual"} <= set(app)
    assert any(not np.array_equal(app[k], initial_head[k]) for k in heads)
    assert any(not np.array_equal(app[k], web[k]) for k in heads)
    assert any(not np.array_equal(fused[k], start[k]) for k in start)  # the shared model did move


def test_private_lora_b_stays_on_its_platform_and_only_a_is_fused() -> None:
    # Prepare: the embedded shops, tiny model, LoRA B kept private (FedSA-LoRA)
    cfg, transport, scorer, start = _two_shops({"lora.private-b": True})
    # Execute: two rounds, so round 2 must start from each platform's own B
    fused, _, _ = transport.train_round(start, cfg, 1)
    fused2, _, _ = transport.train_round(fused, cfg, 2)
    # Assert: no B travels, A does and moves; each platform trained its own B (from zeros) and kept it
    assert not any(".lora_B." in k for k in [*start, *fused, *fused2]) and any(".lora_A." in k for k in fused)
    app1, app2, web2 = (transport.stores[p].load(r) for p, r in (("app", 1), ("app", 2), ("web_shop", 2)))
    bs = [k for k in app1 if ".lora_B." in k]
    assert bs and all(not np.array_equal(app1[k], scorer.initial_private[k]) for k in bs)
    assert any(not np.array_equal(app2[k], web2[k]) for k in bs)
    assert any(not np.array_equal(app2[k], app1[k]) for k in bs)
    assert any(not np.array_equal(fused[k], start[k]) for k in start if ".lora_A." in k)
