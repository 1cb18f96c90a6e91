"""Pure helpers of the load benchmark (``crossfed bench deploy --nodes N``): no processes started."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest

from common.data import load_dataset
from common.run_files import ROUNDS_FILE
from deploy.bench import main as bench_main
from deploy.bench import ratio_lines, steady_start
from deploy.loadbench.dataset import bench_platforms, platform_names, write_bench_dataset
from deploy.loadbench.driver import polling
from deploy.loadbench.kills import KillEvent, kill_count, kill_schedule, restart_due
from deploy.loadbench.memory import MemoryPeaks, process_kind
from deploy.loadbench.rounds import final_test_missing, mark_rejoins, problems, summarize_rounds
from simulations.cli import main as cli_main

MIB = 1024 * 1024


def test_platform_names_sort_numerically() -> None:
    assert platform_names(3) == ["platform_00", "platform_01", "platform_02"]
    names = platform_names(120)
    assert names == sorted(names) and names[-1] == "platform_119" and len(set(names)) == 120


def test_bench_dataset_has_n_distinct_platforms_and_loads_back(tmp_path: Path) -> None:
    # Prepare / Execute
    names = write_bench_dataset(tmp_path / "data", 5, seed=1)
    loaded = load_dataset(tmp_path / "data")
    # Assert: every platform is one of the three synthetic shops, copies 0 and 1 differ
    assert names == sorted(loaded) == platform_names(5)
    assert all(len(p.interactions) > 0 and p.num_users >= 2 for p in loaded.values())
    first, fourth = loaded["platform_00"], loaded["platform_03"]  # shop "app", generator seeds 1 and 2
    assert set(first.items) == set(fourth.items)  # same catalogue ids ...
    assert [r.value for r in first.interactions] != [r.value for r in fourth.interactions]  # ... other ratings


def test_bench_platforms_are_deterministic() -> None:
    a, b = bench_platforms(4, seed=3), bench_platforms(4, seed=3)
    assert [p.interactions for p in a] == [p.interactions for p in b]
    with pytest.raises(ValueError):
        bench_platforms(0)


@pytest.mark.parametrize(("n", "fraction", "expected"), [(30, 0.2, 6), (10, 0.2, 2), (4, 0.25, 1), (7, 0.2, 2),
                                                         (5, 0.0, 0)])  # fmt: skip
def test_kill_count_is_ceil_without_float_noise(n: int, fraction: float, expected: int) -> None:
    assert kill_count(n, fraction) == expected


def test_kill_schedule_is_seeded_distinct_and_leaves_rounds_to_rejoin() -> None:
    names = platform_names(30)
    plan = kill_schedule(names, 0.2, rounds=5, seed=0)
    assert plan == kill_schedule(names, 0.2, rounds=5, seed=0)
    assert plan != kill_schedule(names, 0.2, rounds=5, seed=1)
    assert len(plan) == 6 and len({k.platform for k in plan}) == 6
    assert all(1 <= k.round <= 3 and 0.0 <= k.phase <= 1.0 for k in plan)
    assert [(k.round, k.phase) for k in plan] == sorted((k.round, k.phase) for k in plan)
    assert {k.round for k in kill_schedule(names, 0.2, rounds=1, seed=0)} == {1}


def test_kill_schedule_refuses_to_kill_almost_everyone() -> None:
    with pytest.raises(ValueError):
        kill_schedule(platform_names(4), 0.75, rounds=5)
    with pytest.raises(ValueError):
        kill_count(10, 1.0)


@pytest.mark.parametrize(("cmdline", "kind"), [
    (["/v/bin/python", "/v/bin/flower-superlink", "--host", "127.0.0.1"], "superlink"),
    (["/v/bin/python", "-m", "deploy.superlink_entry", "--host", "127.0.0.1"], "superlink"),
    (["/v/bin/python", "/v/bin/flower-superexec", "--plugin-type", "serverapp"], "superexec"),
    (["/v/bin/python", "/v/bin/flwr-serverapp", "--serverappio-api-address", "x"], "serverapp"),
    (["/v/bin/python", "-m", "deploy.supernode_entry", "--superlink", "x"], "supernode"),
    (["/v/bin/python", "-m", "deploy.worker", "--runtime-api-address", "x"], "clientapp"),
    (["sleep", "1"], "other"),
])  # fmt: skip
def test_process_kind(cmdline: list[str], kind: str) -> None:
    assert process_kind(cmdline) == kind


def test_memory_peaks_keep_largest_process_sum_and_count() -> None:
    peaks = MemoryPeaks()
    sums = peaks.add([("clientapp", 300 * MIB, 200 * MIB), ("clientapp", 400 * MIB, 300 * MIB),
                      ("supernode", 100 * MIB, 80 * MIB)])  # fmt: skip
    peaks.add([("clientapp", 450 * MIB, 350 * MIB), ("superlink", 200 * MIB, 150 * MIB)])
    assert sums == {"clientapp": 700.0, "supernode": 100.0}
    out = peaks.as_dict()
    assert out["peak_process_mib"] == {"superlink": 200.0, "supernode": 100.0, "clientapp": 450.0}
    assert out["peak_total_mib"] == {"superlink": 200.0, "supernode": 100.0, "clientapp": 700.0}
    assert out["peak_anon_total_mib"] == {"superlink": 150.0, "supernode": 80.0, "clientapp": 500.0}
    assert out["max_processes"] == {"superlink": 1, "supernode": 1, "clientapp": 2}
    assert out["peak_all_mib"] == 800.0 and out["peak_all_anon_mib"] == 580.0 and out["samples"] == 2


def _row(rnd: int, train: dict, evaluated: list[str], failures: list[str] = ()) -> dict:  # type: ignore[assignment]
    return {"round": rnd, "seconds": 10.0, "train": train, "eval": {p: {} for p in evaluated},
            "failures": list(failures)}  # fmt: skip


def test_rounds_summary_explains_failures_by_kills_and_finds_rejoins() -> None:
    # Prepare: b is killed at 5 s (round 1) and back at 40 s; c fails in round 2 but was never killed
    ids = {11: "a", 12: "b", 13: "c"}
    rows = [
        _row(
            1,
            {"a": {}, "c": {}},
            ["a", "c"],
            ["node 1: Error: Node Unavailable - missed heartbeats", "node 12: no reply within 600 s"],
        ),
        _row(2, {"a": {}}, ["a"], ["node 13: boom", "node 1: Error: Node Unavailable"]),
        {
            "round": 3,
            "seconds": 12.0,
            "train": {"secure-aggregation": {"survivors": 3.0}},
            "eval": {"a": {}, "b": {}, "c": {}},
            "failures": [],
        },  # fmt: skip
        {"round": 4, "seconds": 1.0, "aborted": "too many drops"},
    ]
    kills = [KillEvent("b", planned_round=1, round=1, t_kill=5.0, t_restart=30.0, t_online=40.0)]
    # Execute
    rounds = summarize_rounds(rows, {1: 20.0, 2: 45.0, 3: 60.0, 4: 61.0}, ids, kills)
    mark_rejoins(kills, rounds)
    lost = problems(rounds, requested=5, kills=kills, status="finished:completed")
    # Assert
    assert [r["trained"] for r in rounds] == [2, 1, 3, 0]
    assert rounds[0]["failed_platforms"] == ["b"] and rounds[0]["unexplained_failures"] == []
    assert rounds[1]["down"] == ["b"] and rounds[1]["unexplained_failures"] == ["c"]  # b explains "node 1"
    assert rounds[2]["trained_platforms"] is None and rounds[2]["down"] == []
    assert kills[0].rejoined_round == 3
    assert lost == ["4 of 5 rounds ran", "round 4 aborted: too many drops", "round 2: unexplained failure: c"]


def test_a_node_that_never_came_back_is_lost() -> None:
    kills = [KillEvent("b", 1, round=1, t_kill=1.0, t_restart=30.0, t_online=math.nan)]
    rows = [_row(1, {"a": {}}, ["a"]), _row(2, {"a": {}}, ["a"], ["node 1: Error: Node Unavailable"])]
    rounds = summarize_rounds(rows, {1: 5.0, 2: 9.0}, {}, kills)
    mark_rejoins(kills, rounds)
    assert rounds[1]["down"] == ["b"] and rounds[1]["unexplained_failures"] == []
    assert problems(rounds, 2, kills, "finished:completed") == ["b (killed in round 1) never took part again"]


def test_bench_without_nodes_keeps_the_mode_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_main(["--help"])
    assert "--modes" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # `crossfed bench deploy --nodes N`: the load test
        cli_main(["bench", "deploy", "--nodes", "30", "--help"])
    assert "--kill-fraction" in capsys.readouterr().out


def test_polling_slows_down_beyond_ten_nodes_unless_given() -> None:
    assert polling(4) == (0.25, 0.05) and polling(10) == (0.25, 0.05)
    assert polling(20) == (0.5, 0.1)
    assert polling(30) == (0.75, 0.15)
    assert polling(100) == (1.0, 0.25)
    assert polling(30, poll_s=0.3, worker_poll_s=0.02) == (0.3, 0.02)


def test_restart_waits_for_the_delay_and_with_after_round_for_the_round_to_end() -> None:
    event = KillEvent("b", planned_round=2, round=2, t_kill=100.0)
    assert not restart_due(event, 120.0, rounds_done=2, rejoin_after_s=25.0, policy="after-round")  # too early
    assert restart_due(event, 130.0, rounds_done=1, rejoin_after_s=25.0, policy="after-delay")
    assert not restart_due(event, 130.0, rounds_done=1, rejoin_after_s=25.0, policy="after-round")  # round 2 goes on
    assert restart_due(event, 130.0, rounds_done=2, rejoin_after_s=25.0, policy="after-round")
    event.t_restart = 131.0
    assert not restart_due(event, 200.0, rounds_done=3, rejoin_after_s=25.0, policy="after-delay")  # once only


def test_final_test_missing_names_platforms_without_test_metrics(tmp_path: Path) -> None:
    assert final_test_missing(tmp_path, ["a", "b"]) is None  # no summary: the run did not finish
    (tmp_path / "summary.json").write_text(json.dumps({"test": {"a": {"auc": 0.6}, "b": {}}}))
    assert final_test_missing(tmp_path, ["a", "b", "c"]) == ["b", "c"]
    lost = problems([], 0, [], "finished:completed", untested=["b"])
    assert lost == ["final test evaluation has no metrics from b"]


def test_bench_prints_each_deployed_mode_over_the_simulation_round_by_round() -> None:
    results = {"sim": {"rounds": [9.0, 1.0, 2.0]}, "warm": {"rounds": [12.0, 3.0, 5.0]}, "cold": {"rounds": [30.0]}}
    assert ratio_lines(results) == ["warm / sim: round 2: 3.0x, round 3: 2.5x; rounds>=2 median 2.7x"]


def test_steady_rounds_start_when_round_one_was_recorded(tmp_path: Path) -> None:
    rows = [{"round": 1, "seconds": 9.0, "time": "2026-12-07T21:10:27+00:00"}, {"round": 2, "seconds": 4.0}]
    (tmp_path / ROUNDS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert steady_start(tmp_path) == datetime.fromisoformat("2026-12-07T21:10:27+00:00").timestamp()
    (tmp_path / ROUNDS_FILE).write_text(json.dumps({"round": 1, "seconds": 9.0}) + "\n")
    assert steady_start(tmp_path) == 0.0
