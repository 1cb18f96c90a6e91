"""``train.compile``: a few fixed shapes, and the compiled trainer trains and scores like the eager one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import clients.encoder_compile as encoder_compile
from clients.encoder_compile import ROWS, WIDTHS, bucket_chunks, compile_mode, pad_rows, set_compile
from clients.trainer import predict, train
from common.config import AppConfig
from common.modeling import build_scorer, get_trainable_state
from tests.tiny import tiny_part

CPU = torch.device("cpu")


@pytest.mark.parametrize("n", [1, ROWS - 1, ROWS, 2 * ROWS + 5])
def test_bucket_chunks_are_fixed_shapes_covering_every_item(n: int) -> None:
    # Prepare
    lengths = np.random.default_rng(n).integers(2, 120, size=n)
    # Execute
    chunks = bucket_chunks(lengths, cap=100)
    # Assert: every position once, ROWS per chunk once padded, widths from the bucket set (or the cap)
    flat = np.concatenate([pos for pos, _ in chunks])
    assert sorted(flat.tolist()) == list(range(n))
    assert np.all(np.diff(lengths[flat]) >= 0)
    for pos, width in chunks:
        assert len(pad_rows(pos)) == ROWS and np.all(pad_rows(pos)[len(pos) :] == pos[0])
        assert width in (*WIDTHS, 100) and width >= min(lengths[pos].max(), 100)
    assert bucket_chunks(np.zeros(0, np.int64), cap=100) == []


def test_set_compile_refuses_an_unknown_mode() -> None:
    scorer, _ = _scorer(AppConfig().replace(**{"model.base": "tiny-random", "model.dim": 16}))
    with pytest.raises(ValueError, match="`train.compile` must be one of"):
        set_compile(scorer, "fastest")
    assert compile_mode(scorer) == "off"


def _scorer(cfg: AppConfig):
    return build_scorer(cfg.model, cfg.lora, seed=0)


def test_compiled_trainer_trains_and_predicts_like_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: no dropout (a padded chunk draws a different mask), aot_eager (the graphs torch.compile
    # traces, with gradients through them, without inductor's code generation: seconds on a CPU),
    # history-grad (one training graph; the no-grad graph is the one inference uses)
    monkeypatch.setattr(encoder_compile, "BACKEND", "aot_eager")
    cfg = AppConfig().replace(**{"model.base": "tiny-random", "model.dim": 16, "lora.dropout": 0.0,
                                 "model.head-dropout": 0.0, "train.batch-size": 8,
                                 "train.history-grad": True})  # fmt: skip
    results = {}
    # Execute
    for mode in ("off", "default"):
        scorer, _ = _scorer(cfg)
        part = tiny_part(32)
        metrics = train(scorer, [part], dataclasses.replace(cfg.train, compile=mode), CPU, seed=3)
        probs = predict(scorer, part, part.data, 16, CPU)
        results[mode] = (metrics["train-loss"], get_trainable_state(scorer), probs, compile_mode(scorer))
    # Assert: same loss, same adapter under the same names (no `_orig_mod.`), same scores; compiled inference
    (eager_loss, eager_state, eager_probs, _), (loss, state, probs, mode) = results["off"], results["default"]
    assert mode == "default"
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    assert list(state) == list(eager_state)
    for name, value in eager_state.items():
        np.testing.assert_allclose(state[name], value, atol=1e-5, rtol=1e-4, err_msg=name)
    assert not np.allclose(state["tower.weight"], _scorer(cfg)[0].tower.weight.detach().numpy())  # it trained
    np.testing.assert_allclose(probs, eager_probs, atol=1e-5, rtol=1e-4)
