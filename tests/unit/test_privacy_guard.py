"""A platform's own privacy budget (node_config) holds whatever run config the server sends."""

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from clients.privacy_guard import LEDGER_FILE, require_privacy, spend_round
from common.config import AppConfig, ConfigError
from common.privacy import calibrate

DP = {"privacy.target-epsilon": 2.0, "privacy.delta": 1e-4, "num-server-rounds": 3, "model.item-stats": False}


def _context(**node_config: float) -> Context:
    return Context(run_id=1, node_id=7, node_config=dict(node_config), state=RecordDict(), run_config={})


def _z(cfg: AppConfig) -> float:  # what the platform's mechanism calibrates (the tail share of delta set aside)
    return calibrate(cfg.privacy.target_epsilon, 0.999 * cfg.privacy.delta, cfg.num_server_rounds)


def test_an_honest_run_spends_exactly_the_pinned_budget_and_no_more(tmp_path: Path) -> None:
    # Prepare: a platform that pins epsilon 2, its ledger on disk; the run asks for 2 over 3 rounds
    cfg = AppConfig().replace(**DP)
    context = _context(**{"privacy-max-epsilon": 2.0})
    # Execute / Assert: three rounds fit, epsilon grows to the budget; a fourth is refused
    spent = [spend_round(context, tmp_path, cfg, rnd, _z(cfg)) for rnd in (1, 2, 3)]
    assert spent[0] < spent[1] < spent[2] <= 2.0
    assert (tmp_path / LEDGER_FILE).is_file()
    with pytest.raises(ConfigError, match="past its `privacy-max-epsilon` 2"):
        spend_round(context, tmp_path, cfg, 4, _z(cfg))


def test_a_server_that_raises_epsilon_or_rounds_midway_is_refused() -> None:
    context = _context(**{"privacy-max-epsilon": 2.0})
    honest = AppConfig().replace(**DP)
    spend_round(context, None, honest, 1, _z(honest))  # kept in context.state (simulated platform)
    # the server now claims 30 rounds: less noise per round; the platform counts what it really added
    more = honest.replace(**{"num-server-rounds": 30})
    for rnd in range(2, 30):
        try:
            spend_round(context, None, more, rnd, _z(more))
        except ConfigError:
            break
    else:
        pytest.fail("the platform never refused")
    greedy = honest.replace(**{"privacy.target-epsilon": 8.0, "num-server-rounds": 1})
    with pytest.raises(ConfigError, match="privacy-max-epsilon"):
        spend_round(_context(**{"privacy-max-epsilon": 2.0}), None, greedy, 1, _z(greedy))


def test_delta_and_privacy_itself_can_be_pinned() -> None:
    cfg = AppConfig().replace(**DP)
    with pytest.raises(ConfigError, match="exceeds this platform's `privacy-max-delta`"):
        spend_round(_context(**{"privacy-max-delta": 1e-5}), None, cfg, 1, _z(cfg))
    with pytest.raises(ConfigError, match="trains only with differential privacy"):
        require_privacy({"privacy-max-epsilon": 2.0}, AppConfig())
    require_privacy({}, AppConfig())  # no pin: a run without DP is the platform's choice
    with pytest.raises(ConfigError, match="must be positive"):
        require_privacy({"privacy-max-epsilon": 0.0}, cfg)


def test_the_platform_accounts_the_sampling_rate_it_applied_and_reads_a_ledger_from_before_sampling(
    tmp_path: Path,
) -> None:
    # Prepare: a run that samples a fifth of the users per round, calibrated for that rate
    import json

    cfg = AppConfig().replace(**{**DP, "privacy.user-rate": 0.2})
    z = calibrate(2.0, 0.999e-4, 3, 0.2)
    context = _context(**{"privacy-max-epsilon": 2.0})
    # Execute / Assert: three sampled rounds fit the budget; the ledger records each round's rate
    spent = [spend_round(context, tmp_path, cfg, rnd, z, 0.2) for rnd in (1, 2, 3)]
    assert 1.9 < spent[-1] <= 2.0
    assert json.loads((tmp_path / LEDGER_FILE).read_text())["rates"] == [0.2] * 3
    # the same noise without sampling would have spent far more: a server cannot claim a rate the platform
    # did not apply, because the platform passes the rate it samples with itself
    with pytest.raises(ConfigError, match="privacy-max-epsilon"):
        spend_round(_context(**{"privacy-max-epsilon": 2.0}), None, cfg, 1, z, 1.0)
    # a ledger written before sampling existed (no "rates") counts its rounds as unsampled
    old = tmp_path / "old"
    old.mkdir()
    (old / LEDGER_FILE).write_text(json.dumps({"rounds": [1], "multipliers": [z]}))
    after = spend_round(_context(), old, cfg, 2, z, 0.2)
    assert json.loads((old / LEDGER_FILE).read_text())["rates"] == [1.0, 0.2]
    assert after > spent[1]
    (old / LEDGER_FILE).write_text(json.dumps({"rounds": [1, 2], "multipliers": [z], "rates": [1.0]}))
    with pytest.raises(ConfigError, match="unreadable privacy ledger"):
        spend_round(_context(), old, cfg, 3, z, 0.2)
