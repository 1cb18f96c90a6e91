"""Run config: pyproject defaults, flat round trip, its text both ways, clear errors."""

import tomllib
from pathlib import Path

import pytest

from common.config import TINY_PRESET, AppConfig, ConfigError, config_string, parse_config_strings, parse_overrides

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


def test_config_text_written_is_read_back_as_the_same_values() -> None:
    # Prepare: every scalar kind, a string that needs the other quote, a path
    values = {"lora.r": 4, "train.lr": 0.001, "secagg": True, "model.base": "tiny-random",
              "data.dir": "/tmp/it's", "train.proximal-mu": 1e-05, "fed.server-lr": 1.0}  # fmt: skip
    # Execute: written as --run-config text, read back as --set pairs
    read = parse_overrides(config_string(values).split(" "))  # no value holds a space
    # Assert
    assert read == values and all(type(read[k]) is type(v) for k, v in values.items())
    assert AppConfig().replace(**read).data.dir == "/tmp/it's"


def test_overrides_keep_bare_strings_and_refuse_a_pair_without_value() -> None:
    assert parse_overrides(["data.dir=/tmp/data", " lora.r = 4 "]) == {"data.dir": "/tmp/data", "lora.r": 4}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["lora.r"])


def test_tiny_preset_is_a_valid_config() -> None:
    assert AppConfig().replace(**TINY_PRESET).model.base == "tiny-random"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"platform": "web_shop", "device": "cpu"}, "platform='web_shop' device='cpu'"),
        ({"data-dir": "/data/it's"}, 'data-dir="/data/it\'s"'),
        ({"require-secagg": False, "n": 3, "x": 0.5, "y": 1.0}, "require-secagg=false n=3 x=0.5 y=1.0"),
    ],
)
def test_config_strings_are_flower_parsable(values: dict, expected: str) -> None:
    assert config_string(values) == expected
    assert parse_config_strings([expected], "--node-config") == values  # what flower-supernode / flwr run read


def test_config_string_refuses_unquotable_values() -> None:
    with pytest.raises(ValueError, match="both quote kinds"):
        config_string({"a": 'it\'s "x"'})


def test_a_malformed_config_string_names_its_flag() -> None:
    with pytest.raises(ConfigError, match="--run-config"):
        parse_config_strings(["a='x"], "--run-config")


def test_several_config_strings_merge_key_by_key() -> None:
    # Flower 1.42's own merge keeps only the last string's `fed` table: fed.min-nodes was lost
    strings = ["fed.min-nodes=3 out-dir='/r'", "fed.node-names='1=app' secagg=true", "fed.min-nodes=4"]
    assert parse_config_strings(strings, "--run-config") == {
        "fed.min-nodes": 4, "out-dir": "/r", "fed.node-names": "1=app", "secagg": True}  # fmt: skip
    with pytest.raises(ConfigError, match='--run-config "b=\'x"'):  # the bad string is named
        parse_config_strings(["a=1", "b='x"], "--run-config")


def test_node_names_round_trip_and_a_bad_pair_is_named() -> None:
    from common.config import node_names_string, parse_node_names

    text = node_names_string({"456": "app", 123: "web_shop"})
    assert text == "123=web_shop,456=app"
    assert parse_node_names(text) == {123: "web_shop", 456: "app"}
    assert parse_node_names("") == {}
    assert AppConfig().replace(**{"fed.node-names": text}).fed.node_names == text
    with pytest.raises(ConfigError, match="`fed.node-names`.*'web_shop'"):
        AppConfig().replace(**{"fed.node-names": "123=app,web_shop"})
