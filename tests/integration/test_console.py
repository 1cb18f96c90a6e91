"""`crossfed` as a person sees it: a quiet console when piped, one Ctrl-C, local vs federated, run outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.files import result_mode
from simulations.commands.console import EXIT_INTERRUPTED, INTERRUPTED, session_pids

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--base-model", "tiny-random", "--set", "train.max-examples=32", "--set", "eval.max-rank-users=2",
        "--set", "model.max-length=16", "--set", "model.dim=16", "--set", "lora.r=4", "--cpus", "2"]  # fmt: skip
ESCAPE = re.compile(r"\x1b\[")


def _crossfed(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)  # fmt: skip


def test_piped_simulate_is_quiet_and_ends_with_local_vs_federated(tmp_path: Path) -> None:
    # Prepare: the embedded shops (local baseline on by default), test metrics every round
    out = tmp_path / "run"
    # Execute
    result = _crossfed("simulate", "--out", str(out), "--rounds", "1", "--set", "eval.test-every-round=true", *TINY)
    # Assert: no library DEBUG, no deprecation noise, no Ray tips, no colour codes; Flower lines once
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "DEBUG" not in text and "FutureWarning" not in text and "DeprecationWarning" not in text
    assert "Tip:" not in text and "Manually terminating" not in text and not ESCAPE.search(text), text
    logged = [line for line in text.splitlines() if line.startswith(("INFO", "WARNING"))]
    assert len(logged) == len(set(logged)), logged
    assert "only" not in text or "SuperNodes" not in text  # one SuperNode per platform: no warning
    # ... one final table: local vs federated for every platform, the same numbers in JSON
    assert "AUC local" in result.stdout and "AUC federated" in result.stdout
    comparison = json.loads((out / "local_vs_federated.json").read_text())
    assert sorted(comparison["rows"]) == ["app", "mean", "social_shop", "web_shop"]
    for row in comparison["rows"].values():
        assert 0.0 <= row["local"]["auc"] <= 1.0 and 0.0 <= row["federated"]["auc"] <= 1.0
    assert f"{comparison['rows']['mean']['local']['auc']:.4f}" in result.stdout
    # ... rounds.jsonl: a UTC time stamp and (asked for) test metrics per round; the plot beside it
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", rounds[0]["time"])
    assert {"test.auc", "valid.auc"} <= set(rounds[0]["eval"]["app"])
    assert (out / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ... one rule for file modes: results are 0666 less the umask (no stray 0600)
    names = ("rounds.jsonl", "summary.json", "checkpoint.json", "local_vs_federated.json", "rounds.png",
             "adapter/adapter_model.safetensors", "adapter/head.safetensors")  # fmt: skip
    for name in names:
        assert (out / name).stat().st_mode & 0o777 == result_mode(), name


def test_first_ctrl_c_stops_simulate_cleanly(tmp_path: Path) -> None:
    # Prepare: a long run; wait until its first round is checkpointed
    out = tmp_path / "run"
    log_out, log_err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", "simulate", "--out", str(out), "--rounds", "50",
             "--set", "fed.patience=0", "--no-baseline", *TINY],
            cwd=ROOT, env=env, stdout=fo, stderr=fe, preexec_fn=_default_sigint,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not (out / "checkpoint.json").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert proc.poll() is None, log_err.read_text()[-3000:]
            assert (out / "checkpoint.json").exists(), "no round completed in time"
            (child,) = _children(proc.pid)  # the command itself runs in a child, in a session of its own
            assert len(session_pids(child)) > 1  # ... with Ray's processes in that session
            before = log_err.stat().st_size
            # Execute: one Ctrl-C, as a terminal sends it to the foreground process
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    # Assert: exit 130, exactly one line after the signal, nothing left running, the checkpoint kept
    after = log_err.read_text()[before:]
    assert rc == EXIT_INTERRUPTED
    # (a round that ends between the checkpoint check and the signal may still print its round line)
    lines = after.strip().splitlines()
    assert lines[-1:] == [INTERRUPTED], after[-3000:]
    assert all(re.match(r"INFO crossfed\.server: round \d+/50: ", line) for line in lines[:-1]), after[-3000:]
    assert session_pids(child) == []
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["state"]["round"] >= 1


def _default_sigint() -> None:
    """Ctrl-C as a terminal's foreground job gets it: an earlier in-process Flower run may have left
    SIGINT ignored in this pytest process, and an ignored SIGINT is inherited (as by `cmd &`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _children(parent: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"], ["prepare", "synthetic", "--help"],
                                  ["compare", "--help"], ["bench", "batch", "--help"]])  # fmt: skip
def test_help_does_not_import_torch(argv: list[str]) -> None:
    # Execute: the parser alone, in a fresh interpreter
    code = (
        f"import sys\nfrom simulations.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'flwr' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    # Assert: --help prints usage without loading torch or Flower (it took 5-10 s when it did)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and done.stdout.strip().endswith("False False")


def test_rating_outside_declared_scale_is_one_line_from_the_cli(tmp_path: Path) -> None:
    # Prepare: the embedded shops written out, one rating of 99
    from common.data import write_dataset
    from common.synthetic import make_synthetic

    data = tmp_path / "data"
    write_dataset(data, make_synthetic(seed=0).values())
    path = data / "web_shop" / "interactions.csv"
    lines = path.read_text().splitlines()
    lines[5] = ",".join([*lines[5].split(",")[:-1], "99"])
    path.write_text("\n".join(lines) + "\n")
    # Execute
    result = _crossfed("simulate", "--data", str(data), "--out", str(tmp_path / "run"),
                       "--set", "data.rating-scale=1,5", *TINY)  # fmt: skip
    # Assert
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"crossfed: error: {path}:6: field `rating`: rating outside the declared scale "
        "(expected a rating from 1 to 5 (data.rating-scale), got '99')"
    ]
    assert not (tmp_path / "run").exists()


def test_a_data_warning_is_printed_once(tmp_path: Path) -> None:
    # Prepare: the embedded shops written out, one interaction row repeated
    from common.data import write_dataset
    from common.synthetic import make_synthetic

    data = tmp_path / "data"
    write_dataset(data, make_synthetic(seed=0).values())
    path = data / "app" / "interactions.csv"
    with open(path, "a") as fh:
        fh.write(path.read_text().splitlines()[1] + "\n")
    # Execute: a real simulation, whose Ray actors load the platforms again
    result = _crossfed("simulate", "--data", str(data), "--out", str(tmp_path / "run"), "--rounds", "1",
                       "--no-baseline", *TINY)  # fmt: skip
    # Assert: the driver's line only (each actor used to repeat it)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "duplicate interaction row" in line]
    assert lines == [f"WARNING common.data: {path}: dropped 1 duplicate interaction row(s) (same user_id, item_id "
                     f"and timestamp as an earlier row; first on line {len(path.read_text().splitlines())}, "
                     "a repeat of line 2)"]  # fmt: skip


def test_stop_local_stops_the_daemons_flwr_started(tmp_path: Path) -> None:
    # Prepare: `flwr ls` on the local connection starts a managed SuperLink (and its SuperExec), detached
    from simulations.local.flwr_daemons import SUPEREXEC, SUPERLINK, local_daemons

    home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    flwr = Path(sys.executable).with_name("flwr")
    subprocess.run([str(flwr), "ls"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while sorted(local_daemons(home).values()) != [SUPEREXEC, SUPERLINK] and time.monotonic() < deadline:
            time.sleep(0.5)
        started = local_daemons(home)
        if SUPERLINK not in started.values():
            pytest.skip("another local SuperLink holds Flower's fixed local port on this machine")
        # Execute
        result = _crossfed("stop-local", "--flwr-home", str(home), timeout=60)
    finally:
        from simulations.local.flwr_daemons import stop_local_daemons

        stop_local_daemons(str(home))
    # Assert: one line per daemon, none left; a second call finds nothing
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(f"stopped {name} (pid {pid})" for pid, name in started.items())
    assert local_daemons(home) == {}
    assert "no flower-superlink" in _crossfed("stop-local", "--flwr-home", str(home)).stdout
