"""The `crossfed` command as a user meets it: one clear line for bad input, nothing left behind."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.data import write_dataset
from common.files import MAX_FIELD_ENV
from common.synthetic import make_synthetic


def _crossfed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _dataset(root: Path) -> Path:
    write_dataset(root, make_synthetic(seed=0).values())
    return root


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda d: (d / "app" / "items.csv").unlink(), "items.csv"),
        (
            lambda d: (d / "app" / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,NOPE,1\nu2,NOPE,2\n"),
            "field `item_id`",
        ),
        (
            lambda d: (d / "app" / "interactions.csv").write_text("user_id,item_id,timestamp,rating\nu1,x,soon,3\n"),
            "field `",
        ),
    ],
)
def test_malformed_dataset_is_one_clear_line(tmp_path: Path, damage, expected: str) -> None:
    # Prepare
    data = _dataset(tmp_path / "data")
    damage(data)
    out = tmp_path / "run"
    # Execute
    result = _crossfed("simulate", "--data", str(data), "--out", str(out), "--base-model", "tiny-random")
    # Assert
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crossfed: error:"), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_model_path_is_one_clear_line(tmp_path: Path) -> None:
    result = _crossfed("simulate", "--out", str(tmp_path / "run"), "--base-model", str(tmp_path / "no-model"))
    assert result.returncode == 2
    assert "no Hugging Face model folder" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_config_override_names_the_key(tmp_path: Path) -> None:
    result = _crossfed("simulate", "--out", str(tmp_path / "run"), "--set", "lora.r=0")
    assert result.returncode == 2 and "`lora.r` must be positive" in result.stderr


def _refusal(*args: str, env: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """Run ``crossfed ARGS`` under ``python -X importtime``: its one error line (exit 2, no traceback) and
    every module it imported before refusing (the import log is the measure, not the clock)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "simulations.cli", *args], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **(env or {})})  # fmt: skip
    imported = {ln.rsplit("|", 1)[1].strip() for ln in result.stderr.splitlines() if ln.startswith("import time:")}
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("import time:")]
    if lines and lines[0].startswith("usage:"):  # argparse's own refusal: its usage, then one error line
        lines = lines[-1:]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, lines
    return lines[0], imported


# (file content of --pairs / --users, what the one line says after the file's path)
BAD_ID_FILES = {
    "not UTF-8": (b"user_id,item_id\nu1,caf\xe9\n", ":2: field `item_id`: invalid UTF-8"),
    "short row": (b"user_id,item_id\nu1,i1\nu2\n", ":3: field `item_id`: missing field"),
    "long row": (b"user_id,item_id\nu1,i1,i2\n", ":2: field `#3`: extra field"),
    "empty file": (b"", ":1: empty file"),
    "huge field": (b"user_id,item_id\nu1," + b"x" * 3_000_000 + b"\n", ":2: field `item_id`: field too long"),
}


@pytest.mark.parametrize("flag", ["--pairs", "--users"])
@pytest.mark.parametrize(("content", "says"), BAD_ID_FILES.values(), ids=BAD_ID_FILES)
def test_bad_id_files_are_one_line_naming_file_line_and_field(tmp_path: Path, flag: str, content: bytes,
                                                              says: str) -> None:  # fmt: skip
    # Prepare: the field limit lowered to 1,000 characters, so 3 MB stand for a 1 GB field
    path = tmp_path / "ids.csv"
    path.write_bytes(content)
    command = "score" if flag == "--pairs" else "recommend"
    # Execute
    line, imported = _refusal(command, "--run", str(tmp_path / "no-run"), "--platform", "app", flag, str(path),
                              env={MAX_FIELD_ENV: "1000"})  # fmt: skip
    # Assert
    assert line.startswith(f"crossfed: error: {path}{says}"), line
    assert not imported & HEAVY


HEAVY = {"torch", "transformers"}


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["recommend", "--run", "RUN", "--platform", "app", "--user", "u", "--bogus"], "unrecognized arguments"),
        (["score", "--run", "RUN", "--platform", "app", "--user", "u", "--items", "i"], "not a finished run"),
        (["recommend", "--run", "RUN", "--platform", "app", "--users", "MISSING"], "file not found"),
        (["export", "--run", "RUN", "--out", "OUT"], "not a finished run"),
        (["serve", "--run", "RUN", "--platform", "app"], "not a finished run"),
        (["serve", "--run", "RUN", "--platform", "app", "--port", "BUSY"], "Address already in use (--host / --port)"),
        (["simulate", "--out", "OUT", "--data", "MISSING"], "dataset folder not found"),
        (["deploy", "superlink", "--insecure", "--port", "BUSY"], "Address already in use (--host / --port)"),
        (["deploy", "supernode", "--platform", "app", "--superlink", "127.0.0.1:1", "--insecure",
          "--runtime-port", "BUSY"], "Address already in use (--runtime-port)"),
        (["deploy", "supernode", "--platform", "app", "--superlink", "127.0.0.1:1", "--insecure", "--data", "MISSING"],
         "platform folder not found"),
        (["deploy", "supernode", "--platform", "app", "--superlink", "127.0.0.1:1", "--insecure", "--secagg-identity",
          "MISSING", "--secagg-roster", "ROSTER"], "roster.json:1: invalid UTF-8"),
    ],
    ids=["bad flag", "no run", "missing --users", "export no run", "serve no run", "serve busy port",
         "simulate missing data", "superlink busy port", "supernode busy runtime port", "supernode missing data",
         "supernode roster not UTF-8"],
)  # fmt: skip
def test_refusals_come_before_torch_is_imported(tmp_path: Path, args: list[str], says: str) -> None:
    # Prepare: a port another server listens on; paths that do not exist
    with _busy_port() as busy:
        names = {"RUN": tmp_path / "run", "OUT": tmp_path / "out", "MISSING": tmp_path / "missing",
                 "BUSY": busy.getsockname()[1], "ROSTER": tmp_path / "roster.json"}  # fmt: skip
        names["ROSTER"].write_bytes(b'\xff{"format": ')
        # Execute
        line, imported = _refusal(*(str(names.get(a, a)) for a in args))
    # Assert: refused, in one line, with neither torch nor transformers loaded (nor any Flower process started)
    assert says in line, line
    assert "torch" not in imported and "transformers" not in imported, sorted(imported & HEAVY)
    assert not (tmp_path / "out").exists()
