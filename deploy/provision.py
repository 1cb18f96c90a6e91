"""Start-up kits: one folder per platform and one for the coordinator, made by one command.

In the spirit of NVIDIA FLARE's provisioning: instead of a dozen commands and hand copies
(CA, server certificate, registration, node configs, ports), ``crossfed deploy provision``
writes everything each party needs into its own folder; each folder is shipped to its
machine as a whole and started with its ``start.sh``::

    KITS/ca/                 ca.key: signs certificates; keep it offline, ship it nowhere
    KITS/coordinator/        certs/ (ca.pem, server.pem, server.key), node-keys/ (the platforms' .pub),
                             start.sh (SuperLink), register.sh (admit every platform), submit.sh; later,
                             made there: state/checkpoint.key (0600: the runs' checkpoint MAC key)
    KITS/<platform>/         ca.pem, start.sh (its SuperNode); later, made there: <platform>.key (0600)
                             + .pub, <platform>.secagg.key (0600, encrypted when a passphrase is set) + .pub,
                             the operator's roster.json, and state/ (0700: everything private its SuperNode
                             writes; ``start.sh --state-dir DIR`` puts it elsewhere)

Keys are born where they are used: no kit holds a platform's private key, and the coordinator's
kit holds only public keys (and its own TLS key). A platform's ``start.sh`` makes both its key
pairs (Flower node authentication; the secure-aggregation identity) on its first start, prints
the public files to send and stops; the operator registers the node key at the coordinator
(``node-keys/``, ``register.sh``), builds the roster from every ``.secagg.pub`` (``crossfed
deploy roster``) and puts the same ``roster.json`` into every platform's folder: provisioning
is the out-of-band channel secure aggregation needs (the roster never travels through the
coordinator). Every platform gets its own Runtime API port and keeps its state in its own kit, so
kits may share a host without sharing a file.

Each script finds the crossfed to run itself (:data:`HEADER`): a kit needs no ``crossfed`` on PATH,
and one that finds none says what to install instead of "command not found".

``insecure_demo_keys=True`` (``--insecure-demo-keys``) is the one-machine demo: it makes every
platform's private keys here, on the coordinator's machine, and the roster with them. Whoever
ran it holds every identity, which undoes what secure aggregation protects against that party.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import config_string
from common.secagg.identity import KEY_SUFFIX, PUB_SUFFIX, Identity, build_roster, save_identity
from deploy.certs import CA_KEY, CertError, create_node_key, create_tls
from deploy.commands import DEFAULT_RUNTIME_PORT, DEFAULT_SUPERLINK_PORT

START = "start.sh"
ROSTER = "roster.json"
CHECKPOINT_KEY_FILE = "checkpoint.key"  # the coordinator's, in its kit's state/ (server.checkpoint.KEY_ENV)
STATE = "state"  # a platform's private state, inside its kit unless `start.sh --state-dir DIR` moves it


@dataclass(frozen=True)
class Kits:
    """Where each kit went."""

    ca: Path
    coordinator: Path
    platforms: dict[str, Path] = field(default_factory=dict)


def provision(
    out: Path,
    host: str,
    platforms: Sequence[str],
    *,
    port: int = DEFAULT_SUPERLINK_PORT,
    federation: str = "crossfed",
    extra_names: Sequence[str] = (),
    insecure_demo_keys: bool = False,
    node_extra: Mapping[str, Any] | None = None,
    first_runtime_port: int = DEFAULT_RUNTIME_PORT,
) -> Kits:
    """Write the kits under ``out`` (which must not hold kits yet: nothing is overwritten).

    By default no private key of a platform is made here; ``insecure_demo_keys`` makes them
    here (one-machine demo only: see the module's docstring).
    """
    out = Path(out).expanduser().resolve()
    names = list(platforms)
    if not names or len(set(names)) != len(names):
        raise CertError(f"`--platforms` must name distinct platforms, got {names}")
    if out.exists() and any(out.iterdir()):
        raise CertError(f"{out} is not empty: provision into a new folder (kits are never overwritten)")
    kits = Kits(out / "ca", out / "coordinator", {p: out / p for p in names})
    certs = kits.coordinator / "certs"
    tls = create_tls(certs, host, tuple(extra_names))
    kits.ca.mkdir(parents=True, mode=0o700)
    shutil.move(str(tls.ca_key), kits.ca / CA_KEY)  # the coordinator runs without the CA's key
    node_keys = kits.coordinator / "node-keys"
    node_keys.mkdir()
    address = f"{host}:{port}"
    for i, (platform, folder) in enumerate(kits.platforms.items()):
        folder.mkdir(parents=True)
        shutil.copy(tls.ca_cert, folder / tls.ca_cert.name)
        if insecure_demo_keys:
            key = create_node_key(folder, platform)
            shutil.copy(key.public, node_keys / key.public.name)
            save_identity(Identity.generate(platform), folder)
        _script(folder / START, _platform_script(platform, address, first_runtime_port + i, not insecure_demo_keys,
                                                 node_extra or {}))  # fmt: skip
    if insecure_demo_keys:
        roster = build_roster(kits.platforms[p] / f"{p}{PUB_SUFFIX}" for p in names).to_json()
        for folder in kits.platforms.values():
            (folder / ROSTER).write_text(roster)
    _script(kits.coordinator / START, _superlink_script(port))
    _script(kits.coordinator / "register.sh", _register_script(federation, port))
    _script(kits.coordinator / "submit.sh", _submit_script(federation, port))
    return kits


def _script(path: Path, body: str) -> None:
    path.write_text(body)
    path.chmod(0o755)


INSTALL_HINT = (
    "in a crossfed checkout run ./scripts/install.sh, then link its .venv here (ln -s CHECKOUT/.venv $(pwd)/.venv), "
    "set CROSSFED_PYTHON=CHECKOUT/.venv/bin/python, or put CHECKOUT/.venv/bin on PATH"
)
HEADER = f"""#!/bin/sh
# Made by `crossfed deploy provision`. The crossfed it runs is the first found of: $CROSSFED (a
# command), $CROSSFED_PYTHON (a Python that has crossfed), .venv/ in this kit, .venv/ beside this
# kit, `crossfed` on PATH; with none, one line says what to install (exit 127).
set -e
case $0 in */*) cd "${{0%/*}}" ;; esac  # into this kit (plain shell: a bare PATH may lack even dirname)
if [ -n "${{CROSSFED:-}}" ]; then :
elif [ -n "${{CROSSFED_PYTHON:-}}" ]; then
  if ! "$CROSSFED_PYTHON" -c "import deploy.cli" >/dev/null 2>&1; then
    echo "crossfed: error: CROSSFED_PYTHON=$CROSSFED_PYTHON cannot import crossfed: {INSTALL_HINT}" >&2
    exit 127
  fi
  CROSSFED="$CROSSFED_PYTHON -m deploy.cli"
elif [ -x .venv/bin/crossfed ]; then CROSSFED=.venv/bin/crossfed
elif [ -x ../.venv/bin/crossfed ]; then CROSSFED=../.venv/bin/crossfed
elif command -v crossfed >/dev/null 2>&1; then CROSSFED=crossfed
else
  echo "crossfed: error: crossfed is not installed for the kit $(pwd): {INSTALL_HINT}" >&2
  exit 127
fi
"""


def _platform_script(platform: str, address: str, runtime_port: int, keygen: bool, extra: Mapping[str, Any]) -> str:
    q = shlex.quote
    key, ident = f"{platform}.key", f"{platform}{KEY_SUFFIX}"
    keygen_step = f"""# With CROSSFED_IDENTITY_PASSPHRASE (or _FILE, a 0600 file) set, the identity key is made
# encrypted and the node needs the same variable to start.
if [ ! -f {q(key)} ]; then  # the private keys are made here and never leave this machine
  $CROSSFED deploy node-key --platform {q(platform)} --out .
  $CROSSFED deploy identity --platform {q(platform)} --out .
  echo "send $(pwd)/{key}.pub to the coordinator (its node-keys/ folder, then register.sh) and"
  echo "$(pwd)/{platform}{PUB_SUFFIX} to the operator (the roster); then run $0 again"
  exit 3
fi
if [ ! -f {ROSTER} ]; then
  echo "no {ROSTER} here yet: the operator builds it from every platform's .secagg.pub (crossfed deploy roster)"
  exit 3
fi
""" if keygen else ""  # fmt: skip
    extras = "".join(f" --node-config {q(config_string({k: v}))}" for k, v in extra.items())
    return (
        HEADER
        + f"""# The SuperNode of platform {platform}. DATA_DIR: its DATASET folder (default: the embedded
# synthetic shops); DEVICE: cpu, cuda, auto. Its private state (private parameters, audit log, secure-sum
# records, Flower's copy of the app) stays in {STATE}/ here unless --state-dir DIR says (relative: to
# this folder). More flags pass through (e.g. --node-config share-metrics=true); one the line below
# already gives, such as --state-dir, overrides it.
{keygen_step}exec $CROSSFED deploy supernode --platform {q(platform)} --superlink {q(address)} --certs . \\
  --key {q(key)} --secagg-identity {q(ident)} --secagg-roster {ROSTER} --state-dir {STATE} \\
  --data "${{DATA_DIR:-}}" --device "${{DEVICE:-cpu}}" --runtime-port {runtime_port}{extras} "$@"
"""
    )


def _superlink_script(port: int) -> str:
    return (
        HEADER
        + f"""# The SuperLink (TLS + SuperNode authentication); state.db keeps registered nodes and runs. The runs'
# checkpoints are MAC'ed under a key kept in {STATE}/ here (0600, made on first use) unless
# CROSSFED_CHECKPOINT_KEY names another file; keep it out of the runs' out-dir.
CROSSFED_CHECKPOINT_KEY=${{CROSSFED_CHECKPOINT_KEY:-$(pwd)/{STATE}/{CHECKPOINT_KEY_FILE}}}
export CROSSFED_CHECKPOINT_KEY
exec $CROSSFED deploy superlink --certs certs --database state.db --port {port} "$@"
"""
    )


def _register_script(federation: str, port: int) -> str:
    return (
        HEADER
        + f"""# Admit every platform's public key in node-keys/ (once the SuperLink is up; again after adding keys).
status=0
for pub in node-keys/*.key.pub; do
  [ -e "$pub" ] || continue
  $CROSSFED deploy register --key "$pub" --federation {shlex.quote(federation)} --superlink 127.0.0.1:{port} \\
    --certs certs || status=1
done
exit $status
"""
    )


def _submit_script(federation: str, port: int) -> str:
    return (
        HEADER
        + f"""# Submit a run: ./submit.sh "num-server-rounds=10 fed.min-nodes=3 out-dir='/srv/run1'" [--stream]
rc="$1"; shift
exec $CROSSFED deploy submit --federation {shlex.quote(federation)} --superlink 127.0.0.1:{port} --certs certs \\
  --run-config "$rc" "$@"
"""
    )
