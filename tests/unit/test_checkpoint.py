"""server.checkpoint: round-trip, atomic replacement, and refusal of bad checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import re
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.checkpoint import (
    KEY_ENV,
    MANIFEST,
    CheckpointError,
    RunState,
    _digest,
    check_config,
    checkpoint_key,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)

CONFIG = {"lora.r": 8, "lora.alpha": 16, "train.lr": 0.002, "model.base": "tiny-random", "secagg": False,
          "num-server-rounds": 5, "out-dir": "/runs/a"}  # fmt: skip


def _tensors(seed: int) -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return OrderedDict([
        ("encoder.layer.0.attention.query.lora_A.weight", rng.normal(size=(4, 8)).astype(np.float32)),
        ("encoder.layer.0.attention.query.lora_B.weight", rng.normal(size=(8, 4)).astype(np.float32)),
        ("head.weight", rng.normal(size=(1, 8)).astype(np.float32)),
    ])  # fmt: skip


def _adam_moments(seed: int) -> OrderedDict[str, np.ndarray]:
    """common.fusion.server_adam_step's state: `m:`/`v:` names, float64."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, value in _tensors(seed).items():
        out[f"m:{name}"], out[f"v:{name}"] = value.astype(np.float64) / 3, value.astype(np.float64) ** 2
    return out


OPTIMIZERS = {"fedavgm": lambda r: _tensors(100 + r), "fedadam": _adam_moments, "fedavg": lambda r: OrderedDict(),
              "none": lambda r: None}  # fmt: skip


def _state(rnd: int = 3, optimizer: str = "fedavgm") -> RunState:
    return RunState(
        round=rnd, global_state=_tensors(rnd), config=dict(CONFIG),
        optimizer_state=OPTIMIZERS[optimizer](rnd),
        best_round=rnd - 1, best_score=0.71, best_state=_tensors(50 + rnd),
        best_metrics={"mean": {"valid.auc": 0.71, "test.logloss": float("nan")}, "app": {"valid.n": 12.0}},
        stale=1,
    )  # fmt: skip


def _assert_same_tensors(a: OrderedDict[str, np.ndarray] | None, b: OrderedDict[str, np.ndarray] | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert list(a) == list(b)  # order kept
    for k in a:
        assert b[k].dtype == a[k].dtype
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_round_trip_restores_everything(tmp_path: Path, optimizer: str) -> None:
    # Prepare
    state = _state(optimizer=optimizer)
    # Execute
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path, CONFIG)
    # Assert
    assert loaded is not None
    _assert_same_tensors(state.global_state, loaded.global_state)
    _assert_same_tensors(state.optimizer_state, loaded.optimizer_state)  # float64 moments stay float64
    _assert_same_tensors(state.best_state, loaded.best_state)
    assert (loaded.round, loaded.best_round, loaded.best_score, loaded.stale) == (3, 2, 0.71, 1)
    assert loaded.config == CONFIG
    assert math.isnan(loaded.best_metrics["mean"]["test.logloss"])
    assert loaded.best_metrics["app"] == {"valid.n": 12.0}


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path, CONFIG) is None
    assert load_checkpoint(tmp_path / "missing", CONFIG) is None


def test_infinite_best_score_survives(tmp_path: Path) -> None:
    # Prepare: before any improvement the best score is -inf (JSON has no infinity)
    state = _state()
    state.best_score, state.best_round, state.best_state = -math.inf, 0, None
    # Execute
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path, CONFIG)
    # Assert
    assert loaded is not None and loaded.best_score == -math.inf and loaded.best_state is None
    json.loads((tmp_path / MANIFEST).read_text())  # strict JSON, no bare -Infinity


def test_newer_round_replaces_older_and_removes_its_tensors(tmp_path: Path) -> None:
    # Execute
    save_checkpoint(tmp_path, _state(rnd=3))
    save_checkpoint(tmp_path, _state(rnd=4))
    # Assert
    loaded = load_checkpoint(tmp_path, CONFIG)
    assert loaded is not None and loaded.round == 4
    _assert_same_tensors(loaded.global_state, _tensors(4))
    assert [p.name for p in tmp_path.glob("checkpoint-r*.safetensors")] == ["checkpoint-r000004.safetensors"]
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_crash_before_manifest_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: round 3 saved; round 4 dies while writing its manifest
    save_checkpoint(tmp_path, _state(rnd=3))
    import server.checkpoint as ckpt

    real = ckpt.atomic_write_text

    def dying(path: Path, text: str, **kwargs: Any) -> None:
        if path.name == MANIFEST:
            raise OSError("disk full")
        real(path, text, **kwargs)

    monkeypatch.setattr(ckpt, "atomic_write_text", dying)
    # Execute
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, _state(rnd=4))
    monkeypatch.undo()
    # Assert: round 3 is still whole
    loaded = load_checkpoint(tmp_path, CONFIG)
    assert loaded is not None and loaded.round == 3
    _assert_same_tensors(loaded.global_state, _tensors(3))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete"])
def test_damaged_tensor_file_is_refused_naming_it(tmp_path: Path, damage: str) -> None:
    # Prepare
    save_checkpoint(tmp_path, _state())
    (tensor_file,) = tmp_path.glob("checkpoint-r*.safetensors")
    data = tensor_file.read_bytes()
    if damage == "truncate":
        tensor_file.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        tensor_file.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    else:
        tensor_file.unlink()
    # Execute / Assert
    with pytest.raises(CheckpointError, match=tensor_file.name):
        load_checkpoint(tmp_path, CONFIG)


@pytest.mark.parametrize("damage", ["truncate", "alter_round", "alter_config", "not_json"])
def test_damaged_manifest_is_refused_naming_it(tmp_path: Path, damage: str) -> None:
    # Prepare
    path = save_checkpoint(tmp_path, _state())
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "not_json":
        path.write_bytes(b"\x00\x01garbage")
    else:
        manifest = json.loads(text)
        if damage == "alter_round":
            manifest["state"]["round"] = 9
        else:
            manifest["state"]["config"]["lora.r"] = 4
        path.write_text(json.dumps(manifest))
    # Execute / Assert
    with pytest.raises(CheckpointError, match=MANIFEST):
        load_checkpoint(tmp_path, CONFIG)


def test_different_config_is_refused_naming_the_keys(tmp_path: Path) -> None:
    # Prepare
    save_checkpoint(tmp_path, _state())
    other = {**CONFIG, "lora.r": 4, "train.lr": 0.01}
    # Execute / Assert
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, other)
    assert "`lora.r` (checkpoint 8, now 4)" in str(err.value)
    assert "`train.lr`" in str(err.value)
    assert "lora.alpha" not in str(err.value)


def test_resumable_keys_may_change(tmp_path: Path) -> None:
    # Prepare: more rounds, and the run folder moved
    save_checkpoint(tmp_path, _state())
    resumed = {**CONFIG, "num-server-rounds": 10, "out-dir": "/elsewhere"}
    # Execute
    loaded = load_checkpoint(tmp_path, resumed)
    # Assert
    assert loaded is not None and loaded.config["num-server-rounds"] == 5  # what was saved


@pytest.mark.parametrize(
    ("saved", "expected", "named"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, "`b` (not in the checkpoint"),
        ({"a": 1, "b": 2}, {"a": 1}, "`b` (checkpoint 2; not in this config)"),
        ({"a": True}, {"a": 1}, "`a`"),
    ],
)
def test_check_config_names_missing_extra_and_retyped_keys(saved: dict, expected: dict, named: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(named)):
        check_config(saved, expected, resumable_keys=())


def test_check_config_treats_int_and_float_alike() -> None:
    check_config({"fed.server-lr": 1}, {"fed.server-lr": 1.0}, resumable_keys=())


@pytest.mark.parametrize(
    "breakage",
    ["float64_tensor", "int_optimizer_tensor", "best_shape", "best_names", "best_after_round"],
)
def test_inconsistent_state_is_not_written(tmp_path: Path, breakage: str) -> None:
    # Prepare
    state = _state()
    name = next(iter(state.global_state))
    if breakage == "float64_tensor":
        state.global_state[name] = state.global_state[name].astype(np.float64)
    elif breakage == "int_optimizer_tensor":
        state.optimizer_state[name] = np.zeros((2, 2), np.int64)  # type: ignore[index]
    elif breakage == "best_shape":
        state.best_state[name] = np.zeros((2, 2), np.float32)  # type: ignore[index]
    elif breakage == "best_names":
        state.best_state = OrderedDict(list(state.best_state.items())[1:])  # type: ignore[union-attr]
    else:
        state.best_round = state.round + 1
    # Execute / Assert
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path, state)
    assert not (tmp_path / MANIFEST).exists()


def test_remove_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state())
    remove_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path, CONFIG) is None
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- tamper evidence (HMAC)


def _rehash(path: Path, edit: Callable[[dict], None]) -> None:
    """What an attacker with write access to the run folder can do: edit, then recompute every digest."""
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["state_sha256"] = _digest(manifest["state"])
    path.write_text(json.dumps(manifest))


def _scale_adapter(run: Path) -> Callable[[dict], None]:
    from safetensors.numpy import load_file, save_file

    def edit(manifest: dict) -> None:
        tensor_file = run / manifest["tensors"]["file"]
        tensors = {k: v * 100 for k, v in load_file(str(tensor_file)).items()}
        save_file(tensors, str(tensor_file))
        blob = tensor_file.read_bytes()
        manifest["tensors"].update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))

    return edit


@pytest.mark.parametrize("tamper", ["scale_adapter", "best_score", "strip_mac"])
def test_tampered_and_rehashed_checkpoint_is_refused(tmp_path: Path, tamper: str) -> None:
    # Prepare: a checkpoint, then an edit whose SHA-256 digests are all recomputed
    key = bytes(range(32))
    path = save_checkpoint(tmp_path, _state(), key=key)
    if tamper == "scale_adapter":
        _rehash(path, _scale_adapter(tmp_path))
    elif tamper == "best_score":
        _rehash(path, lambda m: m["state"].update(best_score=0.99))
    else:
        _rehash(path, lambda m: m.pop("mac"))
    # Execute / Assert: one CheckpointError naming the manifest; the right key alone does not help
    with pytest.raises(CheckpointError, match=rf"{MANIFEST}: .*(altered|no HMAC)"):
        load_checkpoint(tmp_path, CONFIG, key=key)


def test_untampered_checkpoint_loads_only_under_its_key(tmp_path: Path) -> None:
    # Prepare
    save_checkpoint(tmp_path, _state(), key=bytes(32))
    # Execute / Assert: the positive twin, then the wrong-key negative
    assert load_checkpoint(tmp_path, CONFIG, key=bytes(32)) is not None
    with pytest.raises(CheckpointError, match="another checkpoint key"):
        load_checkpoint(tmp_path, CONFIG, key=bytes([1] * 32))


def test_checkpoint_key_is_made_0600_once_and_kept_outside_the_run(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "home" / ".crossfed" / "checkpoint.key"
    # Execute
    first, second = checkpoint_key(path), checkpoint_key(path)
    # Assert
    assert first == second and len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(CheckpointError, match="inside the run folder"):
        checkpoint_key(path, outside=tmp_path / "home")
    path.chmod(0o644)
    with pytest.raises(CheckpointError, match="chmod 600"):
        checkpoint_key(path)


def test_default_key_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "keys" / "ckpt.key"))
    save_checkpoint(tmp_path / "run", _state())
    assert (tmp_path / "keys" / "ckpt.key").is_file()
    assert load_checkpoint(tmp_path / "run", CONFIG) is not None
