"""The server's run state after each completed round: saved atomically, verified on load.

A federation that dies (coordinator crash, machine reboot, a killed ServerApp) resumes
from its last completed round instead of starting over. What is saved is everything the
next round depends on:

* the global adapter + head tensors, the server optimiser's state (FedAvgM velocity,
  FedAdam ``m:``/``v:`` moments, in their own dtype, or none) and the best round's
  tensors: ONE safetensors file, ``checkpoint-r<round>.safetensors``;
* the round counter, best score/round/metrics, the early-stopping counter and the flat
  run config: JSON inside the manifest ``checkpoint.json``.

No RNG state: the server loop draws no random numbers (a platform seeds its training by
seed, platform and round), so a resumed round draws what it would have drawn.

Write order makes a crash harmless: the tensor file goes to a temp name, is fsync'ed and
renamed; then the manifest, which names that file and its SHA-256 (and carries the
SHA-256 of its own JSON state), is written the same way. The manifest is the commit
point: until it is replaced, the previous manifest and its tensor file stay valid; old
tensor files are removed only afterwards.

Loading verifies both digests before anything is used, so a truncated or altered
checkpoint raises :class:`CheckpointError` naming the file and is never half-loaded; a
checkpoint written under a different config (say another ``lora.r``) is refused with the
differing keys, except keys a resumed run may legitimately change
(:data:`RESUMABLE_KEYS`, e.g. more ``num-server-rounds``).

Digests stop corruption, not tampering: whoever can write the run folder can also
recompute them. So the manifest also carries an HMAC-SHA256 over all of it (tensor
digest included) under a key the coordinator keeps OUTSIDE the run folder
(:func:`checkpoint_key`: ``$CROSSFED_CHECKPOINT_KEY`` or ``~/.crossfed/checkpoint.key``,
32 random bytes made 0600 on first use). A checkpoint without it, under another key, or
edited and re-hashed is refused with one line; nothing of it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_bytes, atomic_write_text

MANIFEST = "checkpoint.json"
TENSOR_PREFIX = "checkpoint-r"
FORMAT = "crossfed-checkpoint"
VERSION = 1
GROUPS = ("global", "optimizer", "best")  # tensor groups in the safetensors file: "<group>/<name>"
OPTIMIZER_DTYPES = (np.float32, np.float64)  # common.fusion keeps FedAdam moments in float64
# Keys a resumed run may change without invalidating the saved state.
RESUMABLE_KEYS = frozenset({
    "num-server-rounds", "out-dir", "tensorboard-dir", "fed.resume", "fed.min-nodes", "fed.min-round-nodes",
    "fed.node-wait-s", "fed.round-timeout-s",
    "fed.straggler-factor", "fed.straggler-min-s", "fed.resend-stragglers", "secure.stage-timeout-s", "fed.node-names",
})  # fmt: skip

KEY_ENV = "CROSSFED_CHECKPOINT_KEY"  # path of the coordinator's checkpoint key
DEFAULT_KEY_FILE = "~/.crossfed/checkpoint.key"
MAC_ALG = "HMAC-SHA256"

Scalar = bool | int | float | str


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, corrupt, altered, or from another config; nothing was loaded."""


@dataclass
class RunState:
    """Everything round ``round + 1`` needs.

    ``global_state`` and ``best_state`` are float32 with the same names and shapes;
    ``optimizer_state`` is whatever ``common.fusion.server_update`` returned (any names,
    float32 or float64; an empty dict and None are kept apart).
    """

    round: int  # rounds completed
    global_state: OrderedDict[str, np.ndarray]
    config: dict[str, Scalar]  # AppConfig.to_flat()
    optimizer_state: OrderedDict[str, np.ndarray] | None = None  # FedAvgM velocity / FedAdam moments
    best_round: int = 0
    best_score: float = -math.inf
    best_state: OrderedDict[str, np.ndarray] | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)  # per-platform + mean of the best round
    stale: int = 0  # rounds without improvement (early stopping)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able, for what later versions add

    def validate(self) -> None:
        """Shapes and names consistent across groups; raises CheckpointError otherwise."""
        if self.round < 0 or self.stale < 0 or self.best_round < 0:
            raise CheckpointError(f"negative counters: round={self.round}, stale={self.stale}, "
                                  f"best_round={self.best_round}")  # fmt: skip
        if self.best_round > self.round:
            raise CheckpointError(f"best_round {self.best_round} is after the last completed round {self.round}")
        for group, tensors in _groups(self):
            allowed = OPTIMIZER_DTYPES if group == "optimizer" else (np.float32,)
            for name, value in tensors.items():
                if not isinstance(value, np.ndarray) or value.dtype not in allowed:
                    got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                    want = " or ".join(np.dtype(d).name for d in allowed)
                    raise CheckpointError(f"{group} tensor `{name}` must be a {want} numpy array, got {got}")
            if group != "best":
                continue
            if list(tensors) != list(self.global_state):
                raise CheckpointError(f"{group} tensors {sorted(set(tensors) ^ set(self.global_state))} do not "
                                      "match the global adapter's")  # fmt: skip
            for name, value in tensors.items():
                if value.shape != self.global_state[name].shape:
                    raise CheckpointError(f"{group} tensor `{name}` has shape {value.shape}, the global one "
                                          f"{self.global_state[name].shape}")  # fmt: skip


# ---------------------------------------------------------------------------- save


def save_checkpoint(run_dir: Path, state: RunState, key: bytes | None = None) -> Path:
    """Write ``state`` under ``run_dir`` atomically, MAC'ed with ``key`` (default :func:`checkpoint_key`)."""
    from safetensors.numpy import save

    state.validate()
    run_dir = Path(run_dir)
    key = checkpoint_key(outside=run_dir) if key is None else key
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for group, values in _groups(state):
        for name, value in values.items():
            tensors[f"{group}/{name}"] = np.ascontiguousarray(value)
    blob = save(tensors, metadata={"format": FORMAT, "round": str(state.round)})
    tensor_name = f"{TENSOR_PREFIX}{state.round:06d}.safetensors"
    atomic_write_bytes(run_dir / tensor_name, blob, fsync=True)
    body = {
        "round": state.round,
        "keys": {group: list(values) for group, values in _groups(state)},
        "best_round": state.best_round,
        "best_score": _enc(state.best_score),
        "best_metrics": _enc(state.best_metrics),
        "stale": state.stale,
        "config": _enc(dict(state.config)),
        "extra": _enc(state.extra),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": {"file": tensor_name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)},
        "state": body,
        "state_sha256": _digest(body),
    }
    manifest["mac"] = {"alg": MAC_ALG, "key-id": key_id(key), "value": _mac(key, manifest)}
    path = run_dir / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n", fsync=True)
    for old in run_dir.glob(f"{TENSOR_PREFIX}*.safetensors"):  # only now is the previous one garbage
        if old.name != tensor_name:
            old.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------- load


def load_checkpoint(
    run_dir: Path,
    expected_config: Mapping[str, Scalar] | None,
    resumable_keys: Iterable[str] = RESUMABLE_KEYS,
    key: bytes | None = None,
) -> RunState | None:
    """The saved state, or None if ``run_dir`` has no checkpoint; CheckpointError if it is bad.

    ``expected_config`` (the flat config of the run that wants to resume) must equal the
    saved one except for ``resumable_keys``; pass None to skip that check (inspection).
    The manifest's MAC must verify under ``key`` (default :func:`checkpoint_key`).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    manifest = _read_manifest(path)
    verify_mac(path, manifest, checkpoint_key(outside=path.parent) if key is None else key)
    body = manifest["state"]
    if _digest(body) != manifest.get("state_sha256"):
        raise CheckpointError(f"{path}: the run state does not match its SHA-256 (altered or corrupt); refusing it")
    info = manifest.get("tensors") or {}
    tensor_path = path.parent / str(info.get("file", ""))
    if not info.get("file") or "/" in str(info["file"]) or not tensor_path.is_file():
        raise CheckpointError(f"{path}: names tensor file {info.get('file')!r}, which is missing")
    blob = tensor_path.read_bytes()
    if len(blob) != info.get("bytes") or hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"{tensor_path}: {len(blob)} bytes whose SHA-256 differs from the manifest's "
                              f"({info.get('bytes')} bytes): truncated or altered; refusing it")  # fmt: skip
    saved_config = _dec(body["config"])
    if expected_config is not None:
        check_config(saved_config, expected_config, resumable_keys, where=path)
    try:
        flat = load(blob)
    except SafetensorError as exc:  # digest matched, so this is a writer bug, not corruption
        raise CheckpointError(f"{tensor_path}: unreadable safetensors data ({exc})") from exc
    keys = body["keys"]
    groups: dict[str, OrderedDict[str, np.ndarray] | None] = {}  # a group absent from `keys` was None
    for group in GROUPS:
        names = keys.get(group)
        if names is None:
            groups[group] = None
            continue
        missing = [n for n in names if f"{group}/{n}" not in flat]
        if missing:
            raise CheckpointError(f"{tensor_path}: {group} tensors {missing[:5]} listed in the manifest are missing")
        groups[group] = OrderedDict((n, flat[f"{group}/{n}"]) for n in names)
    if groups["global"] is None:
        raise CheckpointError(f"{path}: no global adapter tensors")
    state = RunState(
        round=int(body["round"]), global_state=groups["global"], config=saved_config,
        optimizer_state=groups["optimizer"], best_round=int(body["best_round"]),
        best_score=float(_dec(body["best_score"])),
        best_state=groups["best"], best_metrics=_dec(body.get("best_metrics") or {}), stale=int(body["stale"]),
        extra=_dec(body.get("extra") or {}),
    )  # fmt: skip
    state.validate()
    return state


def saved_round(run_dir: Path) -> int | None:
    """The last completed round a checkpoint in ``run_dir`` claims (None without one), for a person to read.

    Unverified (no key, no digests): :func:`load_checkpoint` checks everything before a run resumes.
    """
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    return int(_read_manifest(path)["state"]["round"])


def check_config(
    saved: Mapping[str, Scalar],
    expected: Mapping[str, Scalar],
    resumable_keys: Iterable[str] = RESUMABLE_KEYS,
    where: Path | str = "checkpoint",
) -> None:
    """Raise CheckpointError naming every key whose value differs (resumable keys excepted)."""
    skip = set(resumable_keys)
    diffs = []
    for key in sorted((set(saved) | set(expected)) - skip):
        if key not in saved:
            diffs.append(f"`{key}` (not in the checkpoint; now {expected[key]!r})")
        elif key not in expected:
            diffs.append(f"`{key}` (checkpoint {saved[key]!r}; not in this config)")
        elif not _same_value(saved[key], expected[key]):
            diffs.append(f"`{key}` (checkpoint {saved[key]!r}, now {expected[key]!r})")
    if diffs:
        raise CheckpointError(f"{where}: written by a run with a different config: {'; '.join(diffs)}. "
                              "Resume with the same settings, or start a new run folder.")  # fmt: skip


def remove_checkpoint(run_dir: Path) -> None:
    """Forget the checkpoint of ``run_dir`` (manifest first, so a crash leaves no valid half)."""
    run_dir = Path(run_dir)
    (run_dir / MANIFEST).unlink(missing_ok=True)
    for old in run_dir.glob(f"{TENSOR_PREFIX}*.safetensors"):
        old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- MAC


def checkpoint_key(path: Path | str | None = None, outside: Path | None = None) -> bytes:
    """The coordinator's 32-byte checkpoint key; made (0600, its folder 0700) on first use.

    ``path`` defaults to ``$CROSSFED_CHECKPOINT_KEY``, else ``~/.crossfed/checkpoint.key``.
    A key inside ``outside`` (the run folder) is refused: whoever can rewrite the run
    folder must not be able to read the key.
    """
    where = Path(path or os.environ.get(KEY_ENV) or DEFAULT_KEY_FILE).expanduser().resolve()
    if outside is not None and where.is_relative_to(Path(outside).expanduser().resolve()):
        raise CheckpointError(f"checkpoint key {where} lies inside the run folder {outside}; keep it outside "
                              f"(set {KEY_ENV} to another path)")  # fmt: skip
    if not where.exists():
        _create_key(where)
    try:
        mode = where.stat().st_mode
        text = where.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint key {where}: unreadable ({exc})") from exc
    if mode & 0o077:
        raise CheckpointError(f"checkpoint key {where} is readable by others (mode {mode & 0o777:o}); "
                              f"run `chmod 600 {where}`")  # fmt: skip
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise CheckpointError(f"checkpoint key {where}: expected 64 hex digits (32 bytes), got {len(text)} characters")
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (it reveals nothing of the key), to tell keys apart in errors."""
    return hashlib.sha256(b"crossfed checkpoint key id\0" + key).hexdigest()[:16]


def verify_mac(path: Path, manifest: Mapping[str, Any], key: bytes) -> None:
    """CheckpointError unless the manifest carries a valid MAC under ``key``."""
    mac = manifest.get("mac")
    if not isinstance(mac, dict) or mac.get("alg") != MAC_ALG or not isinstance(mac.get("value"), str):
        raise CheckpointError(f"{path}: carries no {MAC_ALG} (written by an older crossfed, or stripped); refusing "
                              "it: use a new run folder or fed.resume=false")  # fmt: skip
    if mac.get("key-id") != key_id(key):
        raise CheckpointError(f"{path}: signed with another checkpoint key (key id {mac.get('key-id')}, this "
                              f"coordinator's is {key_id(key)}); refusing it")  # fmt: skip
    if not hmac.compare_digest(mac["value"], _mac(key, manifest)):
        raise CheckpointError(f"{path}: {MAC_ALG} does not match: the checkpoint was altered after it was written "
                              "(edited or re-hashed); refusing it")  # fmt: skip


def _mac(key: bytes, manifest: Mapping[str, Any]) -> str:
    signed = {k: v for k, v in manifest.items() if k != "mac"}
    return hmac.new(key, json.dumps(signed, sort_keys=True, allow_nan=False).encode(), hashlib.sha256).hexdigest()


def _create_key(path: Path) -> None:
    """32 random bytes as hex, 0600, created atomically (a concurrent creator's key wins, never half a key)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp files are 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):  # another process made it first: keep theirs
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- helpers


def _groups(state: RunState) -> list[tuple[str, Mapping[str, np.ndarray]]]:
    out: list[tuple[str, Mapping[str, np.ndarray]]] = [("global", state.global_state)]
    if state.optimizer_state is not None:
        out.append(("optimizer", state.optimizer_state))
    if state.best_state is not None:
        out.append(("best", state.best_state))
    return out


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint manifest ({exc}); truncated or altered") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {manifest.get('version')!r}, this code reads {VERSION}")
    if not isinstance(manifest.get("state"), dict):
        raise CheckpointError(f"{path}: the manifest has no run state")
    return manifest


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _enc(value: Any) -> Any:
    """JSON without NaN/Inf: non-finite floats become {"$float": "nan" | "inf" | "-inf"}."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, np.floating | np.integer):
        return _enc(value.item())
    if isinstance(value, Mapping):
        return {str(k): _enc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_enc(v) for v in value]
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {k: _dec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dec(v) for v in value]
    return value


def _same_value(a: Scalar, b: Scalar) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return a == b
