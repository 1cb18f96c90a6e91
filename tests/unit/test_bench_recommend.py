"""``crossfed bench recommend`` end to end at toy size: it runs, and its JSON holds what the table shows."""

import json
from pathlib import Path

from common.data import load_platform
from simulations.bench.recommend import main, synthetic_catalogue


def test_synthetic_catalogue_has_the_asked_size(tmp_path: Path) -> None:
    data = load_platform(synthetic_catalogue(tmp_path, items=300, users=7, per_user=5), "shop")
    assert len(data.items) == 300 and len(data.interactions) == 35
    assert len({r.user_id for r in data.interactions}) == 7


def test_bench_runs_and_writes_json(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # Execute
    assert main(["--items", "150", "--users", "3", "--naive-users", "1", "--data-users", "12",
                 "--http-requests", "2", "--out", str(tmp_path)]) == 0  # fmt: skip
    # Assert
    result = json.loads((tmp_path / "bench_recommend.json").read_text())
    assert result["config"]["items"] == 150 and result["http"]["GET /recommend (k=10)"]["n"] == 2
    assert result["top10_per_user_ms"]["p50"] > 0 and result["speedup_precomputed"] > 0
    assert "top-10 per user, precomputed vectors" in capsys.readouterr().out
