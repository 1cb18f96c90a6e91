"""The platform side: a Flower ClientApp (Message API).

Handlers only parse the message, call :mod:`clients.tasks` and build the reply. A
failure the operator can fix (bad data, missing model, a malformed update) is returned
as ONE error message to the server, which leaves this platform out of the round;
nothing else about the platform is sent.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.platform import resolve_node
from clients.tasks import evaluate_state, fit
from common.config import ConfigError
from common.data import DatasetError
from common.modeling import ModelLoadError
from common.payload import ARRAYS, CONFIG, INFO, METRICS, PayloadError, arrays_to_state, parse_config, state_to_arrays

log = logging.getLogger("crossfed.client")

# Errors a platform operator can act on; anything else is a bug and keeps its traceback.
OPERATOR_ERRORS = (DatasetError, ModelLoadError, ConfigError, PayloadError, ValueError, FloatingPointError)
ERROR_CODE = 1001

app = ClientApp()


def _error_reply(msg: Message, exc: Exception, context: Context) -> Message:
    where = context.node_config.get("platform", context.node_config.get("partition-id", "?"))
    reason = f"platform {where}: {type(exc).__name__}: {exc}"
    log.error(reason)
    return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)


@app.train()
def handle_train(msg: Message, context: Context) -> Message:
    """Fused adapter in; E local epochs; adapter + head, example count and train loss out."""
    try:
        cfg, server_round = parse_config(msg.content[CONFIG])  # type: ignore[arg-type]
        setup = resolve_node(dict(context.node_config), cfg)
        state, metrics = fit(cfg, setup, arrays_to_state(msg.content[ARRAYS]), server_round)  # type: ignore[arg-type]
    except OPERATOR_ERRORS as exc:
        return _error_reply(msg, exc, context)
    content = {ARRAYS: state_to_arrays(state), METRICS: MetricRecord(metrics), INFO: _info(setup.platform)}
    return Message(RecordDict(content), reply_to=msg)


@app.evaluate()
def handle_evaluate(msg: Message, context: Context) -> Message:
    """Validation and test metrics of the received (fused) adapter on this platform."""
    try:
        cfg, _ = parse_config(msg.content[CONFIG])  # type: ignore[arg-type]
        setup = resolve_node(dict(context.node_config), cfg)
        metrics = evaluate_state(cfg, setup, arrays_to_state(msg.content[ARRAYS]))  # type: ignore[arg-type]
    except OPERATOR_ERRORS as exc:
        return _error_reply(msg, exc, context)
    return Message(RecordDict({METRICS: MetricRecord(metrics), INFO: _info(setup.platform)}), reply_to=msg)


def _info(platform: str) -> ConfigRecord:
    return ConfigRecord({"platform": platform})
