"""Smoke test of the benchmark script on tiny sizes."""

from __future__ import annotations

import json

from simulations.bench.secagg import main, overhead_estimate, run_bench


def test_run_bench_tiny_rows():
    rows = run_bench(platforms=(3,), params=(2_000,), verbose=False)
    (row,) = rows
    assert row["platforms"] == 3 and row["params"] == 2_000
    assert set(row["client_s"]) == {"setup", "share_keys", "masked_input", "consistency", "unmask"}
    assert 0 < row["security_added_s"] < row["critical_path_s"] and row["security_added_fraction"] > 0
    assert 1.0 <= row["upload_vs_quantised"] < 1.5
    assert row["keystream_gbps"] > 0 and row["mersenne_twister_gbps"] > 0
    assert 0 < row["dp_noise_s"] < 1.0  # one platform's DP noise share for 2,000 values
    # issue 22's added work: each part measured, the slots' share of mask/unmask by their share of the words
    privacy = row["privacy_s"]
    assert all(privacy[k] > 0 for k in ("l2_check_s", "audit_entry_s", "slots_s", "dp_noise_s"))
    assert privacy["slot_words"] == 384
    assert privacy["total_s"] == privacy["checks_s"] + privacy["dp_noise_s"]
    assert row["privacy_fraction"] == privacy["total_s"] / row["critical_path_s"]
    assert overhead_estimate(rows) is None
    est = overhead_estimate(rows, platforms=3, params=2_000, train_examples=14, train_rate=14.0)
    assert est is not None and est["training_s"] == 1.0 and 0 < est["overhead_fraction"] < 1


def test_main_writes_json(tmp_path, capsys):
    assert main(["--platforms", "3", "--params", "1000", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "bench_secagg.json").read_text())
    assert payload["rows"][0]["params"] == 1000
    out = capsys.readouterr().out
    assert (
        "Traffic per platform" in out
        and "Privacy checks and DP" in out
        and "audit entry s" in out
        and "% of a 10.11 s round" in out
    )
