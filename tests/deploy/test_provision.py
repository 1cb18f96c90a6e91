"""`crossfed deploy provision`: one kit per party, each complete, no secret where it does not belong."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from common.secagg.identity import PASSPHRASE_ENV, Roster, build_roster
from deploy.certs import CertError, load_node_private_key, load_node_public_key
from deploy.commands import THREAD_VARS, thread_env
from deploy.provision import START, provision

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
