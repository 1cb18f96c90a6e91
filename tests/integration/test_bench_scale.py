"""``crossfed bench scale --engine flower``: a real 3-platform Flower simulation, memory summed over its processes."""

import json

import pytest


@pytest.mark.slow
def test_flower_engine_sums_memory_over_the_ray_process_tree(capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.bench.scale import main

    # Execute: one Ray CPU (one ClientApp actor), one round, a few examples
    sets = ["--set", "train.max-examples=16", "--set", "eval.max-rank-users=2", "--set", "model.max-length=48"]
    code = main(["--engine", "flower", "--platforms", "3", "--rounds", "1", "--cpus", "1", "--json", *sets])
    # Assert
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    (result,) = payload["results"]
    assert payload["engine"] == "flower" and result["platforms"] == 3 and len(result["rounds"]) == 1
    kinds = result["by_kind"]["max_processes"]
    seen = f"{kinds}; other processes: {result['other_processes']}"
    assert kinds.get("driver") == 1 and result["workers"] >= 1, seen
    # Ray's own processes are in the tree too. Not each kind every time: one clean-clone CI run saw
    # no raylet (not reproduced here, 5 local runs); the message then says what was seen
    daemons = sum(n for kind, n in kinds.items() if kind in ("raylet", "gcs", "ray-agent"))
    assert daemons >= 1, seen
    assert result["processes_max"] > 1
    # the sum is over processes: more than the largest one, and at least each kind's own peak
    assert result["peak_sum_rss_bytes"] > result["peak_process_rss_bytes"] > 0
    assert result["peak_sum_rss_bytes"] >= result["peak_sum_anon_bytes"] > 0
    assert result["budget_bytes"] == 2 * result["base_bytes"] + 3 * result["adapter_bytes"] + int(1.5 * 1024**3)
    assert result["within_budget"] == (result["peak_sum_rss_bytes"] <= result["budget_bytes"])
    assert result["round_s"] > 0 and result["rounds"][0]["failures"] == 0
