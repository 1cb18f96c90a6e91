"""`crossfed bench batch --quick`: two batch sizes on the embedded shops, every row measured, a choice made."""

import json
import math
from pathlib import Path

import pytest

from simulations.cli import main


@pytest.mark.slow
def test_bench_batch_quick_writes_both_rows_and_a_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: --quick (tiny-random base, size ci, batches 16 and 64, one seed), one round, fewer users
    out = tmp_path / "bench"
    argv = ["bench", "batch", "--quick", "--json", "--out", str(out), "--set", "num-server-rounds=1",
            "--set", "data.max-users=10"]  # fmt: skip
    # Execute
    assert main(argv) == 0
    # Assert: stdout is the JSON alone; the same payload is in bench.json, with table.md and the plot
    payload = json.loads(capsys.readouterr().out)
    assert payload == json.loads((out / "bench.json").read_text())
    assert (out / "table.md").read_text().count("| 16 |") == 1 and (out / "bench.png").stat().st_size > 0
    rows = payload["rows"]
    assert [r["batch"] for r in rows] == [16, 64] and not payload["failed"]
    assert payload["chosen_batch"] in (16, 64) and sum(r["chosen"] for r in rows) == 1
    assert rows[1]["lr"] == pytest.approx(2 * rows[0]["lr"])  # sqrt rule: 4x the batch, 2x the lr
    for r in rows:
        assert 0.0 <= r["valid_auc"] <= 1.0 and 0.0 <= r["test_auc"] <= 1.0, r
        assert r["samples_per_s"] > 0 and math.isfinite(r["speedup"]) and r["seeds_done"] == 1
    # same examples seen by both batch sizes, in a quarter of the steps
    assert rows[0]["examples"] == rows[1]["examples"] > 0
    assert rows[0]["steps"] == 4 * rows[1]["steps"]
    assert rows[0]["speedup"] == 1.0  # the reference batch (the ci preset's 16)
