"""The platform side: a Flower ClientApp (Message API).

Handlers only parse the message, call :mod:`clients.tasks` (and :mod:`clients.secure`)
and build the reply. A failure the operator can fix (bad data, missing model, a
malformed update, a protocol violation) is returned as ONE error message to the server,
which leaves this platform out of the round; nothing else about the platform is sent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import update_console_handler

from clients import audit, privacy_guard, secure
from clients.metrics_log import append_metrics, log_scalars, platform_tensorboard_dir
from clients.platform import PARTITION_KEY, NodeSetup, resolve_node
from clients.private_state import DEFAULT_STATE_DIR, STATE_DIR_KEY, PrivateStore, run_store
from clients.tasks import evaluate_state, fit
from common.config import AppConfig, ConfigError
from common.data import DatasetError
from common.metric_sums import METRIC_VECTOR, encode_metrics
from common.modeling import ModelLoadError
from common.payload import (
    ARRAYS,
    CONFIG,
    EVAL,
    EVAL_CONFIG,
    INFO,
    INFO_MIN_COHORT,
    INFO_PLATFORM,
    METRICS,
    PayloadError,
    arrays_to_state,
    parse_config,
    parse_eval,
    state_to_arrays,
)
from common.privacy import run_mechanism
from common.secagg import SecAggError
from common.secure_wire import (
    EVAL_SUM,
    SECAGG,
    SECAGG_ACTION,
    has_sum,
    merge_records,
    round_context,
    secagg_config,
    sum_error,
)

log = logging.getLogger("crossfed.client")
QUIET_ENV = "CROSSFED_QUIET"  # set by `crossfed` (simulations.commands.console) unless --verbose; Ray actors inherit it
# Set by `crossfed simulate` while its Ray actors start: its driver has already loaded the data and printed
# the loader's warnings (dropped duplicates) once; every actor loading a platform would repeat them.
DATA_CHECKED_ENV = "CROSSFED_DATA_CHECKED"


class _HideActorShutdown(logging.Filter):
    """Flower's simulation stops every ClientApp actor with a WARNING ("Manually terminating
    ClientAppActor"), one per actor at every normal end of a run: nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Manually terminating")


if os.environ.get("NO_COLOR"):  # the no-color.org convention; `crossfed` sets it unless --verbose on a terminal
    update_console_handler(colored=False)  # Flower colours its level names even when not on a terminal
if os.environ.get(QUIET_ENV) == "1":
    logging.getLogger("flwr").addFilter(_HideActorShutdown())
if os.environ.get(DATA_CHECKED_ENV) == "1":
    logging.getLogger("common.data").setLevel(logging.ERROR)

# Errors a platform operator can act on; anything else is a bug and keeps its traceback.
OPERATOR_ERRORS = (
    DatasetError, ModelLoadError, ConfigError, PayloadError, SecAggError, ValueError, FloatingPointError,
)  # fmt: skip
ERROR_CODE = 1001

app = ClientApp()


def _error_reply(msg: Message, exc: Exception, context: Context) -> Message:
    where = context.node_config.get("platform", context.node_config.get("partition-id", "?"))
    reason = f"platform {where}: {type(exc).__name__}: {exc}"
    log.error(reason)
    return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)


@app.train()
def handle_train(msg: Message, context: Context) -> Message:
    """Fused adapter in; E local epochs; adapter + head (or, under secagg, public keys) out."""
    try:
        cfg, server_round = parse_config(msg.content[CONFIG])  # type: ignore[arg-type]
        setup = resolve_node(dict(context.node_config), cfg)
        if not cfg.secagg and secure.requires_secagg(context.node_config):
            raise ConfigError(
                "this platform trains only under secure aggregation (run with `secagg = true`, or set "
                f"node_config `{secure.REQUIRE_KEY}=false` to allow rounds in the clear)"
            )
        if cfg.privacy.enabled and not cfg.secagg:
            raise ConfigError("differential privacy needs `secagg = true`: this platform's share of the noise "
                              "is not enough on its own")  # fmt: skip
        store = _private_store(context, cfg, setup.platform)
        record = _contribution_record(context, store)
        n_min, spent = None, None
        if cfg.secagg:  # refuse a replayed round (or one past this platform's limit) before training
            trust = secure.platform_trust(context.node_config, setup.platform, cfg)
            secure.admit_round(context, record, server_round, trust.policy)
            n_min = secure.noise_shares(cfg, trust.policy)
        given = arrays_to_state(msg.content[ARRAYS])  # type: ignore[arg-type]
        privacy_guard.require_privacy(context.node_config, cfg)
        if cfg.privacy.enabled:  # this platform's own accounting, before it trains (README "Differential privacy")
            mech = run_mechanism(cfg, sum(v.size for v in given.values()) + 1, n_min)
            spent = privacy_guard.spend_round(context, store.folder, cfg, server_round, mech.noise_multiplier,
                                              mech.user_rate)  # fmt: skip
            log.info("platform %s: round %d: epsilon %.4g after this round", setup.platform, server_round, spent)
        folded: dict[str, ConfigRecord | ArrayRecord | MetricRecord] = {}
        if cfg.secagg and has_sum(msg.content, EVAL_SUM):  # first the metric sum of the adapter received
            folded = _evaluate_beside_training(msg, context, cfg, setup, store, record)
        log.info("platform %s: round %d: training on the global adapter", setup.platform, server_round)
        state, metrics = fit(cfg, setup, given, server_round, store, n_min)
        log_scalars(_tensorboard_dir(context, cfg, setup.platform, store), server_round, metrics, prefix="train.")
        if cfg.secagg:  # the update stays here; only the masked sum will leave
            weight = 1 if cfg.privacy.enabled else int(metrics["num-examples"])  # DP: counts are in the noisy sum
            records = secure.start(msg.content, context, cfg, state, weight, setup.platform, record,
                                   epsilon=spent)  # fmt: skip  # the audit entry says what this round spent
            merge_records(folded, records)
            return Message(RecordDict({**folded, INFO: _info(setup.platform, cfg, trust)}), reply_to=msg)
    except OPERATOR_ERRORS as exc:
        return _error_reply(msg, exc, context)
    content = {ARRAYS: state_to_arrays(state), METRICS: MetricRecord(metrics), INFO: _info(setup.platform)}
    return Message(RecordDict(content), reply_to=msg)


def _evaluate_beside_training(
    msg: Message, context: Context, cfg: AppConfig, setup: NodeSetup, store: PrivateStore, record: Path | None
) -> dict[str, ConfigRecord | ArrayRecord | MetricRecord]:
    """The metric sum of the adapter a train message carries (the previous round's), before training.

    Its setup answer (and the platform's metrics when it shares them) goes back with the training
    sum's; when this platform cannot take part (it did not train that round, it already sent that
    round's metrics, it failed to evaluate) it says why in the reply and still trains.
    """
    try:
        splits = parse_eval(msg.content.get(EVAL))
        _, rnd = parse_config(msg.content[EVAL_CONFIG])  # type: ignore[arg-type]
        kind = secure.metrics_kind(splits)
        trust = secure.platform_trust(context.node_config, setup.platform, cfg)
        ctx = round_context(msg.content.get(ARRAYS), msg.content.get(EVAL_CONFIG))
        secure.admit_round(context, record, rnd, trust.policy, kind, ctx)
        state = arrays_to_state(msg.content[ARRAYS])  # type: ignore[arg-type]
        metrics = evaluate_state(cfg, setup, state, rnd, store, splits)
        append_metrics(store.folder, rnd, metrics)
        log_scalars(_tensorboard_dir(context, cfg, setup.platform, store), rnd, metrics)
        vector, weight = encode_metrics(metrics, splits, cfg.secure.clip_range)
        out: dict[str, ConfigRecord | ArrayRecord | MetricRecord] = dict(secure.start(
            msg.content, context, cfg, {METRIC_VECTOR: vector}, weight, setup.platform, record, kind=kind,
            ns=EVAL_SUM, config_key=EVAL_CONFIG))  # fmt: skip
        if secure.shares_metrics(context.node_config):
            out[METRICS] = MetricRecord(metrics)
            audit.note_sent(context, audit.CLEAR_METRICS, audit.metrics_nbytes(metrics), ns=EVAL_SUM)
    except (*OPERATOR_ERRORS, KeyError) as exc:
        log.warning("platform %s: no metric sum beside this round's training: %s", setup.platform, exc)
        return sum_error(f"{type(exc).__name__}: {exc}")
    return out


@app.train(SECAGG_ACTION)
def handle_secagg_stage(msg: Message, context: Context) -> Message:
    """Key sharing, masked input and unmasking of the secure-aggregation round.

    A message may carry two sums: the round's training sum and, beside it, the metric sum of the
    previous round's adapter (``EVAL_SUM``). That one goes first (its masked input is recorded
    while the previous round is still this platform's last trained one); its failure only takes
    this platform out of it, with the reason in the reply.
    """
    try:
        cfg, _ = parse_config(secure.stage_config(context))
        records: dict[str, ConfigRecord | ArrayRecord] = {}
        if has_sum(msg.content, EVAL_SUM):
            try:
                records.update(secure.advance(msg.content, context, cfg, ns=EVAL_SUM))
            except OPERATOR_ERRORS as exc:
                log.warning("platform left the metric sum beside training: %s", exc)
                records.update(sum_error(f"{type(exc).__name__}: {exc}"))
        if has_sum(msg.content) or not records:
            merge_records(records, secure.advance(msg.content, context, cfg))
    except OPERATOR_ERRORS as exc:
        return _error_reply(msg, exc, context)
    return Message(RecordDict(records), reply_to=msg)


@app.evaluate()
def handle_evaluate(msg: Message, context: Context) -> Message:
    """Validation/test metrics of the received (fused) adapter on this platform.

    The platform always evaluates and appends its metrics to its own log
    (``metrics.jsonl`` beside its private parameters). Under secure aggregation the server
    asks for a secure sum of them (``common.metric_sums``): the reply then carries only the
    setup answer, and the platform's own metrics only when it opts in (node_config
    ``share-metrics``); in the clear they are sent as they are.
    """
    try:
        cfg, server_round = parse_config(msg.content[CONFIG])  # type: ignore[arg-type]
        setup = resolve_node(dict(context.node_config), cfg)
        splits = parse_eval(msg.content.get(EVAL))
        state = arrays_to_state(msg.content[ARRAYS])  # type: ignore[arg-type]
        store = _private_store(context, cfg, setup.platform)
        summed = cfg.secagg and SECAGG in msg.content  # only the cohort's weighted sum leaves (masked)
        trust = None
        if summed:  # one metric sum per round, of the round just trained (or the run's one test): before evaluating
            record, kind = _contribution_record(context, store), secure.metrics_kind(splits)
            trust = secure.platform_trust(context.node_config, setup.platform, cfg)
            ctx = round_context(msg.content.get(ARRAYS), msg.content.get(CONFIG))
            secure.admit_round(context, record, server_round, trust.policy, kind, ctx)
        metrics = evaluate_state(cfg, setup, state, server_round, store, splits)
        append_metrics(store.folder, server_round, metrics)
        log_scalars(_tensorboard_dir(context, cfg, setup.platform, store), server_round, metrics)
        content: dict[str, ConfigRecord | ArrayRecord | MetricRecord] = {INFO: _info(setup.platform, cfg, trust)}
        if summed:
            vector, weight = encode_metrics(metrics, splits, cfg.secure.clip_range)
            content.update(secure.start(msg.content, context, cfg, {METRIC_VECTOR: vector}, weight, setup.platform,
                                        record, kind=kind))  # fmt: skip
        if not cfg.secagg or secure.shares_metrics(context.node_config):
            content[METRICS] = MetricRecord(metrics)
            if SECAGG in content:  # metrics in the clear beside a secure sum: in the audit log too
                audit.note_sent(context, audit.CLEAR_METRICS, audit.metrics_nbytes(metrics))
    except OPERATOR_ERRORS as exc:
        return _error_reply(msg, exc, context)
    return Message(RecordDict(content), reply_to=msg)


@app.evaluate(SECAGG_ACTION)
def handle_evaluate_secagg_stage(msg: Message, context: Context) -> Message:
    """Key sharing, masked input and unmasking of the secure sum of evaluation metrics."""
    return handle_secagg_stage(msg, context)


def _simulated(context: Context) -> bool:
    """A simulated platform shares the coordinator's disk (no state-dir of its own)."""
    return PARTITION_KEY in context.node_config and STATE_DIR_KEY not in context.node_config


def _private_store(context: Context, cfg: AppConfig, platform: str) -> PrivateStore:
    """This platform's private parameters on its own disk (simulation: under the run folder)."""
    state_dir = None if _simulated(context) else str(context.node_config.get(STATE_DIR_KEY, DEFAULT_STATE_DIR))
    return run_store(cfg, platform, state_dir)


def _contribution_record(context: Context, store: PrivateStore) -> Path | None:
    """A deployed platform's record of secure rounds it contributed to, beside its private parameters."""
    return None if _simulated(context) or store.folder is None else store.folder / secure.RECORD_FILE


def _tensorboard_dir(context: Context, cfg: AppConfig, platform: str, store: PrivateStore) -> Path | None:
    return platform_tensorboard_dir(context.node_config, cfg.tensorboard_dir, platform, store.folder,
                                    _simulated(context))  # fmt: skip


def _info(platform: str, cfg: AppConfig | None = None, trust: secure.PlatformTrust | None = None) -> ConfigRecord:
    """Who answered and, under secure aggregation, the smallest cohort it accepts (the server waits for it)."""
    info: dict[str, str | int] = {INFO_PLATFORM: platform}
    if cfg is not None and trust is not None:
        info[INFO_MIN_COHORT] = trust.policy.apply(secagg_config(cfg)).min_cohort  # the run's, tightened by its own
    return ConfigRecord(info)
