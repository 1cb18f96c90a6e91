"""The fast trainer's mechanics: length buckets are exact, history items without gradient, the benches run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clients.trainer import PAD_MULTIPLE, batch_logits, length_chunks, referenced_items, text_vectors, train
from common.config import AppConfig
from common.modeling import build_scorer
from tests.tiny import tiny_part

CPU = torch.device("cpu")


def _scorer(dim: int = 16):
    cfg = AppConfig().replace(**{"model.base": "tiny-random", "model.dim": dim})
    return build_scorer(cfg.model, cfg.lora, seed=0)[0], cfg


@pytest.mark.parametrize("min_items", [1, 3, 64])
def test_length_chunks_partition_sorted_by_length(min_items: int) -> None:
    # Prepare
    lengths = np.array([5, 30, 9, 17, 2, 40, 8, 8, 33, 16])
    # Execute
    chunks = length_chunks(lengths, min_items)
    # Assert: every position once, lengths non-decreasing across chunks, cuts only at width steps
    flat = np.concatenate(chunks)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(lengths[flat]) >= 0)
    for left, right in zip(chunks, chunks[1:], strict=False):
        assert len(left) >= min_items
        assert -(-lengths[left].max() // PAD_MULTIPLE) < -(-lengths[right].min() // PAD_MULTIPLE)
    if min_items >= len(lengths):
        assert len(chunks) == 1


def test_bucketed_text_vectors_equal_one_padded_batch() -> None:
    # Prepare
    scorer, _ = _scorer()
    scorer.eval()
    part = tiny_part()
    rows = np.array([7, 3, 21, 0, 11, 29, 4])
    table = part.table
    ids = torch.from_numpy(table.tokens[rows])
    # Execute
    with torch.no_grad():
        bucketed = text_vectors(scorer, table, rows, CPU)
        reference = scorer.item_vectors(ids, (ids != table.pad_id).long())
    # Assert: same vectors, same row order (padding does not change a masked encoder's output)
    torch.testing.assert_close(bucketed, reference, atol=1e-5, rtol=1e-5)


def test_bucketed_chunks_come_back_in_row_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: chunks of one item each, so that the order is shuffled by length
    monkeypatch.setattr("clients.trainer.CHUNK_ITEMS", 1)
    scorer, _ = _scorer()
    scorer.eval()
    part = tiny_part()
    rows = np.arange(len(part.table))[::-1].copy()
    # Execute
    with torch.no_grad():
        together = text_vectors(scorer, part.table, rows, CPU)
        one_by_one = torch.cat([text_vectors(scorer, part.table, rows[i : i + 1], CPU) for i in range(len(rows))])
    # Assert
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)


def test_history_without_grad_same_logits_encoder_gradient_from_candidates_only() -> None:
    # Prepare
    scorer, _ = _scorer()
    scorer.eval()  # no dropout: both modes see the same forward
    part = tiny_part()
    data = part.data.take(np.arange(8))
    lora = [p for n, p in scorer.named_parameters() if "lora_B" in n]
    for p in lora:  # B starts at zero: give the adapter a non-zero path so A gets gradient too
        torch.nn.init.normal_(p, std=0.1)

    def grads(history_grad: bool) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        scorer.zero_grad(set_to_none=True)
        part.private.zero_grad(set_to_none=True)
        logits = batch_logits(scorer, part, data, CPU, history_grad)
        logits.sum().backward()
        enc = [p.grad.clone() for n, p in scorer.named_parameters() if "lora_A" in n]
        return logits.detach(), enc, part.private.item_residual.grad.clone()

    # Execute
    exact_logits, exact_enc, exact_res = grads(True)
    fast_logits, fast_enc, fast_res = grads(False)
    # Assert: identical scores; private residuals of history items still get their gradient;
    # the encoder's gradient differs (the history path is cut) but is not zero.
    torch.testing.assert_close(fast_logits, exact_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_res, exact_res, atol=1e-6, rtol=1e-5)
    history_only = np.setdiff1d(referenced_items(data), data.items)
    assert len(history_only) and torch.count_nonzero(fast_res[history_only]) > 0
    assert any(not torch.allclose(a, b) for a, b in zip(fast_enc, exact_enc, strict=True))
    assert all(torch.count_nonzero(g) > 0 for g in fast_enc)


@pytest.mark.parametrize("history_grad", [True, False])
def test_train_is_seeded_in_both_modes(history_grad: bool) -> None:
    # Prepare
    _, cfg = _scorer()
    spec = cfg.replace(**{"train.history-grad": history_grad, "train.batch-size": 8}).train
    losses = []
    # Execute
    for _ in range(2):
        scorer, _ = _scorer()
        losses.append(train(scorer, [tiny_part(32)], spec, CPU, seed=3)["train-loss"])
    # Assert
    assert np.isfinite(losses[0]) and losses[0] == losses[1]


def test_device_tokens_are_copied_once() -> None:
    part = tiny_part()
    first = part.table.device_tokens(CPU)
    assert part.table.device_tokens(CPU) is first
    assert torch.equal(first, torch.from_numpy(part.table.tokens))


def test_bench_train_quick_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.bench.train import main

    # Execute
    assert main(["--quick", "--json", "--train-examples", "32", "--infer-examples", "64", "--compile", "off"]) == 0
    # Assert
    payload = json.loads(capsys.readouterr().out)
    loops = {(r["phase"], r["loop"]) for r in payload["rows"]}
    assert loops == {("train", "eager"), ("train", "trainer history-grad"), ("train", "trainer"),
                     ("train", "cpu recipe"), ("inference", "eager"), ("inference", "trainer"),
                     ("inference", "cpu recipe")}  # fmt: skip
    assert all(r["samples_per_s"] > 0 for r in payload["rows"])
    assert all(r["tflops_per_s"] > 0 for r in payload["rows"] if r["loop"] != "cpu recipe")
    recipe = {r["phase"]: r for r in payload["rows"] if r["loop"] == "cpu recipe"}
    assert recipe["train"]["samples"] == 256 and recipe["train"]["tflops_per_s"] is None  # its own sample
    assert payload["ratios"]["train cpu recipe / trainer"] > 0  # next to today's default, in the same run
    assert all(r["mfu"] is None for r in payload["rows"])  # CPU: no known peak
    assert all(np.isfinite(v) and v > 0 for v in payload["ratios"].values())


def test_bench_train_times_the_compiled_trainer_apart_from_its_compile(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from simulations.bench.train import main

    # Prepare: dynamo alone (inductor takes minutes on a CPU; test_encoder_compile checks the maths)
    monkeypatch.setattr("clients.encoder_compile.BACKEND", "eager")
    # Execute
    assert main(["--quick", "--json", "--train-examples", "8", "--infer-examples", "8", "--batch", "8",
                 "--cpu-recipe-examples", "0"]) == 0  # fmt: skip
    # Assert: compiled rows for both phases, their first call (the compile) kept out of the rate
    payload = json.loads(capsys.readouterr().out)
    rows = {(r["phase"], r["loop"]): r for r in payload["rows"]}
    assert payload["ratios"]["train trainer compiled / trainer"] > 0
    assert 0 <= payload["compiled_max_abs_prob_diff"] < 1e-4
    for phase in ("train", "inference"):
        assert rows[(phase, "trainer compiled")]["samples_per_s"] > 0
        assert (
            rows[(phase, "trainer compiled")]["first_call_s"] > 0 and rows[(phase, "trainer")]["first_call_s"] is None
        )


def test_bench_train_rejects_bad_sizes() -> None:
    from simulations.bench.train import main

    with pytest.raises(SystemExit):
        main(["--quick", "--batch", "0"])


def test_make_shops_are_distinct_platforms() -> None:
    from simulations.bench.scale import make_shops

    shops = make_shops(7, users=5)
    assert sorted(shops) == [f"shop{i:03d}" for i in range(7)]
    assert len({item for p in shops.values() for item in p.items}) == sum(len(p.items) for p in shops.values())


def test_bench_scale_runs_a_small_federation(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.bench.scale import main

    # Execute
    code = main(["--platforms", "2", "--rounds", "1", "--json", "--set", "train.max-examples=32",
                 "--set", "eval.max-rank-users=2"])  # fmt: skip
    # Assert
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["platforms"] == 2 and len(result["rounds"]) == 1
    assert result["peak_rss_bytes"] > result["base_bytes"] > 0
    assert 0 <= result["rounds"][0]["train_s"] < result["rounds"][0]["seconds"]


def test_benches_do_not_import_flower_or_cryptography() -> None:
    # the GPU image has torch, transformers and peft only
    from tests.unit.test_compare_imports import CLI_HELP, _loaded

    code = "\n".join(["import simulations.bench.train, simulations.bench.scale, server.federation",
                      CLI_HELP.format(argv=["bench", "train", "--help"])])  # fmt: skip
    assert _loaded(code) == ""
