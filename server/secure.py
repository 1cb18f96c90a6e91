"""Rounds under secure aggregation: the server learns only the weighted sum.

Stage by stage (``common.secagg.SecAggServer`` decides what each platform gets): the
first request rides on the ``train`` message with the global adapter; the platforms
train and answer with keys; key shares, masked inputs and unmasking follow as
``train.secagg`` messages. A platform that errors or stays silent past the stage
timeout counts as dropped; up to n - t drops are recovered exactly, more abort the
round (no output, no secret released) and the federation keeps the previous adapter.

Evaluation is a second secure sum of the same kind (``evaluate`` then ``evaluate.secagg``)
over each platform's metrics encoded by ``common.metric_sums``: the server learns the
cohort's example-weighted means, never one platform's metrics unless that platform opts in.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict

from common.config import AppConfig
from common.metric_sums import METRIC_VECTOR, MetricSumError, decode_metric_sum, vector_length
from common.payload import ARRAYS, CONFIG, EVAL, config_record, eval_record, state_to_arrays
from common.privacy import contribution_layout, fuse_noisy_sum
from common.secagg import AbortError, Manifest, SecAggError, SecAggResult, SecAggServer
from common.secure_wire import SECAGG_ACTION, from_records, round_context, secagg_config, to_records
from server.federation import AGGREGATE, PerPlatform, RoundAborted, Tensors
from server.grid_transport import GridTransport
from server.messaging import exchange, learn_names, node_label, platform_of, shared_metrics, stragglers_for

log = logging.getLogger("crossfed.server")


@dataclass
class SecureSum:
    """What one secure sum produced: the aggregate, the setup replies (by node), failure lines."""

    result: SecAggResult = field(init=False)
    replies: dict[int, Message] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class SecureGridTransport(GridTransport):
    """GridTransport whose training rounds fuse under secure aggregation."""

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        nodes = self._nodes(cfg, rnd)
        private = cfg.privacy.enabled  # each platform sends its noisy sum of clipped user updates, weight 1
        manifest = Manifest.from_arrays(contribution_layout(state) if private else state)
        first = {ARRAYS: state_to_arrays(state)}
        summed = self._secure_sum(cfg, rnd, manifest, nodes, first, MessageType.TRAIN, cfg.fed.round_timeout_s)
        result = summed.result
        mean, bound = result.weighted_mean()
        info: PerPlatform = {}
        if private:
            fused, users = fuse_noisy_sum(state, manifest.unflatten(result.weighted_sum), cfg.privacy.clip)
            info["differential-privacy"] = {"noisy-users": users}
        else:
            fused = OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in manifest.unflatten(mean).items())
        info |= {
            "secure-aggregation": {
                "survivors": float(len(result.survivors)), "total-weight": float(result.total_weight),
                "clipped-values": float(result.clipped_values), "norm-clipped": float(result.norm_clipped),
                "weight-capped": float(result.weight_capped), "mean-error-bound": float(bound),
            }
        }  # fmt: skip
        return fused, info, summed.failures

    def evaluate_round(
        self, state: Tensors, cfg: AppConfig, rnd: int, splits: Sequence[str]
    ) -> tuple[PerPlatform, list[str]]:
        """Every platform evaluates; the server learns the cohort's example-weighted means only.

        The means come from a second secure sum (``common.metric_sums``) under the key
        ``AGGREGATE``; each platform of the cohort is listed, with its own metrics only when it
        opted in (node_config ``share-metrics``), else with none.
        """
        self._check_supernode_count(cfg)
        manifest = Manifest.from_arrays({METRIC_VECTOR: np.zeros(vector_length(splits), dtype=np.float32)})
        first = {ARRAYS: state_to_arrays(state), EVAL: eval_record(splits)}
        try:
            nodes = self._nodes(cfg, rnd)
            summed = self._secure_sum(cfg, rnd, manifest, nodes, first, MessageType.EVALUATE, cfg.fed.round_timeout_s)
        except RoundAborted as exc:  # no mean this round: the round is recorded without metrics
            log.warning("round %d: evaluation gave no metrics: %s", rnd, exc)
            return {}, [str(exc)]
        result = summed.result
        per_platform = {platform_of(summed.replies[n], n): shared_metrics(summed.replies[n]) for n in result.survivors}
        mean, bound = result.weighted_mean()
        try:
            per_platform[AGGREGATE] = decode_metric_sum(mean, result.total_weight, splits, cfg.secure.clip_range, bound)
        except MetricSumError as exc:  # a platform sent what no honest one does: no mean this round
            log.warning("round %d: evaluation gave no metrics: %s", rnd, exc)
            return {}, [*summed.failures, f"secure metric sum refused: {exc}"]
        return per_platform, summed.failures

    def _secure_sum(
        self, cfg: AppConfig, rnd: int, manifest: Manifest, nodes: list[int], first_content: dict[str, Any],
        kind: str, first_timeout_s: float,
    ) -> SecureSum:  # fmt: skip
        """One secure-aggregation round: ``kind`` carries the setup request, ``<kind>.secagg`` the rest.

        Any protocol failure aborts this sum (RoundAborted), never the run.
        """
        try:
            return self._secure_stages(cfg, rnd, manifest, nodes, first_content, kind, first_timeout_s)
        except SecAggError as exc:
            raise RoundAborted(f"secure aggregation ({kind}) failed: {type(exc).__name__}: {exc}") from exc

    def _secure_stages(
        self, cfg: AppConfig, rnd: int, manifest: Manifest, nodes: list[int], first_content: dict[str, Any],
        kind: str, first_timeout_s: float,
    ) -> SecureSum:  # fmt: skip
        # What every platform must have been given (each message gets its own, identical records).
        context = round_context(first_content.get(ARRAYS), config_record(cfg, rnd))
        server = SecAggServer(secagg_config(cfg), manifest, nodes, round=rnd, context=context)
        summed = SecureSum()
        first = True
        while not server.finished:
            stage = server.stage
            messages = []
            for node, request in server.requests().items():
                content = RecordDict({**to_records(request), CONFIG: config_record(cfg, rnd)})
                if first:
                    content.update(first_content)
                mtype = kind if first else f"{kind}.{SECAGG_ACTION}"
                messages.append(Message(content, dst_node_id=node, message_type=mtype, group_id=str(rnd)))
            timeout = first_timeout_s if first else cfg.secure.stage_timeout_s
            replies = exchange(self.grid, messages, timeout, stragglers_for(cfg.fed, resend=False))
            learn_names(self.names, replies)
            failures = summed.failures
            for src, reply in replies.items():
                if reply.has_error():
                    failures.append(f"{node_label(src, self.names)} ({stage}): {reply.error.reason}")
                    continue
                try:
                    server.receive(src, from_records(reply.content))
                except SecAggError as exc:  # a malformed or lying reply: that node drops out of the round
                    failures.append(f"{node_label(src, self.names)} ({stage}): rejected: {exc}")
                    continue
                if first:
                    summed.replies[src] = reply
            silent = set(server.awaiting)  # every node without a valid reply drops out of the round
            self._heard(replies, silent - set(replies))
            failures += [
                f"{node_label(n, self.names)} ({stage}): no reply in time" for n in sorted(silent - set(replies))
            ]
            try:
                server.end_stage(no_reply=silent)
            except AbortError as exc:
                for line in summed.failures:
                    log.warning("round %d secure aggregation (%s): %s", rnd, kind, line)
                raise RoundAborted(f"secure aggregation aborted in stage {stage}: {exc}", summed.failures) from exc
            first = False
        for line in summed.failures:
            log.warning("round %d secure aggregation (%s): %s", rnd, kind, line)
        summed.result = server.result()
        return summed
