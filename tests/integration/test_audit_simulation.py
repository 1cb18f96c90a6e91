"""A secure Flower simulation leaves each platform an audit log: one signed entry per secure sum it joined."""

from collections import Counter
from pathlib import Path

import pytest

from clients.audit import AUDIT_FILE, CLEAR_METRICS
from common.audit import verify
from common.config import TINY_PRESET, AppConfig
from common.secagg import Identity
from common.secagg.messages import STAGE_MASKED_INPUT, STAGE_SETUP, STAGE_SHARE_KEYS
from simulations.local.simulate import run_simulated_federation, validate_inputs


@pytest.mark.slow  # a Flower simulation (Ray): about 90 s on 2 cores
def test_every_platform_logs_each_secure_round_it_took_part_in(tmp_path: Path) -> None:
    # Prepare: three tiny platforms, two secure rounds
    cfg = AppConfig().replace(**TINY_PRESET, **{"num-server-rounds": 2, "secagg": True, "out-dir": str(tmp_path)})
    platforms = validate_inputs(cfg)
    # Execute
    run_simulated_federation(cfg, platforms, num_cpus=2)
    # Assert: one log per platform, signed by that platform's (simulated) identity, chain and head intact
    assert len(platforms) == 3
    for platform in platforms:
        checked = verify(tmp_path / "private" / platform / AUDIT_FILE, [Identity.simulated(platform).public_key])
        entries = checked.entries
        assert [e["round"] for e in entries if e["kind"] == "train"] == [1, 2], platform
        assert max(Counter((e["round"], e["kind"]) for e in entries).values()) == 1  # one entry per sum
        assert {e["kind"] for e in entries} > {"train"}  # the metric sums are logged too
        for e in entries:
            assert e["platform"] == platform and e["run"] == str(tmp_path) and e["epsilon"] is None
            assert (e["cohort"], e["masked_with"]) == (3, 3) and len(e["context"]) == 64
            sent = [m["message"] for m in e["sent"]]
            assert sent[:1] == [STAGE_SETUP] and sent[-2:] == [STAGE_SHARE_KEYS, STAGE_MASKED_INPUT], sent
            assert (CLEAR_METRICS in sent) == (e["kind"] != "train")  # simulated platforms share their metrics
            assert all(m["bytes"] > 0 for m in e["sent"])
