"""`crossfed deploy provision`: one kit per party, each complete, no secret where it does not belong."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clients.private_state import DEFAULT_STATE_DIR, private_folder
from common.config import config_string, parse_config_strings
from common.secagg.identity import PASSPHRASE_ENV, Roster, build_roster
from deploy.certs import CertError, load_node_private_key, load_node_public_key
from deploy.cli import state_dir
from deploy.commands import FLOWER_HOME, THREAD_VARS, thread_env
from deploy.errors import DeployError
from deploy.processes import Daemon, free_ports, spawn, wait_for_port
from deploy.provision import CHECKPOINT_KEY_FILE, ROSTER, START, STATE, provision
from tests.deploy.settings import PLATFORMS as DEPLOY_PLATFORMS
from tests.deploy.settings import TINY

REPO = Path(__file__).resolve().parents[2]


def _print_commands(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a kit's script with `--print`: the commands it would start, nothing started."""
    env = {**os.environ, "CROSSFED": f"{sys.executable} -m deploy.cli", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=60)


PEM_PRIVATE = b"PRIVATE KEY-----"  # PKCS#8, ENCRYPTED, EC, OPENSSH: every PEM private key's armour ends so


def test_by_default_no_kit_holds_a_platforms_private_key(tmp_path: Path) -> None:
    # Execute
    kits = provision(tmp_path / "kits", "fl.example.org", ["app", "web_shop"])
    # Assert: every file of every kit; private keys only where they belong (the CA's, the SuperLink's TLS key)
    private = {p.relative_to(tmp_path / "kits").as_posix() for p in (tmp_path / "kits").rglob("*")
               if p.is_file() and (PEM_PRIVATE in p.read_bytes() or p.name.endswith(".key"))}  # fmt: skip
    assert private == {"ca/ca.key", "coordinator/certs/server.key"}
    coordinator = sorted(p.relative_to(kits.coordinator).as_posix() for p in kits.coordinator.rglob("*"))
    assert coordinator == ["certs", "certs/ca.pem", "certs/server.key", "certs/server.pem", "node-keys",
                           "register.sh", "start.sh", "submit.sh"]  # fmt: skip
    for folder in kits.platforms.values():
        assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", START]


def test_kits_hold_what_each_party_needs_and_start_from_their_own_folder(tmp_path: Path) -> None:
    # Execute: the one-machine demo (the platforms' private keys made here, in their kits)
    kits = provision(tmp_path / "kits", "fl.example.org", ["app", "web_shop"], port=9443, insecure_demo_keys=True)
    # Assert: the coordinator has the server's TLS files and every platform's public key, not the CA key
    assert sorted(p.name for p in (kits.coordinator / "certs").iterdir()) == ["ca.pem", "server.key", "server.pem"]
    assert sorted(p.name for p in (kits.coordinator / "node-keys").iterdir()) == ["app.key.pub", "web_shop.key.pub"]
    assert [p.name for p in kits.ca.iterdir()] == ["ca.key"]
    ports = set()
    for platform, folder in kits.platforms.items():
        private = folder / f"{platform}.key"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        load_node_private_key(private)
        load_node_public_key(kits.coordinator / "node-keys" / f"{platform}.key.pub")
        # ... and its start script, run from anywhere, starts a TLS SuperNode with its key on its own port
        res = _print_commands(folder / START, "--print", env={"DATA_DIR": "/data/shops"})
        assert res.returncode == 0, res.stderr
        node, worker = res.stdout.strip().splitlines()
        assert f"platform='{platform}'" in node and "data-dir='/data/shops'" in node
        assert "--superlink fl.example.org:9443" in node and f"--root-certificates {folder / 'ca.pem'}" in node
        assert f"--auth-supernode-private-key {private}" in node
        # ... with its secure-aggregation identity (0600) and the roster of every platform, in its own kit
        assert stat.S_IMODE((folder / f"{platform}.secagg.key").stat().st_mode) == 0o600
        assert f"secagg-identity='{folder / (platform + '.secagg.key')}'" in node
        assert sorted(Roster.load(folder / "roster.json").keys) == ["app", "web_shop"]
        ports.add(node.split("--port ")[1].split()[0])
    assert len(ports) == 2  # two platforms on one host do not clash
    res = _print_commands(kits.coordinator / START, "--print")
    assert res.returncode == 0 and "--enable-supernode-auth" in res.stdout and "--port 9443" in res.stdout


def test_a_platform_makes_its_keys_on_its_first_start(tmp_path: Path) -> None:
    # Prepare
    kits = provision(tmp_path / "kits", "fl.example.org", ["app"])
    folder = kits.platforms["app"]
    assert not list(folder.glob("*.key")) and not list((kits.coordinator / "node-keys").iterdir())
    secret = {PASSPHRASE_ENV: "correct horse battery staple"}
    # Execute: the first start makes the key pairs on the platform and stops, naming the files to send
    first = _print_commands(folder / START, "--print", env=secret)
    # Assert
    assert first.returncode == 3 and "app.key.pub to the coordinator" in first.stdout, first.stdout + first.stderr
    assert "app.secagg.pub to the operator" in first.stdout
    assert stat.S_IMODE((folder / "app.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "app.secagg.key").stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (folder / "app.secagg.key").read_bytes()  # the passphrase was set
    assert not list((kits.coordinator / "node-keys").iterdir())  # nothing reached the coordinator's kit
    # ... the next start waits for the operator's roster, then starts (with the passphrase; without it, one line)
    waiting = _print_commands(folder / START, "--print", env=secret)
    assert waiting.returncode == 3 and "no roster.json here yet" in waiting.stdout
    (folder / "roster.json").write_text(build_roster([folder / "app.secagg.pub"]).to_json())
    second = _print_commands(folder / START, "--print", env=secret)
    assert second.returncode == 0 and "--auth-supernode-private-key" in second.stdout, second.stderr
    locked = _print_commands(folder / START, "--print", env={PASSPHRASE_ENV: ""})
    assert locked.returncode == 2 and "the identity key is encrypted; set CROSSFED_IDENTITY_PASSPHRASE" in locked.stderr


def test_provision_never_overwrites(tmp_path: Path) -> None:
    provision(tmp_path / "kits", "fl.example.org", ["app"])
    with pytest.raises(CertError, match="not empty"):
        provision(tmp_path / "kits", "fl.example.org", ["app"])
    with pytest.raises(CertError, match="distinct"):
        provision(tmp_path / "other", "fl.example.org", ["app", "app"])


def test_supernode_threads_are_capped_unless_the_environment_says_otherwise() -> None:
    assert thread_env(3, environ={}) == dict.fromkeys(THREAD_VARS, "3")
    auto = thread_env(None, environ={"OMP_NUM_THREADS": "8"})
    assert "OMP_NUM_THREADS" not in auto and 1 <= int(auto["MKL_NUM_THREADS"]) <= (os.cpu_count() or 1)


def _env(line: str) -> dict[str, str]:
    """The environment assignments in front of a printed command line."""
    words = line.split(" ")
    return dict(w.split("=", 1) for w in words[: next(i for i, w in enumerate(words) if "=" not in w)])


def _node_config(line: str) -> dict[str, object]:
    """The node_config of a printed SuperNode command line, parsed as Flower parses it."""
    return parse_config_strings([line.split(" --node-config ", 1)[1].split(" --isolation ", 1)[0]], "--node-config")


def test_two_platforms_on_one_host_keep_their_state_in_their_own_kits(tmp_path: Path) -> None:
    # Prepare: two platforms' kits on one host, each made ready by its own first start; HOME empty
    kits = provision(tmp_path / "kits", "fl.example.org", ["app", "web_shop"])
    home = tmp_path / "home"
    home.mkdir()
    for folder in kits.platforms.values():
        assert _print_commands(folder / START, "--print", env={"HOME": str(home)}).returncode == 3  # keys made
    roster = build_roster(folder / f"{p}.secagg.pub" for p, folder in kits.platforms.items()).to_json()
    for folder in kits.platforms.values():
        (folder / ROSTER).write_text(roster)
    # Execute: each kit's SuperNode as it would start (printed, nothing started)
    lines = {}
    for platform, folder in kits.platforms.items():
        res = _print_commands(folder / START, "--print", env={"HOME": str(home)})
        assert res.returncode == 0, res.stderr
        lines[platform] = res.stdout.splitlines()
    # Assert: node_config `state-dir` and Flower's home (where the worker installs the app) are in the kit
    places: dict[str, set[Path]] = {}
    for platform, folder in kits.platforms.items():
        node, worker = lines[platform]
        env, config = _env(node), _node_config(node)
        state = folder / STATE
        assert config["state-dir"] == str(state)
        assert env["FLWR_HOME"] == str(state / platform / FLOWER_HOME) == _env(worker)["FLWR_HOME"]
        run = private_folder("/srv/crossfed/run1", platform, str(config["state-dir"]))  # a run's private files
        assert run.is_relative_to(state)
        places[platform] = {state, run, Path(env["FLWR_HOME"])}
    # ... the two platforms' places are apart (none inside the other's), nothing under HOME (no ~/.crossfed,
    # no ~/.flwr), and the state folder is made by the SuperNode when it starts, not by --print
    assert not any(a.is_relative_to(b) for a in places["app"] for b in places["web_shop"])
    assert not any(b.is_relative_to(a) for a in places["app"] for b in places["web_shop"])
    assert list(home.iterdir()) == []
    assert not any((folder / STATE).exists() for folder in kits.platforms.values())
    # Execute: the operator moves one platform's state (relative paths are the kit's, like DATA_DIR)
    moved = _print_commands(kits.platforms["app"] / START, "--print", "--state-dir", str(tmp_path / "elsewhere"))
    # Assert
    assert moved.returncode == 0, moved.stderr
    env, config = _env(moved.stdout.splitlines()[0]), _node_config(moved.stdout.splitlines()[0])
    assert config["state-dir"] == str(tmp_path / "elsewhere")
    assert env["FLWR_HOME"] == str(tmp_path / "elsewhere" / "app" / FLOWER_HOME)
    clash = _print_commands(kits.platforms["app"] / START, "--print", "--node-config", "state-dir='/tmp/other'")
    assert clash.returncode == 2 and "disagree: give one" in clash.stderr, clash.stderr


@pytest.mark.parametrize(
    ("flag", "node_config", "expected"),
    [
        (None, {}, Path(DEFAULT_STATE_DIR)),  # `deploy supernode` without a kit: as before
        (None, {"state-dir": "/srv/state"}, Path("/srv/state")),  # node_config state-dir still works
        (Path("/srv/kit/state"), {}, Path("/srv/kit/state")),
        (Path("/srv/kit/state"), {"state-dir": "/srv/kit/state/"}, Path("/srv/kit/state")),  # the same folder
    ],
    ids=["default", "node config", "flag", "both, the same"],
)
def test_the_state_folder_comes_from_the_flag_the_node_config_or_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: Path | None, node_config: dict[str, str], expected: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir(flag, node_config) == expected.expanduser().resolve()


def test_the_state_folder_given_twice_and_different_is_refused() -> None:
    with pytest.raises(DeployError, match="--state-dir '/a' and --node-config state-dir='/b' disagree"):
        state_dir(Path("/a"), {"state-dir": "/b"})


def _fake(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


# Where a kit's script looks for crossfed, first found wins: each fake says who it is
FAKES = {
    "path": ("bin/crossfed", 'echo "path $*"'),
    "beside": ("kits/.venv/bin/crossfed", 'echo "beside $*"'),
    "kit": ("kits/app/.venv/bin/crossfed", 'echo "kit $*"'),
    "python": ("py/python", '[ "$1" = -c ] && exit 0  # "import deploy.cli" works\necho "python $*"'),
    "broken python": ("py/python", "exit 1"),  # a Python without crossfed
    "command": ("cmd/crossfed", 'echo "command $*"'),
}


@pytest.mark.parametrize(
    ("present", "says"),
    [
        ((), "crossfed: error: crossfed is not installed for the kit {kit}: in a crossfed checkout run "
             "./scripts/install.sh, then link its .venv here"),
        (("path",), "path deploy supernode --platform app"),
        (("path", "beside"), "beside deploy supernode"),
        (("path", "beside", "kit"), "kit deploy supernode"),
        (("path", "beside", "kit", "python"), "python -m deploy.cli deploy supernode"),
        (("path", "beside", "kit", "python", "command"), "command deploy supernode"),
        (("kit", "broken python"), "crossfed: error: CROSSFED_PYTHON={root}/py/python cannot import crossfed"),
    ],
    ids=["none", "PATH", "beside the kit", "in the kit", "CROSSFED_PYTHON", "CROSSFED", "CROSSFED_PYTHON broken"],
)  # fmt: skip
def test_a_kits_script_finds_its_crossfed_or_says_what_to_install(
    tmp_path: Path, present: tuple[str, ...], says: str
) -> None:
    # Prepare: a kit, the installations named, and a PATH with nothing but the fake `crossfed` (not even dirname)
    kits = provision(tmp_path / "kits", "fl.example.org", ["app"], insecure_demo_keys=True)
    (tmp_path / "bin").mkdir()
    for name in present:
        _fake(tmp_path / FAKES[name][0], FAKES[name][1])
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    if "python" in present or "broken python" in present:
        env["CROSSFED_PYTHON"] = str(tmp_path / "py" / "python")
    if "command" in present:
        env["CROSSFED"] = str(tmp_path / "cmd" / "crossfed")
    # Execute
    res = subprocess.run([str(kits.platforms["app"] / START), "--print"], env=env, capture_output=True, text=True,
                         timeout=10)  # fmt: skip
    # Assert: the first installation found runs; none found is one line and exit 127, not "command not found"
    expected = says.format(kit=kits.platforms["app"], root=tmp_path)
    if says.startswith("crossfed: error:"):
        assert (res.returncode, res.stdout) == (127, "") and res.stderr.startswith(expected), res.stderr
        assert len(res.stderr.splitlines()) == 1 and "not found" not in res.stderr
    else:
        assert res.returncode == 0 and res.stdout.startswith(expected), res.stdout + res.stderr


def test_the_coordinators_checkpoint_key_stays_in_its_kit(tmp_path: Path) -> None:
    # Prepare: a coordinator kit and a fake crossfed that says which key the SuperLink's ServerApp would use
    kits = provision(tmp_path / "kits", "fl.example.org", ["app"], insecure_demo_keys=True)
    _fake(tmp_path / "cmd" / "crossfed", 'echo "key=$CROSSFED_CHECKPOINT_KEY"')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CROSSFED": str(tmp_path / "cmd" / "crossfed")}
    start = [str(kits.coordinator / START)]
    # Execute: once with the default, once with the operator's own key file
    default = subprocess.run(start, env=env, capture_output=True, text=True, timeout=10)
    own = subprocess.run(start, env={**env, "CROSSFED_CHECKPOINT_KEY": "/srv/keys/ckpt"}, capture_output=True,
                         text=True, timeout=10)  # fmt: skip
    # Assert: the key lives in the coordinator's kit (not under HOME) unless the variable names one
    assert default.stdout.strip() == f"key={kits.coordinator / STATE / CHECKPOINT_KEY_FILE}", default.stderr
    assert own.stdout.strip() == "key=/srv/keys/ckpt"


@pytest.mark.slow
def test_three_kits_started_by_their_own_scripts_run_a_secure_round(tmp_path: Path) -> None:
    """Item 6 on real processes: the coordinator's kit and three platforms' kits on one host, each started by
    its own start.sh from its own folder with HOME empty, run a secure round; each platform's state (its
    private files, Flower's copy of the app) lands in its own kit and nothing under HOME."""
    # Prepare: the one-machine demo's kits (keys and roster made here), free ports, an empty HOME
    port, *runtime_ports = free_ports(1 + len(DEPLOY_PLATFORMS))
    kits = provision(tmp_path / "kits", "127.0.0.1", DEPLOY_PLATFORMS, port=port, insecure_demo_keys=True)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FLWR_HOME", "CROSSFED_PYTHON")}
    env |= {"HOME": str(home), "CROSSFED": f"{sys.executable} -m deploy.cli", "PYTHONPATH": str(REPO)}
    operator = {**env, "FLWR_HOME": str(tmp_path / "operator-flwr")}  # the operator's own flwr CLI config
    daemons: list[Daemon] = []
    try:
        # Execute: SuperLink, registration, three SuperNodes (each on a free Runtime API port: the flag the
        # kit's line gives is overridden by the same flag after it), then one secure round
        link = Daemon("superlink", spawn("superlink", [str(kits.coordinator / START)], tmp_path / "superlink.log",
                                         operator), tmp_path / "superlink.log")  # fmt: skip
        daemons.append(link)
        wait_for_port("127.0.0.1", port, 90, link)
        registered = subprocess.run([str(kits.coordinator / "register.sh")], env=operator, capture_output=True,
                                    text=True, timeout=120)  # fmt: skip
        assert registered.returncode == 0, registered.stdout + registered.stderr
        for platform, runtime_port in zip(DEPLOY_PLATFORMS, runtime_ports, strict=True):
            log_path = tmp_path / f"{platform}.log"
            cmd = [str(kits.platforms[platform] / START), "--runtime-port", str(runtime_port)]
            daemons.append(Daemon(platform, spawn(platform, cmd, log_path, env), log_path))
        run_config = config_string({**TINY, "secagg": True, "num-server-rounds": 1, "out-dir": str(tmp_path / "run")})
        submitted = subprocess.run([str(kits.coordinator / "submit.sh"), run_config], env=operator,
                                   capture_output=True, text=True, timeout=420)  # fmt: skip
        logs = "\n".join(f"--- {d.name}\n{d.log_tail(15)}" for d in daemons)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr + logs
    finally:
        for daemon in daemons:
            daemon.stop()
    # Assert: the round fused all three platforms; their state is in their own kits, none under HOME
    rounds = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["train"]["secure-aggregation"]["survivors"], r["failures"]) for r in rounds] == [(1, 3, [])]
    for platform, folder in kits.platforms.items():
        state = folder / STATE
        assert (state / platform / FLOWER_HOME).is_dir(), sorted(p.name for p in folder.iterdir())
        assert private_folder(str(tmp_path / "run"), platform, str(state)).is_dir()
    assert list(home.iterdir()) == []
