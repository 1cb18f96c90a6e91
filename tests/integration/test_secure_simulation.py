"""Secure aggregation inside a real Flower simulation: same fused adapter as in the clear."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from clients.audit import AUDIT_FILE
from common.audit import verify
from common.config import TINY_PRESET, AppConfig
from common.privacy import calibrate
from common.run_files import ROUNDS_FILE
from simulations.local.simulate import run_simulated_federation, validate_inputs

TINY = {**TINY_PRESET, "num-server-rounds": 1}


def _adapter(run: Path) -> dict[str, np.ndarray]:
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    tensors.update(load_file(str(run / "adapter" / "head.safetensors")))  # tower, user, head
    return tensors


def test_secure_fusion_equals_plain_fusion_within_quantisation_bound(tmp_path: Path) -> None:
    # Prepare: the same seed, data and model, once in the clear and once under secure aggregation
    plain = AppConfig().replace(**TINY, **{"out-dir": str(tmp_path / "plain")})
    secure = plain.replace(**{"out-dir": str(tmp_path / "secure"), "secagg": True})
    platforms = validate_inputs(plain)
    # Execute
    run_simulated_federation(plain, platforms, num_cpus=2)
    run_simulated_federation(secure, platforms, num_cpus=2)
    # Assert: the server saw only the sum, from all three platforms, and the fused adapters agree
    record = json.loads((tmp_path / "secure" / ROUNDS_FILE).read_text().splitlines()[0])
    agg = record["train"]["secure-aggregation"]
    assert agg["survivors"] == 3 and agg["clipped-values"] == 0 and not record["failures"]
    assert set(record["train"]) == {"secure-aggregation"}  # no per-platform train numbers
    bound = agg["mean-error-bound"]
    assert 0 < bound < 1e-6
    a, b = _adapter(tmp_path / "plain"), _adapter(tmp_path / "secure")
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= bound + 1e-7, worst  # + one float32 rounding of the stored adapter
    assert any(float(np.max(np.abs(v))) > 0 for k, v in b.items() if "lora_B" in k)
    # ... and reach the same metrics (simulated platforms opt in to sharing them)
    sa, sb = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("plain", "secure"))
    for platform, metrics in sa["test"].items():
        for key in ("auc", "logloss", "hr@10", "ndcg@10"):
            assert abs(metrics[key] - sb["test"][platform][key]) < 1e-3, (platform, key)
    # ... and the secure sum of evaluation metrics gives the plain example-weighted mean
    for key in ("valid.auc", "valid.logloss", "valid.n", "test.auc", "test.hr@10", "test.rank-users"):
        assert abs(sa["mean"][key] - sb["mean"][key]) < 1e-4, (key, sa["mean"][key], sb["mean"][key])
    assert sb["best_cohort"] == sorted(sa["test"])
    assert (tmp_path / "secure" / "private" / platforms[0] / "metrics.jsonl").is_file()  # each platform's own log


def test_differential_privacy_under_secure_aggregation_in_a_flower_simulation(tmp_path: Path) -> None:
    # Prepare: secure aggregation with user-level DP, 4 users a platform, each sampled into the round with
    # probability 1/2 (the DP arms of compare cover every user in every round), the DP arms' grid
    cfg = AppConfig().replace(**TINY, **{
        "out-dir": str(tmp_path / "dp"), "secagg": True, "data.max-users": 4, "privacy.target-epsilon": 4.0,
        "privacy.user-rate": 0.5, "secure.clip-range": 512.0, "secure.quant-bits": 32, "model.item-stats": False,
    })  # fmt: skip
    # Execute
    run_simulated_federation(cfg, validate_inputs(cfg), num_cpus=2)
    # Assert: all three platforms' noisy sums were summed (weight 1 each), the server fused them with the
    # noisy user count, and the round's epsilon is the budget for the run's one round (delta = 1/12 users)
    record = json.loads((tmp_path / "dp" / ROUNDS_FILE).read_text().splitlines()[0])
    assert not record["failures"]
    agg = record["train"]["secure-aggregation"]
    assert agg["survivors"] == 3 and agg["total-weight"] == 3 and agg["clipped-values"] == 0
    assert record["train"]["differential-privacy"]["noisy-users"] >= 1
    assert record["privacy"]["epsilon"] == pytest.approx(4.0, abs=1e-3) and record["privacy"]["delta"] == 1 / 12
    assert record["privacy"]["user-rate"] == 0.5  # accounted as Poisson-sampled: less noise than for every user
    assert record["privacy"]["noise-multiplier"] < calibrate(4.0, 0.999 / 12, 1)
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] == record["privacy"]["epsilon"]
    # and each platform's audit log says what its own ledger spent, sampling included (its delta keeps a tail
    # share back)
    for platform in record["eval"]:
        (train,) = [e for e in verify(tmp_path / "dp" / "private" / platform / AUDIT_FILE).entries
                    if e["kind"] == "train"]  # fmt: skip
        assert train["epsilon"] == pytest.approx(record["privacy"]["epsilon"], rel=0.05), platform
