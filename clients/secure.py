"""The platform's side of secure aggregation, between Flower messages.

Round r: the ``train`` message carries the global adapter and the protocol's setup
request; the platform trains, keeps its update in ``context.state`` (it never leaves
in the clear) and answers with its signed public keys. The ``train.secagg`` messages that
follow carry the remaining stages; the protocol state (secrets included) is kept in
``context.state`` between them, because the ClientApp process may not survive.

What the platform decides itself, from its own node_config (never from the server):
- its identity and the operator's roster (``secagg-identity``, ``secagg-roster``: files made
  by ``crossfed deploy identity`` / ``crossfed deploy roster``); simulated platforms derive
  public identities for every platform of the dataset (they protect nothing);
- its policy (``secagg-min-cohort``, ``secagg-threshold-fraction``, ``secagg-max-rounds``);
- the round context: the hash of the global adapter and training config it received, which
  every key and signature of the round is bound to;
- a contribution record on its own disk (next to its private parameters), one file per run,
  written before each masked input leaves, so a restarted platform or a replayed round is
  refused (simulated platforms keep it in ``context.state`` for the Flower run, so a simulation
  can be re-run from scratch). It allows one input per platform per round for every secure sum
  (``admit_round``): the adapter (``train``) of rounds that only move forward; one metric sum per
  round whatever its splits (``evaluate``), only of the round the platform last trained in; and
  one test sum per run (``test``), of the very model and config it evaluated in that round. A
  failed stage destroys the round's secrets and parked update.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from clients import audit
from clients.platform import PARTITION_KEY, platform_names
from common.config import AppConfig
from common.files import atomic_write_text
from common.payload import ARRAYS, CONFIG
from common.secagg import (
    STAGE_MASKED_INPUT,
    STAGE_SETUP,
    STAGE_UNMASK,
    ClientState,
    ConfigError,
    Identity,
    Manifest,
    PlatformPolicy,
    Roster,
    SecAggClient,
    SecAggError,
    stage_of,
)
from common.secagg.client import ABORTED
from common.secagg.identity import load_identity, read_passphrase
from common.secure_wire import from_records, round_context, secagg_config, to_records

STATE = "secagg-state"  # context.state ConfigRecord: {"client", "weight", "platform", "record", "context", "kind"}
UPDATE = "secagg-update"  # context.state ArrayRecord: the trained adapter + head awaiting masking
ROUND_CONFIG = "secagg-config"  # context.state ConfigRecord: the run config of the round's first message
# A sum riding beside the training sum on the same messages (``common.secure_wire.EVAL_SUM``: the metric
# sum of the previous round's adapter) keeps its own STATE/UPDATE slots, suffixed with that name.

log = logging.getLogger("crossfed.client")

# Fault injection for the real-process tests (tests/deploy): while this file exists and names
# "<platform> <round> <stage>", that platform stops answering at that stage of that round, as a
# platform that dies mid-protocol would; the test then kills its processes. Unset in normal use.
HANG_FILE_ENV = "CROSSFED_TEST_HANG_FILE"

REQUIRE_KEY = "require-secagg"  # node_config: refuse rounds in the clear (default: on outside simulation)
SHARE_METRICS_KEY = "share-metrics"  # node_config: send per-platform evaluation metrics under secagg
IDENTITY_KEY = "secagg-identity"  # node_config: this platform's Ed25519 key (PEM), from `crossfed deploy identity`
ROSTER_KEY = "secagg-roster"  # node_config: the operator's roster (JSON), from `crossfed deploy roster`
RECORD_FILE = "secagg-contributions.json"


def requires_secagg(node_config: Mapping[str, object]) -> bool:
    """Deployed platforms (no simulation ``partition-id``) only train under secure aggregation."""
    return bool(node_config.get(REQUIRE_KEY, PARTITION_KEY not in node_config))


def shares_metrics(node_config: Mapping[str, object]) -> bool:
    """Under secure aggregation, per-platform metrics leave only when the platform opts in."""
    return bool(node_config.get(SHARE_METRICS_KEY, PARTITION_KEY in node_config))


@dataclass(frozen=True)
class PlatformTrust:
    """Who this platform is, whom it shares secrets with, and what it requires of a round."""

    identity: Identity
    roster: Roster
    policy: PlatformPolicy


def platform_trust(node_config: Mapping[str, object], platform: str, cfg: AppConfig) -> PlatformTrust:
    """Identity, roster and policy from the node_config; ConfigError saying how to provision them."""
    simulated = PARTITION_KEY in node_config
    policy_config = dict(node_config)
    if simulated:  # a simulated federation may be two platforms; a deployed platform defaults to 3
        policy_config.setdefault(PlatformPolicy.KEYS["min_cohort"], 2)
    policy = PlatformPolicy.from_node_config(policy_config)
    if IDENTITY_KEY in node_config or ROSTER_KEY in node_config:
        if IDENTITY_KEY not in node_config or ROSTER_KEY not in node_config:
            raise ConfigError(f"node_config needs both `{IDENTITY_KEY}` and `{ROSTER_KEY}`")
        identity = load_identity(str(node_config[IDENTITY_KEY]), platform, read_passphrase())
        roster = Roster.load(str(node_config[ROSTER_KEY]))
        roster.check_own(identity)
        return PlatformTrust(identity, roster, policy)
    if not simulated:
        raise ConfigError(
            f"platform `{platform}` has no secure-aggregation identity: run `crossfed deploy identity "
            f"--platform {platform} --out keys/`, have the operator build the roster with `crossfed deploy "
            f"roster`, and start the node with node_config `{IDENTITY_KEY}=<key file>` `{ROSTER_KEY}=<roster file>`"
        )
    names = platform_names(cfg.data.dir if "data-dir" not in node_config else str(node_config["data-dir"]), cfg.seed)
    if platform not in names:
        names.append(platform)
    return PlatformTrust(Identity.simulated(platform), Roster.of(Identity.simulated(n) for n in names), policy)


def noise_shares(cfg: AppConfig, policy: PlatformPolicy) -> int:
    """The fewest inputs any sum this platform joins can hold: the Shamir threshold of the smaller of the
    run's and its own minimum cohort (a server that claims a larger one cannot thin the noise)."""
    return secagg_config(cfg).threshold(min(cfg.secure.min_cohort, policy.min_cohort))


# -- the contribution record ------------------------------------------------------
MEMORY_RECORD = "secagg-record"  # context.state ConfigRecord {"json": ...}: a simulated platform's record
# The kinds of secure sum: the adapter (train), a round's metrics (evaluate: validation, and test
# with `eval.test-every-round`) and the best round's test metrics (test: once per run).
TRAIN, EVALUATE, TEST = "train", "evaluate", "test"
_LISTS = ("rounds", EVALUATE, "contexts", TEST)  # rounds = trained; contexts = each evaluated round's context


def metrics_kind(splits: tuple[str, ...]) -> str:
    """A metric sum without validation is the run's final test of the best round; any other is a round's."""
    return EVALUATE if "valid" in splits else TEST


def _read_record(context: Context, path: Path | None) -> dict[str, list[Any]]:
    """{"rounds": trained rounds, "evaluate": evaluated rounds, "contexts": their contexts (hex), "test": ...}."""
    if path is None:  # simulated: for the Flower run (a simulation re-run from scratch may repeat rounds)
        saved = context.state.get(MEMORY_RECORD)
        body = json.loads(str(saved["json"])) if isinstance(saved, ConfigRecord) else {}  # type: ignore[index]
        return {key: list(body.get(key, [])) for key in _LISTS}
    if not path.exists():
        return {key: [] for key in _LISTS}
    try:
        body = json.loads(path.read_text())
        record = {key: list(body.get(key, [])) for key in _LISTS}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable contribution record ({exc}); refusing to contribute") from None
    ints = (record[k] for k in ("rounds", EVALUATE, TEST))
    contexts = record["contexts"]
    if (
        not all(isinstance(r, int) for rounds in ints for r in rounds)
        or not all(isinstance(c, str) for c in contexts)
        or len(contexts) != len(record[EVALUATE])
    ):
        raise ConfigError(f"{path}: malformed contribution record; refusing to contribute")
    return record


def admit_round(
    context: Context, record: Path | None, rnd: int, policy: PlatformPolicy, kind: str = TRAIN, ctx: bytes = b""
) -> None:
    """ConfigError unless this platform may give round ``rnd`` of this run an input of ``kind``.

    One input per platform per round for every secure sum: a train round only after the last
    one (round numbers move forward), within the platform's round limit; one metric sum per
    round, only of the round it last trained in (so a metric sum costs the server a training
    round, and a platform gives at most ``secagg-max-rounds`` of them to one run); one test sum
    per run, of the very context (model and config) it evaluated in that round. ``ctx`` is the
    round context of the request (``round_context``).
    """
    rec = _read_record(context, record)
    where = record or "this run"
    trained = max(rec["rounds"], default=None)
    if kind == TRAIN:
        if rnd in rec["rounds"]:
            raise ConfigError(f"round {rnd} of this run already received this platform's masked input "
                              f"({where}); a round is never contributed to twice")  # fmt: skip
        if trained is not None and rnd < trained:
            raise ConfigError(f"round {rnd} is not after round {trained}, the last this platform trained in "
                              f"({where}): round numbers only move forward within a run")  # fmt: skip
        if len(rec["rounds"]) >= policy.max_rounds:
            raise ConfigError(f"this platform contributed to {len(rec['rounds'])} rounds of this run, its limit "
                              f"(`{PlatformPolicy.KEYS['max_rounds']}`)")  # fmt: skip
    elif kind == EVALUATE:
        if rnd in rec[EVALUATE]:
            raise ConfigError(f"round {rnd} already received this platform's metrics ({where}); one metric sum "
                              "per round, whatever its splits")  # fmt: skip
        if rnd != trained:
            last = "none yet" if trained is None else f"round {trained}"
            raise ConfigError(f"this platform did not train in round {rnd} of this run (last trained: {last}); "
                              "it evaluates only the round it last trained in")  # fmt: skip
    elif kind == TEST:
        if rec[TEST]:
            raise ConfigError(f"this run already received this platform's test metrics (round {rec[TEST][0]}); "
                              "the final test is once per run")  # fmt: skip
        if rnd not in rec[EVALUATE] or rec["contexts"][rec[EVALUATE].index(rnd)] != ctx.hex():
            raise ConfigError(f"the model sent for round {rnd}'s test is not the model this platform evaluated in "
                              f"round {rnd} (context hash differs, or it did not evaluate that round)")  # fmt: skip
    else:
        raise ConfigError(f"unknown kind of secure sum {kind!r}")


def record_round(
    context: Context, record: Path | None, rnd: int, policy: PlatformPolicy, kind: str = TRAIN, ctx: bytes = b""
) -> None:
    """Write the round into the record (file: atomically, fsynced) before its masked input leaves."""
    admit_round(context, record, rnd, policy, kind, ctx)
    rec = _read_record(context, record)
    rec["rounds" if kind == TRAIN else kind].append(rnd)
    if kind == EVALUATE:
        rec["contexts"].append(ctx.hex())
    text = json.dumps(rec)
    if record is None:
        context.state[MEMORY_RECORD] = ConfigRecord({"json": text})
        return
    atomic_write_text(record, text, fsync=True)


# -- the stages -------------------------------------------------------------------
def start(
    msg_content: RecordDict,
    context: Context,
    cfg: AppConfig,
    update: Mapping[str, np.ndarray],
    weight: int,
    platform: str,
    record: Path | None,
    kind: str = TRAIN,
    epsilon: float | None = None,
    ns: str = "",
    config_key: str = CONFIG,
) -> dict[str, ConfigRecord | ArrayRecord]:
    """After local training: park the update, answer the setup stage with signed keys.

    ``ns``: the sum's name in the message (``common.secure_wire.EVAL_SUM`` for the metric sum beside a
    training sum), ``config_key``: the record holding the config its round context is bound to.
    """
    previous = _last_round(context, ns)  # its secrets are void now; its (session, round) refuses a replay
    _forget(context, ns)
    trust = platform_trust(context.node_config, platform, cfg)
    ctx = round_context(msg_content.get(ARRAYS), msg_content.get(config_key))
    client = SecAggClient(
        context.node_id, secagg_config(cfg), Manifest.from_arrays(update),
        identity=trust.identity, roster=trust.roster, policy=trust.policy, context=ctx, state=previous,
    )  # fmt: skip
    reply = client.handle(from_records(msg_content, ns))
    audit.note_sent(context, STAGE_SETUP, reply, first=True, ns=ns)
    parked = OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in update.items())
    context.state[UPDATE + ns] = ArrayRecord(parked)
    if isinstance(msg_content.get(CONFIG), ConfigRecord):  # the later stages run under it (they carry none)
        context.state[ROUND_CONFIG] = ConfigRecord(dict(msg_content[CONFIG]))  # type: ignore[arg-type]
    context.state[STATE + ns] = ConfigRecord({
        "client": client.state_bytes(), "weight": int(weight), "platform": platform, "record": str(record or ""),
        "context": ctx, "kind": kind, **({"epsilon": float(epsilon)} if epsilon is not None else {})})  # fmt: skip
    return to_records(reply, ns)


def stage_config(context: Context) -> ConfigRecord:
    """The run config a later stage runs under: the one its round's first message carried (kept by
    :func:`start`). Stage messages carry no config: every record is one more Flower object to push and
    pull per message, and a round's config cannot change between its stages anyway."""
    record = context.state.get(ROUND_CONFIG)
    if not isinstance(record, ConfigRecord):
        raise ValueError("secure-aggregation stage without its round's config on this platform (was it restarted?)")
    return record


def advance(
    msg_content: RecordDict, context: Context, cfg: AppConfig, ns: str = ""
) -> dict[str, ConfigRecord | ArrayRecord]:
    """One later stage of the ``ns`` sum; the parked update is masked, never sent. Any failure destroys
    that sum's secrets."""
    saved, parked = context.state.get(STATE + ns), context.state.get(UPDATE + ns)
    if not isinstance(saved, ConfigRecord) or not isinstance(parked, ArrayRecord):
        raise ValueError("secure-aggregation stage without a trained update on this platform (was it restarted?)")
    try:
        return _advance(msg_content, context, cfg, saved, parked, ns)
    except Exception:
        _forget(context, ns)
        raise


def _advance(
    msg_content: RecordDict, context: Context, cfg: AppConfig, saved: ConfigRecord, parked: ArrayRecord, ns: str
) -> dict[str, ConfigRecord | ArrayRecord]:
    update = OrderedDict((k, a.numpy()) for k, a in parked.items())
    trust = platform_trust(context.node_config, str(saved["platform"]), cfg)
    client = SecAggClient.from_state_bytes(
        saved["client"], secagg_config(cfg), Manifest.from_arrays(update),  # type: ignore[arg-type]
        identity=trust.identity, roster=trust.roster, policy=trust.policy, context=saved["context"],  # type: ignore[arg-type]
    )  # fmt: skip
    request = from_records(msg_content, ns)
    stage = stage_of(request)
    log.info("platform %s: round %d: secure aggregation (%s), %s", saved["platform"], client.state.round,
             saved.get("kind", TRAIN), stage)  # fmt: skip
    _hang_if_told(str(saved["platform"]), client.state.round, stage)
    if stage == STAGE_MASKED_INPUT:
        reply = client.handle(request, update, int(saved["weight"]))  # type: ignore[call-overload]
        record = Path(str(saved["record"])) if saved["record"] else None
        record_round(context, record, client.state.round, trust.policy, str(saved.get("kind", TRAIN)),
                     bytes(saved["context"]))  # type: ignore[arg-type]  # fmt: skip
        audit.note_sent(context, stage, reply, ns=ns)  # the audit entry, too, is written before the masked input leaves
        epsilon = float(saved["epsilon"]) if "epsilon" in saved else None  # type: ignore[arg-type]
        audit.log_round(context, cfg, trust.identity, client.state, str(saved.get("kind", TRAIN)),
                        saved["context"], epsilon, ns=ns)  # type: ignore[arg-type]  # fmt: skip
    else:
        reply = client.handle(request)
        audit.note_sent(context, stage, reply, ns=ns)
    if stage == STAGE_UNMASK:  # the round is over for this platform: forget secrets and update
        _forget(context, ns)
    else:
        context.state[STATE + ns] = ConfigRecord({**dict(saved), "client": client.state_bytes()})  # type: ignore[arg-type]
    return to_records(reply, ns)


def _hang_if_told(platform: str, rnd: int, stage: str) -> None:
    """Never return while the test's hang file (:data:`HANG_FILE_ENV`) names this platform, round and stage."""
    path = os.environ.get(HANG_FILE_ENV)
    if not path or _words(path) != [platform, str(rnd), stage]:
        return
    log.warning("platform %s: round %d: hanging at %s (%s)", platform, rnd, stage, HANG_FILE_ENV)
    while _words(path) == [platform, str(rnd), stage]:
        time.sleep(1.0)


def _words(path: str) -> list[str]:
    try:
        return Path(path).read_text().split()
    except OSError:  # gone: the test removed it
        return []


def _last_round(context: Context, ns: str = "") -> ClientState | None:
    """The protocol state an unfinished earlier setup of the ``ns`` sum left, wiped of its secrets (None if none)."""
    saved = context.state.get(STATE + ns)
    if not isinstance(saved, ConfigRecord):
        return None
    try:
        state = ClientState.from_bytes(saved["client"])  # type: ignore[arg-type]
    except (SecAggError, KeyError):
        return None
    if state.node_id != context.node_id:
        return None
    state.wipe()
    state.stage = ABORTED
    return state


def _forget(context: Context, ns: str = "") -> None:
    for key in (STATE + ns, UPDATE + ns):
        if key in context.state:
            del context.state[key]
