"""Run config: pyproject defaults, flat round trip, clear errors."""

import tomllib
from pathlib import Path

import pytest

from common.config import AppConfig, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_defaults_equal_dataclass_defaults() -> None:
    # The Flower app config and the dataclass defaults must be one and the same.
    flwr_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    assert flat(flwr_cfg) == AppConfig().to_flat()


def test_flat_round_trip_and_override() -> None:
    cfg = AppConfig().replace(**{"lora.r": 4, "train.lr": 1, "secagg": "true"})
    assert cfg.lora.r == 4 and cfg.train.lr == 1.0 and cfg.secagg is True
    assert AppConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize(
    "override,match",
    [
        ({"lora.rr": 1}, "unknown config key `lora.rr`"),
        ({"nosection.x": 1}, "unknown config section"),
        ({"lora.r": 0}, "`lora.r` must be positive, got 0"),
        ({"lora.r": "eight"}, "`lora.r` must be int"),
        ({"lora.dropout": 1.5}, r"`lora.dropout` must be in \[0, 1\)"),
        ({"fed.metric": "mse"}, "`fed.metric` must be one of"),
        ({"train.compile": "fast"}, "`train.compile` must be one of off, default"),
        ({"lora.target-modules": " , "}, "`lora.target-modules` must name"),
        ({"num-server-rounds": 2.5}, "`num-server-rounds` must be int"),
    ],
)
def test_bad_values_name_the_key(override: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AppConfig().replace(**override)


@pytest.mark.parametrize("raw", ["5,1", "1-5", "1,5,7"])
def test_bad_rating_scale_names_the_key(raw: str) -> None:
    with pytest.raises(ConfigError, match="`data.rating-scale`"):
        AppConfig().replace(**{"data.rating-scale": raw})


def test_rating_scale_is_parsed() -> None:
    assert AppConfig().data.scale is None
    assert AppConfig().replace(**{"data.rating-scale": "1,5"}).data.scale == (1.0, 5.0)
