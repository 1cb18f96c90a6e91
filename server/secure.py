"""Rounds under secure aggregation: the server learns only the weighted sum.

Stage by stage (``common.secagg.SecAggServer`` decides what each platform gets): the
first request rides on the ``train`` message with the global adapter; the platforms
train and answer with keys; key shares, masked inputs and unmasking follow as
``train.secagg`` messages. A platform that errors or stays silent past the stage
timeout counts as dropped; up to n - t drops are recovered exactly, more abort the
round (no output, no secret released) and the federation keeps the previous adapter.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
from flwr.app import Message, MessageType, RecordDict

from common.config import AppConfig
from common.payload import ARRAYS, CONFIG, config_record, state_to_arrays
from common.secagg import AbortError, Manifest, SecAggError, SecAggServer
from common.secure_wire import SECAGG_ACTION, from_records, round_context, secagg_config, to_records
from server.app import GridTransport
from server.federation import PerPlatform, RoundAborted, Tensors
from server.messaging import exchange, stragglers_for, wait_for_nodes

log = logging.getLogger("crossfed.server")


class SecureGridTransport(GridTransport):
    """GridTransport whose training rounds fuse under secure aggregation."""

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        """One secure round; any protocol failure aborts this round (RoundAborted), never the run."""
        try:
            return self._secure_round(state, cfg, rnd)
        except SecAggError as exc:
            raise RoundAborted(f"secure aggregation failed: {type(exc).__name__}: {exc}") from exc

    def _secure_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        nodes = wait_for_nodes(self.grid, max(cfg.fed.min_nodes, cfg.secure.min_cohort), cfg.fed.node_wait_s)
        manifest = Manifest.from_arrays(state)
        # What every platform must have been given (each message gets its own, identical records).
        context = round_context(state_to_arrays(state), config_record(cfg, rnd))
        server = SecAggServer(secagg_config(cfg), manifest, nodes, round=rnd, context=context)
        failures: list[str] = []
        first = True
        while not server.finished:
            stage = server.stage
            messages = []
            for node, request in server.requests().items():
                content = RecordDict({**to_records(request), CONFIG: config_record(cfg, rnd)})
                if first:
                    content[ARRAYS] = state_to_arrays(state)
                kind = MessageType.TRAIN if first else f"{MessageType.TRAIN}.{SECAGG_ACTION}"
                messages.append(Message(content, dst_node_id=node, message_type=kind, group_id=str(rnd)))
            timeout = cfg.fed.round_timeout_s if first else cfg.secure.stage_timeout_s
            replies = exchange(self.grid, messages, timeout, stragglers_for(cfg.fed, resend=False))
            for src, reply in replies.items():
                if reply.has_error():
                    failures.append(f"node {src} ({stage}): {reply.error.reason}")
                    continue
                try:
                    server.receive(src, from_records(reply.content))
                except SecAggError as exc:  # a malformed or lying reply: that node drops out of the round
                    failures.append(f"node {src} ({stage}): rejected: {exc}")
            silent = set(server.awaiting)  # every node without a valid reply drops out of the round
            failures += [f"node {n} ({stage}): no reply in time" for n in sorted(silent - set(replies))]
            try:
                server.end_stage(no_reply=silent)
            except AbortError as exc:
                for line in failures:
                    log.warning("round %d secure aggregation: %s", rnd, line)
                raise RoundAborted(f"secure aggregation aborted in stage {stage}: {exc}") from exc
            first = False
        for line in failures:
            log.warning("round %d secure aggregation: %s", rnd, line)
        result = server.result()
        mean, bound = result.weighted_mean()
        fused = OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in manifest.unflatten(mean).items())
        info = {
            "secure-aggregation": {
                "survivors": float(len(result.survivors)), "total-weight": float(result.total_weight),
                "clipped-values": float(result.clipped_values), "norm-clipped": float(result.norm_clipped),
                "weight-capped": float(result.weight_capped), "mean-error-bound": float(bound),
            }
        }  # fmt: skip
        return fused, info, failures
