"""simulations.compare.jobs without training: unit planning, record round trips, fingerprints, failures, budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.config import AppConfig, ConfigError
from common.run_files import clean
from simulations.compare import jobs
from simulations.compare.arms import ARMS, resolve_arms
from simulations.compare.runner import Record

SCENARIO = {"users": {"a": 3}, "interactions": {"a": 9}, "large_platform": None, "scarce_fraction": None}


def _spec(tmp_path: Path, names: str, seed: int = 0) -> jobs.UnitSpec:
    arms = tuple(resolve_arms(names.split(","), []))
    cfg = AppConfig().replace(seed=seed)
    fps = {a.name: jobs.fingerprint(cfg, a, SCENARIO, "") for a in arms}
    return jobs.UnitSpec(jobs.Unit("full", seed, arms), cfg, ("a",), tmp_path, frozenset(), fps)


def test_units_keep_finetune_with_federated_and_cheap_arms_together() -> None:
    arms = resolve_arms(["local", "federated", "fed+finetune", "pooled", "like-rate", "popularity"], [])
    units = jobs.plan_units(arms, ["full", "scarce"], 2)
    labels = [u.label for u in units]
    assert labels[:4] == ["full/seed0/local", "full/seed0/federated,fed+finetune", "full/seed0/pooled",
                          "full/seed0/like-rate,popularity"]  # fmt: skip
    assert len(units) == 16 and labels[4].startswith("scarce/seed0/") and units[-1].seed == 1  # seed-major


def test_mixing_runs_in_the_federated_unit_after_local_and_federated() -> None:
    arms = resolve_arms(["local", "federated", "fed+mix", "fed+finetune", "pooled", "like-rate"], [])
    labels = [u.label for u in jobs.plan_units(arms, ["full"], 1)]
    assert labels == ["full/seed0/local,federated,fed+mix,fed+finetune", "full/seed0/pooled", "full/seed0/like-rate"]
    with pytest.raises(ConfigError, match="fed\\+mix"):
        resolve_arms(["federated", "fed+mix"], [])


def test_record_round_trip_and_fingerprint(tmp_path: Path) -> None:
    # Prepare: a record with a NaN metric and test scores
    spec = _spec(tmp_path, "local")
    record = Record({"a": {"auc": math.nan, "n": 2.0}}, wall_s=1.5, rounds=["r"], best_round={"a": 1},
                    scores={"a": {"labels": [0.0, 1.0], "probs": [0.2, 0.7]}})  # fmt: skip
    fp = spec.fingerprints["local"]
    # Execute
    jobs.write_record(tmp_path, "full", 0, "local", fp, record)
    back = jobs.read_record(tmp_path, "full", 0, "local", fp)
    # Assert
    assert back is not None and math.isnan(back.per_platform["a"]["auc"]) and back.scores == record.scores
    assert back.rounds == ["r"] and back.best_round == {"a": 1} and jobs.is_done(spec)
    assert jobs.read_record(tmp_path, "full", 0, "local", "other") is None  # config changed: rerun
    other = jobs.fingerprint(AppConfig().replace(**{"train.lr": 0.1}), ARMS["local"], SCENARIO, "")
    assert other != fp and fp == jobs.fingerprint(AppConfig().replace(**{"out-dir": "/x"}), ARMS["local"], SCENARIO, "")
    jobs.forget(spec)
    assert not jobs.is_done(spec)


def test_sequential_failure_is_reported_and_budget_stops_launching(tmp_path: Path, monkeypatch) -> None:
    # Prepare: every unit raises
    def boom(spec: jobs.UnitSpec) -> tuple:
        raise ValueError("no data")

    monkeypatch.setattr(jobs, "run_unit", boom)
    specs = [_spec(tmp_path, "local", seed) for seed in (0, 1)]
    seen: list[jobs.Finished] = []
    # Execute
    outcome = jobs.execute(specs, 1, None, seen.append)
    # Assert: both ran, both failed with one line naming the unit; their output went to the log
    assert [f.error for f in outcome.failed] == ["ValueError: no data"] * 2 and seen == outcome.finished
    line = jobs.progress_line(outcome.failed[0], 1, 2)
    assert line.startswith("[1/2] full seed 0 FAILED full/seed0/local: ValueError: no data")
    assert "ValueError: no data" in jobs.log_path(specs[0]).read_text()
    # a spent budget launches nothing
    late = jobs.execute(specs, 1, deadline=0.0, on_finish=seen.append)
    assert late.finished == [] and late.not_started == specs


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_jsonable_turns_non_finite_into_null(value: float) -> None:
    import numpy as np

    assert clean({"x": [np.float32(1.5), value], "y": np.arange(2)}) == {"x": [1.5, None], "y": [0, 1]}


def test_scenario_lists_and_shorthands() -> None:
    from simulations.compare.arms import SCENARIOS, parse_scenarios

    assert parse_scenarios("both") == ["full", "scarce"]
    assert parse_scenarios("all") == list(SCENARIOS) == ["full", "scarce", "new-items", "new-users"]
    assert parse_scenarios("new-items") == ["new-items"]
    assert parse_scenarios("full, new-users,full,both") == ["full", "new-users", "scarce"]
    for bad in ("bogus", "full,", ""):
        with pytest.raises(ConfigError, match="`--scenario`"):
            parse_scenarios(bad)


def test_cold_start_scenario_overrides_reach_the_unit_config_and_fingerprint(tmp_path: Path, monkeypatch) -> None:
    # Prepare: this branch's config has no data.cold-start: stand a known key in for it; run no unit
    from types import SimpleNamespace

    from simulations.compare import command as compare_run

    monkeypatch.setitem(compare_run.SCENARIO_OVERRIDES, "new-items", {"data.history-len": 2})
    seen: list[jobs.UnitSpec] = []
    monkeypatch.setattr(jobs, "execute", lambda todo, *a: seen.extend(todo) or SimpleNamespace(not_started=[]))
    monkeypatch.setattr(compare_run, "write_report", lambda out, results, meta, plots=True: {"meta": meta})
    opts = compare_run.CompareOptions(out=str(tmp_path), seeds=1, size="ci", scenario="full,new-items",
                                      arms=["like-rate"])  # fmt: skip
    # Execute
    meta = compare_run.run_compare(opts)["meta"]
    # Assert: the override is in the new-items unit's config only, hence in its fingerprint
    by_scenario = {s.unit.scenario: s for s in seen}
    assert by_scenario["new-items"].cfg.data.history_len == 2 != by_scenario["full"].cfg.data.history_len
    assert by_scenario["new-items"].fingerprints["like-rate"] != by_scenario["full"].fingerprints["like-rate"]
    assert meta["scenarios"]["new-items"]["overrides"] == {"data.history-len": 2}
    assert "overrides" not in meta["scenarios"]["full"]
    # the real key: unknown to this branch's config, so the run stops before anything runs
    monkeypatch.setitem(compare_run.SCENARIO_OVERRIDES, "new-items", {"data.cold-start": "new-items"})
    if "data.cold-start" not in AppConfig().to_flat():
        with pytest.raises(ConfigError):
            compare_run.run_compare(opts)


def test_a_config_key_at_its_default_leaves_the_fingerprint_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: today's fingerprints of two units, then a "newer" config with one more key
    slow, fast = (AppConfig().replace(**{"train.lr": lr}) for lr in (0.004, 0.1))
    before = [jobs.fingerprint(cfg, ARMS["local"], SCENARIO, "") for cfg in (slow, fast)]
    real = AppConfig.to_flat
    # Execute: the new key is at its default (False) everywhere but in the fast unit (the arm sets nothing, so
    # no replace() round trip, which would refuse a key this config does not know)
    monkeypatch.setattr(AppConfig, "replace", lambda self, **overrides: self)
    monkeypatch.setattr(AppConfig, "to_flat", lambda self: {**real(self), "feature.added-later": self.train.lr > 0.01})
    after = [jobs.fingerprint(cfg, ARMS["local"], SCENARIO, "") for cfg in (slow, fast)]
    # Assert: the unit at the default keeps its records; the one away from it is a different run
    assert after[0] == before[0] and after[1] != before[1]
