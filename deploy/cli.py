"""``crossfed deploy ...``: run the federation on real machines (Flower Deployment Engine).

Quickest: one start-up kit per party, then each kit's scripts (see the README):
    crossfed deploy provision --host fl.example.org --platforms app,web_shop --out kits/ --federation prod
    DATA_DIR=/data kits/web_shop/start.sh    # on each platform: 1st start makes its keys, names the .pub to send
    crossfed deploy roster --pub app.secagg.pub --pub web_shop.secagg.pub --out roster.json   # operator
    kits/coordinator/start.sh & kits/coordinator/register.sh       # on the coordinator (node-keys/*.pub)
    DATA_DIR=/data kits/web_shop/start.sh                           # each platform, with roster.json in its kit
    kits/coordinator/submit.sh "num-server-rounds=5" --stream       # exit 0 only if the run completed
    crossfed deploy stop --federation prod                          # stop the active run (resumable)
    crossfed deploy status --federation prod [--json]               # platforms by name, runs, rounds
Step by step, on the coordinator (one machine):
    crossfed deploy ca --host fl.example.org --out certs/            # CA + SuperLink certificate
    crossfed deploy superlink --certs certs/ --database state.db     # TLS + SuperNode authentication
On each platform's machine (copy certs/ca.pem there; the private key never leaves it):
    crossfed deploy node-key --platform web_shop --out keys/         # keys/web_shop.key(.pub)
    crossfed deploy identity --platform web_shop --out keys/         # secure-aggregation signing key
The operator collects every platform's PLATFORM.secagg.pub into one roster and gives the same
roster file to every platform (out of band: never through the coordinator):
    crossfed deploy roster --pub app.secagg.pub --pub web_shop.secagg.pub ... --out roster.json
Key rotation: the platform replaces its identity, the operator its roster entry (README: Key custody):
    crossfed deploy rotate-key --platform web_shop --dir keys/ --roster roster.json
    crossfed deploy roster --update roster.json --pub web_shop.secagg.pub
A platform's audit log of the secure rounds it took part in, checked (signatures, chain, length):
    crossfed deploy audit kits/web_shop/state/web_shop/audit.jsonl --pub web_shop.secagg.pub
On the coordinator again, admit that platform's public key, then start the node:
    crossfed deploy register --key web_shop.key.pub --superlink fl.example.org:9093 --certs certs/
    crossfed deploy supernode --platform web_shop --data /data --superlink fl.example.org:9093 \\
        --certs certs/ --key keys/web_shop.key \\
        --secagg-identity keys/web_shop.secagg.key --secagg-roster roster.json --state-dir state/
Then submit the app (from a checkout of this repository) to a named federation; the name and
its connection are saved in $FLWR_HOME/config.toml, so later submits need only the name:
    crossfed deploy submit --federation prod --superlink fl.example.org:9093 --certs certs/ \
        --run-config "num-server-rounds=5" --stream
    crossfed deploy submit --federation prod --run-config "num-server-rounds=10"

``--insecure`` (plaintext HTTP, no TLS, no node authentication) exists for debugging only
and always prints a warning. Also runnable as ``python -m deploy.cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clients.private_state import DEFAULT_STATE_DIR, STATE_DIR_KEY
from common.config import ConfigError, config_string, parse_config_strings
from common.data import load_platform
from common.files import InputFileError
from common.ports import check_listen
from common.secagg.errors import SecAggError
from deploy.book import remember_run
from deploy.certs import CertError, TlsFiles, create_node_key, create_tls, load_node_private_key, public_key_fingerprint
from deploy.commands import (
    DEFAULT_SUPERLINK_PORT,
    ISOLATIONS,
    REPO_ROOT,
    THREAD_VARS,
    SuperLinkSpec,
    SuperNodeSpec,
    base_env,
    flower_bin,
    superlink_command,
    superlink_env,
    supernode_command,
    supernode_env,
    supernode_flwr_home,
    thread_env,
    worker_command,
)
from deploy.errors import DeployError, InsecureDeploymentWarning
from deploy.flwr_cli import Connection, register_node, start_run, wait_run
from deploy.operate import collect_status, format_status, refuse_if_active, run_outcome, stop_runs
from deploy.processes import free_ports, run_foreground

DEFAULT_MAX_WAIT_S = 600.0  # a SuperNode that cannot reach or is refused by the SuperLink stops, saying why
FLOWER_CONNECTION_ERROR = 305  # flwr 1.42 ExitCode.SUPERNODE_CONNECTION_ERROR
# one line + exit 2, like crossfed's other user errors
USER_ERRORS = (CertError, ConfigError, DeployError, SecAggError, InputFileError)
CONNECTION = "crossfed"


def add_deploy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Mount ``deploy`` (with its own subcommands) on a parent's ``add_subparsers()`` object."""
    deploy = subparsers.add_parser("deploy", help="run on real machines: certificates, SuperLink, SuperNodes, runs",
                                   description=__doc__.split("\n\n")[0], epilog=_usage_epilog(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = deploy.add_subparsers(dest="deploy_command", required=True)

    ca = sub.add_parser("ca", help="create a CA and the SuperLink's TLS certificate")
    ca.add_argument("--host", required=True, help="the SuperLink's DNS name or IP as SuperNodes will dial it")
    ca.add_argument("--extra-name", action="append", default=[], help="another DNS name / IP for the certificate")
    ca.add_argument("--out", required=True, type=Path, help="folder for ca.pem, ca.key, server.pem, server.key")
    ca.add_argument("--overwrite", action="store_true", help="replace existing key material")
    ca.set_defaults(func=cmd_ca)

    key = sub.add_parser("node-key", help="create a SuperNode authentication key pair (OpenSSH, EC P-384)")
    key.add_argument("--platform", required=True)
    key.add_argument("--out", required=True, type=Path, help="folder for PLATFORM.key (0600) and PLATFORM.key.pub")
    key.add_argument("--overwrite", action="store_true")
    key.add_argument("--register", action="store_true", help="also register the public key (needs --superlink)")
    _add_connection_args(key, required=False)
    key.set_defaults(func=cmd_node_key)

    ident = sub.add_parser("identity", help="create a platform's secure-aggregation signing key (Ed25519)")
    ident.add_argument("--platform", required=True)
    ident.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder for PLATFORM.secagg.key (0600, stays) and PLATFORM.secagg.pub (to the operator)",
    )
    ident.set_defaults(func=cmd_identity)

    roster = sub.add_parser("roster", help="build the roster of platform identities every platform gets")
    roster.add_argument("--pub", required=True, action="append", type=Path, help="a PLATFORM.secagg.pub (repeat)")
    roster.add_argument("--out", type=Path, help="the roster file (JSON) to hand to every platform")
    roster.add_argument("--update", type=Path, metavar="ROSTER",
                        help="replace only the entries of the platforms whose --pub is given (key rotation); "
                             "written back to ROSTER unless --out says")  # fmt: skip
    roster.set_defaults(func=cmd_roster)

    rotate = sub.add_parser("rotate-key", help="on a platform: replace its secure-aggregation identity (and its "
                            "entry in its own roster copy)")  # fmt: skip
    rotate.add_argument("--platform", required=True)
    rotate.add_argument("--dir", required=True, type=Path, help="the folder holding PLATFORM.secagg.key and .pub")
    rotate.add_argument("--roster", type=Path, help="this platform's roster.json: its own entry gets the new key")
    rotate.set_defaults(func=cmd_rotate_key)

    audit = sub.add_parser("audit", help="show and check a platform's audit log (signatures, chain, length)")
    audit.add_argument("log", type=Path, help="the platform's audit.jsonl (STATE_DIR/PLATFORM/audit.jsonl)")
    audit.add_argument("--pub", action="append", type=Path,
                       help="the platform's PLATFORM.secagg.pub (repeat for keys it rotated away from)")  # fmt: skip
    audit.add_argument("--expect", metavar="COUNT:HASH",
                       help="the witness an earlier check printed: the log must still hold that entry")  # fmt: skip
    audit.add_argument("--json", action="store_true", help="the verified entries as JSON lines")
    audit.set_defaults(func=cmd_audit)

    reg = sub.add_parser("register", help="admit a SuperNode's public key at the SuperLink")
    reg.add_argument("--key", required=True, type=Path, help="PLATFORM.key.pub")
    reg.add_argument("--name", help="a name shown by `flwr supernode ls` (default: the file's stem)")
    _add_connection_args(reg, required=False, named=True)
    reg.set_defaults(func=cmd_register)

    kit = sub.add_parser("provision", help="one start-up kit per platform + one for the coordinator (certs, keys, "
                         "scripts)")  # fmt: skip
    kit.add_argument("--host", required=True, help="the SuperLink's DNS name or IP as SuperNodes will dial it")
    kit.add_argument("--platforms", required=True, help="comma-separated platform names, e.g. app,web_shop")
    kit.add_argument("--out", required=True, type=Path, help="a new folder for the kits")
    kit.add_argument("--port", type=int, default=DEFAULT_SUPERLINK_PORT, help="the SuperLink's port")
    kit.add_argument("--federation", default=CONNECTION, help="the federation's name for register/submit")
    kit.add_argument("--extra-name", action="append", default=[], help="another DNS name / IP for the certificate")
    kit.add_argument("--insecure-demo-keys", action="store_true",
                     help="one-machine demo only: make every platform's private keys HERE, in the kits "
                          "(default: each platform's start.sh makes its own on first start)")  # fmt: skip
    kit.add_argument("--keys-on-platform", action="store_true", help=argparse.SUPPRESS)  # the default now
    kit.set_defaults(func=cmd_provision)

    link = sub.add_parser("superlink", help="run the SuperLink (foreground)")
    link.add_argument("--certs", type=Path, help="folder with ca.pem, server.pem, server.key")
    link.add_argument("--host", default="0.0.0.0", help="bind address")
    link.add_argument("--port", type=int, default=DEFAULT_SUPERLINK_PORT, help="Fleet + Control + Runtime API port")
    link.add_argument("--database", type=Path, help="state file; keeps registered nodes across restarts")
    link.add_argument("--no-node-auth", action="store_true", help="admit any SuperNode (not recommended)")
    link.add_argument("--insecure", action="store_true", help="plaintext HTTP (debugging only)")
    link.add_argument("--print", action="store_true", help="print the command instead of running it")
    link.set_defaults(func=cmd_superlink)

    node = sub.add_parser("supernode", help="run one platform's SuperNode + warm ClientApp worker (foreground)")
    node.add_argument("--platform", required=True)
    node.add_argument("--data", default="", help="DATASET folder holding PLATFORM/ ('' = embedded synthetic data)")
    node.add_argument("--key", type=Path, help="PLATFORM.key (authentication; required unless --insecure)")
    node.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto")
    node.add_argument("--secagg-identity", type=Path, help="PLATFORM.secagg.key (`crossfed deploy identity`)")
    node.add_argument("--secagg-roster", type=Path, help="the operator's roster (`crossfed deploy roster`)")
    node.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default="process",
        help="process = one warm ClientApp worker (default); subprocess = Flower's process per message",
    )
    node.add_argument("--runtime-port", type=int,
                      help="local Runtime API port (default: a free one, so SuperNodes can share a host)")  # fmt: skip
    node.add_argument("--node-config", action="append", default=[], metavar="KEY=VALUE",
                      help="more node_config, e.g. require-secagg=true share-metrics=false")  # fmt: skip
    node.add_argument("--state-dir", type=Path, metavar="DIR",
                      help=f"this platform's private state: private parameters, audit log, secure-sum records, "
                           f"privacy ledger, Flower's copy of the app (default: node_config state-dir, else "
                           f"{DEFAULT_STATE_DIR}; a kit's start.sh passes its own state/)")  # fmt: skip
    node.add_argument("--threads", type=int,
                      help="CPU threads for training (default: the cores shared among this host's SuperNodes; "
                           "an OMP_NUM_THREADS already set wins)")  # fmt: skip
    node.add_argument("--flower-polling", action="store_true", help="keep Flower's 3 s idle polling")
    node.add_argument("--max-wait", type=float, default=DEFAULT_MAX_WAIT_S,
                      help="give up connecting after S seconds; 0 = retry forever (default: %(default)s)")  # fmt: skip
    node.add_argument("--print", action="store_true", help="print the commands instead of running them")
    _add_connection_args(node)
    node.set_defaults(func=cmd_supernode)

    submit = sub.add_parser("submit", help="submit the crossfed app (`flwr run`) to the SuperLink")
    submit.add_argument("--app", type=Path, default=REPO_ROOT, help="app folder with pyproject.toml")
    submit.add_argument("--run-config", action="append", default=[], help="'k1=v1 k2=v2' (as `flwr run`)")
    submit.add_argument("--stream", action="store_true", help="stream the ServerApp log until the run ends")
    submit.add_argument("--detach", action="store_true",
                        help="return once started (default: wait for the end; exit 1 if the run failed)")  # fmt: skip
    submit.add_argument("--replace", action="store_true",
                        help="stop the federation's active run first (default: refuse while one runs)")  # fmt: skip
    submit.add_argument("--tensorboard", type=Path, metavar="DIR",
                        help="the ServerApp writes the rounds' aggregate metrics as TensorBoard scalars to "
                             "DIR/server (a path on the coordinator; default: <out-dir>/tensorboard)")  # fmt: skip
    _add_connection_args(submit, required=False, named=True)
    submit.set_defaults(func=cmd_submit)

    stop = sub.add_parser("stop", help="stop a run (default: the active one); its checkpoint stays resumable")
    stop.add_argument("run", nargs="?", type=int, metavar="RUN", help="the run id (default: every active run)")
    _add_connection_args(stop, required=False, named=True)
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="runs, platforms online (by name), each run's latest round and failures")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    status.add_argument("--runs", type=int, default=5, help="how many of the latest runs to show")
    _add_connection_args(status, required=False, named=True)
    status.set_defaults(func=cmd_status)
    return deploy


def _add_connection_args(p: argparse.ArgumentParser, required: bool = True, named: bool = False) -> None:
    p.add_argument("--superlink", required=required, metavar="HOST:PORT")
    p.add_argument("--certs", type=Path, help="folder with ca.pem (the CA that signed the SuperLink)")
    p.add_argument("--insecure", action="store_true", help="plaintext HTTP (debugging only)")
    if named:
        p.add_argument("--federation", default=CONNECTION, metavar="NAME",
                       help="the federation's name in $FLWR_HOME/config.toml: saved (and made the default) "
                            "when --superlink is given, reused when it is not (default: %(default)s)")  # fmt: skip


def _usage_epilog() -> str:
    return __doc__.split("\n\n", 1)[1]


# ---------------------------------------------------------------------------- commands


def cmd_ca(args: argparse.Namespace) -> int:
    tls = create_tls(args.out, args.host, tuple(args.extra_name), overwrite=args.overwrite)
    print(f"CA certificate  {tls.ca_cert}  (copy to every SuperNode and to whoever runs `submit`)")
    print(f"CA key          {tls.ca_key}  (keep offline)")
    print(f"SuperLink cert  {tls.server_cert} + {tls.server_key}  for {args.host}, localhost, 127.0.0.1, ::1")
    return 0


def cmd_node_key(args: argparse.Namespace) -> int:
    key = create_node_key(args.out, args.platform, overwrite=args.overwrite)
    print(f"private key {key.private} (0600, stays on this machine)")
    print(f"public key  {key.public}  fingerprint {public_key_fingerprint(key.public)}")
    if args.register:
        if not args.superlink:
            raise DeployError("--register needs --superlink HOST:PORT (and --certs DIR)")
        conn = _connection(args)
        node_id = register_node(key.public, conn, base_env(conn.flwr_home), name=args.platform)
        print(f"registered as node {node_id}")
    else:
        print("admit it at the SuperLink with: crossfed deploy register --key", key.public, "--superlink HOST:PORT ...")
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    from common.secagg.identity import PASSPHRASE_ENV, Identity, fingerprint, read_passphrase, save_identity

    identity = Identity.generate(args.platform)
    passphrase = read_passphrase()
    key_path, pub_path = save_identity(identity, args.out, passphrase)
    at_rest = "encrypted with the passphrase" if passphrase else f"NOT encrypted: set {PASSPHRASE_ENV} to encrypt"
    print(f"signing key {key_path} (0600, {at_rest}; stays on this machine; node_config secagg-identity)")
    print(f"public key  {pub_path}  fingerprint {fingerprint(identity.public_key)}")
    print("send the .pub file to the operator, who builds the roster with `crossfed deploy roster`")
    return 0


def cmd_roster(args: argparse.Namespace) -> int:
    from common.secagg.identity import build_roster, fingerprint
    from deploy.keys import update_roster

    if args.update is None and args.out is None:
        raise DeployError("--out ROSTER is required (or --update ROSTER to replace entries of an existing one)")
    out = args.out or args.update
    if args.update is not None:
        roster = update_roster(args.update, args.pub, out)
    else:
        roster = build_roster(args.pub)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(roster.to_json())
    for name, key in sorted(roster.keys.items()):
        print(f"{name:24s} {fingerprint(key)}")
    print(f"roster {out}: give this same file to every platform (node_config secagg-roster); "
          "each platform should compare its own fingerprint")  # fmt: skip
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from common.secagg.identity import PASSPHRASE_ENV, fingerprint, read_passphrase
    from deploy.keys import rotate_identity

    passphrase = read_passphrase()
    done = rotate_identity(args.platform, args.dir, args.roster, passphrase)
    at_rest = "encrypted with the passphrase" if passphrase else f"NOT encrypted: set {PASSPHRASE_ENV} to encrypt"
    print(f"old identity {fingerprint(done.old_public)}: its private key is gone")
    print(f"new identity {fingerprint(done.new_public)}: {done.key} (0600, {at_rest})")
    if done.roster is not None:
        print(f"{done.roster}: entry `{args.platform}` now holds the new key, every other entry as it was")
    print(f"send {done.pub} to the operator: `crossfed deploy roster --update roster.json --pub "
          f"{done.pub.name}`, then the same roster to every platform; rounds set up before every platform "
          "has it abort (the run goes on)")  # fmt: skip
    return 0


def _secagg_trust(args: argparse.Namespace) -> dict[str, str]:
    """node_config entries naming the platform's identity and roster files (checked now, not mid-round)."""
    from common.secagg.identity import Roster, load_identity, read_passphrase

    if args.secagg_identity is None and args.secagg_roster is None:
        return {}
    if args.secagg_identity is None or args.secagg_roster is None:
        raise DeployError("--secagg-identity and --secagg-roster go together")
    Roster.load(args.secagg_roster).check_own(load_identity(args.secagg_identity, args.platform, read_passphrase()))
    return {"secagg-identity": str(args.secagg_identity.resolve()), "secagg-roster": str(args.secagg_roster.resolve())}


def cmd_audit(args: argparse.Namespace) -> int:
    """Exit 0 when the log verifies, 1 (one line saying where and why) when it does not."""
    from common.audit import AuditError, verify
    from common.secagg.identity import load_public

    keys = None if not args.pub else [load_public(p)[1] for p in args.pub]
    try:
        checked = verify(args.log, keys, args.expect)
    except AuditError as exc:
        print(f"crossfed: error: audit log does NOT verify: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for entry in checked.entries:
            print(json.dumps(entry))
        return 0
    print(f"{'#':>4} {'time (UTC)':25} {'round':>5} {'kind':18} {'cohort':>6} {'masked':>6} {'t':>3} "
          f"{'epsilon':>8} {'sent (bytes)':>12}  run")  # fmt: skip
    for e in checked.entries:
        eps = "-" if e["epsilon"] is None else f"{e['epsilon']:.3g}"
        sent = sum(m["bytes"] for m in e["sent"])
        print(f"{e['seq']:>4} {e['time']:25} {e['round']:>5} {e['kind']:18} {e['cohort']:>6} {e['masked_with']:>6} "
              f"{e['threshold']:>3} {eps:>8} {sent:>12}  {e['run']}")  # fmt: skip
    for note in checked.notes:
        print(f"note: {note}")
    print(f"verified: {len(checked.entries)} entries, signed by {', '.join(checked.keys) or 'nobody'}")
    print(f"witness {checked.witness}  (keep it; `--expect {checked.witness}` next time proves nothing was cut)")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from deploy.certs import load_node_public_key

    load_node_public_key(args.key)  # a clear error before flwr's
    name = args.name or args.key.name.removesuffix(".pub").removesuffix(".key")
    conn = _connection(args)
    node_id = register_node(args.key, conn, base_env(conn.flwr_home), name=name)
    print(f"registered {args.key} ({public_key_fingerprint(args.key)}) as node {node_id}")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from deploy.provision import provision

    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    if args.insecure_demo_keys and args.keys_on_platform:
        raise DeployError("--insecure-demo-keys and --keys-on-platform contradict each other")
    kits = provision(args.out, args.host, platforms, port=args.port, federation=args.federation,
                     extra_names=args.extra_name, insecure_demo_keys=args.insecure_demo_keys)  # fmt: skip
    print(f"CA key        {kits.ca}/  (signs certificates: keep offline, ship nowhere)")
    print(f'coordinator   {kits.coordinator}/  ./start.sh; ./register.sh; ./submit.sh "RUN CONFIG" --stream')
    for platform, folder in kits.platforms.items():
        print(f"{platform:<13} {folder}/  ship to {platform}'s machine; DATA_DIR=/data/DATASET ./start.sh "
              "(private state: state/ there)")  # fmt: skip
    if args.insecure_demo_keys:
        print("crossfed: warning: --insecure-demo-keys: every platform's private keys were made on this machine; "
              "whoever holds these kits holds every identity (one-machine demo only)", file=sys.stderr)  # fmt: skip
    else:
        print("no private key is in any kit: each platform's first ./start.sh makes its keys and names the two "
              ".pub files to send (node key -> coordinator/node-keys/ + register.sh; .secagg.pub -> the operator, "
              "who runs `crossfed deploy roster` and puts roster.json into every platform's folder)")  # fmt: skip
    return 0


def cmd_superlink(args: argparse.Namespace) -> int:
    if not args.print:
        check_listen(args.host, args.port)  # now, not after Flower has started and logged its own failure
    tls = None if args.insecure else TlsFiles.in_dir(_need(args.certs, "--certs")).check()
    spec = SuperLinkSpec(tls=tls, host=args.host, port=args.port, node_auth=not (args.no_node_auth or args.insecure),
                         database=args.database, insecure=args.insecure)  # fmt: skip
    if not spec.node_auth:
        print("crossfed: warning: SuperNode authentication is OFF: any SuperNode can join", file=sys.stderr)
    cmd = superlink_command(spec)
    if args.print:
        print(" ".join(cmd))
        return 0
    return run_foreground([cmd], {**base_env(), **superlink_env()})


def cmd_supernode(args: argparse.Namespace) -> int:
    if args.runtime_port and not args.print:
        check_listen("127.0.0.1", args.runtime_port, "--runtime-port")
    if args.data and not args.print:  # a bad file is one line now, not a failed first round in Flower's log
        load_platform(Path(args.data).expanduser(), args.platform)
    if not args.insecure:
        if args.key is None:
            raise DeployError("--key PLATFORM.key is required (create it with `crossfed deploy node-key`)")
        load_node_private_key(args.key)
    extra = {**parse_config_strings(args.node_config, "--node-config"), **_secagg_trust(args)}
    state = state_dir(args.state_dir, extra)
    spec = SuperNodeSpec(
        platform=args.platform, superlink=args.superlink,
        root_cert=None if args.insecure else _ca_cert(args.certs),
        key=None if args.insecure else args.key, data_dir=args.data, device=args.device,
        runtime_port=args.runtime_port or free_ports(1)[0], isolation=args.isolation, insecure=args.insecure,
        fast_poll_s=None if args.flower_polling else 0.25, max_wait_s=args.max_wait or None,
        extra={**extra, STATE_DIR_KEY: str(state)}, flwr_home=supernode_flwr_home(state, args.platform),
    )  # fmt: skip
    if not args.data:
        print(f"crossfed: warning: no --data: SuperNode {args.platform} serves the embedded synthetic demo "
              "data, not a platform's own", file=sys.stderr)  # fmt: skip
    env = {**base_env(), **supernode_env(spec), **thread_env(args.threads)}
    cmds = [supernode_command(spec)]
    if spec.isolation == "process":
        cmds.append(worker_command(spec.runtime_port, parent_pid=0))  # pid filled in by run_foreground
    if args.print:
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k in (*THREAD_VARS, "FLWR_HOME"))
        for cmd in cmds:
            print(" ".join([shown, *cmd]) if shown else " ".join(cmd))
        return 0
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)  # 0700 when made here: its listing is private too
    except OSError as exc:
        raise DeployError(f"--state-dir {state}: cannot make that folder ({exc.strerror})") from exc
    print(f"crossfed: SuperNode {args.platform} keeps its private state in {state}", file=sys.stderr)
    code = run_foreground(cmds, env)
    if code == FLOWER_CONNECTION_ERROR:
        print(refusal_hint(spec), file=sys.stderr)
    return code


def state_dir(flag: Path | None, node_config: Mapping[str, Any]) -> Path:
    """The platform's state folder, absolute: ``--state-dir``, else node_config ``state-dir``, else the
    ClientApp's default; the two given and different is refused (which one meant it?)."""
    given = node_config.get(STATE_DIR_KEY)
    chosen = Path(str(given if given is not None else DEFAULT_STATE_DIR)) if flag is None else flag
    chosen = chosen.expanduser().resolve()
    if flag is not None and given is not None and Path(str(given)).expanduser().resolve() != chosen:
        raise DeployError(f"--state-dir '{flag}' and --node-config {STATE_DIR_KEY}={given!r} disagree: give one")
    return chosen


def refusal_hint(spec: SuperNodeSpec) -> str:
    """One line for Flower's "connection error" exit: the SuperLink said no, or was never reached."""
    checks = [f"its public key is registered at the coordinator (`crossfed deploy register --key {spec.key}.pub`)"
              if spec.key else "the SuperLink admits nodes without authentication",
              "it trusts the CA that signed the SuperLink (`--certs` holds that ca.pem)" if not spec.insecure else
              "the SuperLink runs without TLS too (a plaintext node cannot talk to a TLS SuperLink)",
              f"{spec.superlink} is reachable"]  # fmt: skip
    return (
        f"crossfed: error: SuperNode {spec.platform} could not join {spec.superlink} (Flower exit "
        f"{FLOWER_CONNECTION_ERROR}); check that " + "; that ".join(checks)
    )


def cmd_submit(args: argparse.Namespace) -> int:
    """Start the run; unless --detach, wait for its end: exit 0 only when it completed."""
    conn = _connection(args)
    env = base_env(conn.flwr_home)
    config_args = list(args.run_config)
    given = parse_config_strings(config_args, "--run-config")
    if "secagg" not in given:
        config_args.insert(0, "secagg=true")  # deployed platforms refuse rounds in the clear by default
    if args.tensorboard is not None:
        config_args.append(config_string({"tensorboard-dir": str(args.tensorboard.expanduser().resolve())}))
    if args.replace:
        for line in stop_runs(conn, env):
            print(f"crossfed: {line}", flush=True)
    else:
        refuse_if_active(conn, env)  # one run at a time: two would compete for the same platforms
    run_id = start_run(args.app, conn, env, config_args)
    out_dir = given.get("out-dir")  # where its rounds.jsonl is, for `deploy status`
    out_dir = None if out_dir is None else str(Path(str(out_dir)).expanduser().resolve())
    remember_run(conn.flwr_home, conn.name, run_id, out_dir)
    print(f"crossfed: run {run_id} started on federation {conn.name}", flush=True)
    if args.detach:
        return 0
    if args.stream:  # ends when the run ends (or the SuperLink goes away)
        subprocess.call([flower_bin("flwr"), "log", str(run_id), conn.name, "--stream"], env=env)  # noqa: S603
    record = wait_run(run_id, conn, env, timeout_s=math.inf, poll_s=2.0)
    code, line = run_outcome(run_id, record, conn, env)
    print(
        f"crossfed: {line}" if code == 0 else f"crossfed: error: {line}", file=sys.stdout if code == 0 else sys.stderr
    )
    return code


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop RUN (default: the active run) through the SuperLink; the last completed round stays resumable."""
    conn = _connection(args)
    for line in stop_runs(conn, base_env(conn.flwr_home), args.run):
        print(f"crossfed: {line}", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    conn = _connection(args)
    status = collect_status(conn, base_env(conn.flwr_home), limit=args.runs)
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


# ---------------------------------------------------------------------------- helpers


def _need(value: Path | None, flag: str) -> Path:
    if value is None:
        raise DeployError(f"{flag} DIR is required (or --insecure, for debugging only)")
    return value


def _ca_cert(certs: Path | None) -> Path:
    return TlsFiles.in_dir(_need(certs, "--certs")).check(need_server=False).ca_cert


def _connection(args: argparse.Namespace) -> Connection:
    """The named federation for flwr CLI calls: saved from --superlink/--certs, or reused by name."""
    home = Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser()
    name = getattr(args, "federation", CONNECTION)
    if not args.superlink:
        if args.certs or args.insecure:
            raise DeployError("--certs/--insecure describe a connection: give --superlink HOST:PORT with them")
        return Connection.load(name, home)
    root = None if args.insecure else _ca_cert(args.certs)
    conn = Connection(name, args.superlink, root, args.insecure, home)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureDeploymentWarning)  # warned once below instead
        conn.write()
    if args.insecure:
        print("crossfed: warning: --insecure: plaintext HTTP to the SuperLink", file=sys.stderr)
    return conn


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m deploy.cli")
    add_deploy_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"crossfed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(["deploy", *sys.argv[1:]] if sys.argv[1:2] != ["deploy"] else None))
