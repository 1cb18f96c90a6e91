"""Rounds under secure aggregation: the server learns only the weighted sum.

Stage by stage (``common.secagg.SecAggServer`` decides what each platform gets): the
first request rides on the ``train`` message with the global adapter; the platforms
train and answer with keys; key shares, masked inputs and unmasking follow as
``train.secagg`` messages. A platform that errors or stays silent past the stage
timeout counts as dropped; up to n - t drops are recovered exactly, more abort the
round (no output, no secret released) and the federation keeps the previous adapter.

Evaluation is a second secure sum of the same kind over each platform's metrics encoded by
``common.metric_sums``: the server learns the cohort's example-weighted means, never one
platform's metrics unless that platform opts in. It rides on the next round's training
messages (``train_and_evaluate``): the train message of round r + 1 carries round r's fused
adapter, which each platform evaluates before it trains, and both sums go through their five
stages on the same five messages, each with its own keys, cohort, threshold, consistency check
and masked input (the two sums share nothing but the envelope). After the last round one
closing ``evaluate`` sum (then ``evaluate.secagg``) evaluates the last adapter, as does the
final test of the best round.
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
from common.payload import ARRAYS, CONFIG, EVAL, EVAL_CONFIG, config_record, eval_record, state_to_arrays
from common.privacy import contribution_layout, fuse_noisy_sum
from common.secagg import AbortError, Manifest, SecAggError, SecAggResult, SecAggServer
from common.secure_wire import (
    EVAL_SUM,
    SECAGG_ACTION,
    from_records,
    merge_records,
    round_context,
    secagg_config,
    sum_error_of,
    to_records,
)
from server.federation import AGGREGATE, PerPlatform, RoundAborted, Tensors, TrainedAndEvaluated
from server.grid_transport import GridTransport
from server.messaging import exchange, learn_names, node_label, platform_of, shared_metrics, stragglers_for

log = logging.getLogger("crossfed.server")


@dataclass
class SecureSum:
    """What one secure sum produced: the aggregate, the setup replies (by node), failure lines."""

    result: SecAggResult = field(init=False)
    replies: dict[int, Message] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class _Sum:
    """One secure sum driven beside others on the same messages: its name in them (``ns``), its label
    in failure lines, its server, what its first message carries, and its outcome."""

    ns: str
    kind: str
    server: SecAggServer | None
    first: dict[str, Any]
    summed: SecureSum = field(default_factory=SecureSum)
    aborted: RoundAborted | None = None


class SecureGridTransport(GridTransport):
    """GridTransport whose training rounds fuse under secure aggregation, and whose round metrics are
    summed securely on the next round's training messages (``folds_evaluation``)."""

    folds_evaluation = True  # server.federation: evaluate round r's adapter with round r + 1's training

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        done = self.train_and_evaluate(state, cfg, rnd, None, ())
        return done.fused, done.info, done.failures

    def train_and_evaluate(
        self, state: Tensors, cfg: AppConfig, rnd: int, evaluate: int | None, splits: Sequence[str]
    ) -> TrainedAndEvaluated:
        """Round ``rnd``'s training sum and, on the same messages, the metric sum of ``state`` as round
        ``evaluate``'s adapter (None: no metric sum). RoundAborted when the training sum fused nothing;
        it carries the metric sum's outcome (``evaluation``) all the same."""
        nodes = self._nodes(cfg, rnd)
        private = cfg.privacy.enabled  # each platform sends its noisy sum of clipped user updates, weight 1
        manifest = Manifest.from_arrays(contribution_layout(state) if private else state)
        arrays = state_to_arrays(state)
        train = self._sum(cfg, rnd, "", MessageType.TRAIN, manifest, nodes, {ARRAYS: arrays}, config_record(cfg, rnd))
        sums = [train]
        if evaluate is not None:
            self._check_supernode_count(cfg)
            eval_config = config_record(cfg, evaluate)
            first = {ARRAYS: arrays, EVAL: eval_record(splits), EVAL_CONFIG: eval_config}
            sums.append(self._sum(cfg, evaluate, EVAL_SUM, MessageType.EVALUATE, _metric_manifest(splits), nodes,
                                  first, eval_config))  # fmt: skip
        self._run(cfg, rnd, sums, MessageType.TRAIN, cfg.fed.round_timeout_s)
        evaluation = None if evaluate is None else self._metrics(cfg, evaluate, sums[1], splits)
        if train.aborted is not None:
            train.aborted.evaluation = evaluation
            raise train.aborted
        result = train.summed.result
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
        return TrainedAndEvaluated(fused, info, train.summed.failures, evaluation)

    def evaluate_round(
        self, state: Tensors, cfg: AppConfig, rnd: int, splits: Sequence[str]
    ) -> tuple[PerPlatform, list[str]]:
        """Every platform evaluates; the server learns the cohort's example-weighted means only.

        The means come from a secure sum (``common.metric_sums``) under the key ``AGGREGATE``; each
        platform of the cohort is listed, with its own metrics only when it opted in (node_config
        ``share-metrics``), else with none. Used for the closing evaluation after the last round and
        the final test; a round's own metrics ride on the next round (``train_and_evaluate``).
        """
        self._check_supernode_count(cfg)
        first = {ARRAYS: state_to_arrays(state), EVAL: eval_record(splits)}
        try:
            nodes = self._nodes(cfg, rnd)
        except RoundAborted as exc:  # no mean this round: the round is recorded without metrics
            log.warning("round %d: evaluation gave no metrics: %s", rnd, exc)
            return {}, [str(exc)]
        metrics = self._sum(cfg, rnd, "", MessageType.EVALUATE, _metric_manifest(splits), nodes, first,
                            config_record(cfg, rnd))  # fmt: skip
        self._run(cfg, rnd, [metrics], MessageType.EVALUATE, cfg.fed.round_timeout_s)
        return self._metrics(cfg, rnd, metrics, splits)

    def _metrics(self, cfg: AppConfig, rnd: int, metrics: _Sum, splits: Sequence[str]) -> tuple[PerPlatform, list[str]]:
        """The cohort's mean metrics (``AGGREGATE``) and the platforms' shared ones from a finished metric sum."""
        if metrics.aborted is not None:  # no mean this round: the round is recorded without metrics
            log.warning("round %d: evaluation gave no metrics: %s", rnd, metrics.aborted)
            return {}, [*metrics.summed.failures, str(metrics.aborted)]
        summed = metrics.summed
        result = summed.result
        per_platform = {platform_of(summed.replies[n], n): shared_metrics(summed.replies[n]) for n in result.survivors}
        mean, bound = result.weighted_mean()
        try:
            per_platform[AGGREGATE] = decode_metric_sum(mean, result.total_weight, splits, cfg.secure.clip_range, bound)
        except MetricSumError as exc:  # a platform sent what no honest one does: no mean this round
            log.warning("round %d: evaluation gave no metrics: %s", rnd, exc)
            return {}, [*summed.failures, f"secure metric sum refused: {exc}"]
        return per_platform, summed.failures

    def _sum(
        self, cfg: AppConfig, rnd: int, ns: str, kind: str, manifest: Manifest, nodes: list[int],
        first: dict[str, Any], config: Any,
    ) -> _Sum:  # fmt: skip
        """A secure sum of round ``rnd`` bound to what its first message carries (adapter and ``config``);
        one that cannot start (e.g. too small a cohort) is aborted from the outset, never the run."""
        kind = f"{kind} of round {rnd}" if ns else kind
        context = round_context(first.get(ARRAYS), config)
        try:
            server = SecAggServer(secagg_config(cfg), manifest, nodes, round=rnd, context=context)
        except SecAggError as exc:
            aborted = RoundAborted(f"secure aggregation ({kind}) failed: {type(exc).__name__}: {exc}")
            return _Sum(ns, kind, None, first, aborted=aborted)
        return _Sum(ns, kind, server, first)

    def _run(self, cfg: AppConfig, rnd: int, sums: list[_Sum], mtype: str, first_timeout_s: float) -> None:
        """Drive ``sums`` stage by stage on shared messages (``mtype``, then ``<mtype>.secagg``): one message
        per node and stage carries every sum's request for that node; the run config rides on the first
        only (platforms keep it for the later stages: one Flower object less per message). Each sum keeps
        its own outcome: a protocol failure aborts that sum (its ``aborted``), never the others nor the run."""
        active = [s for s in sums if s.aborted is None]
        first = True
        while active:
            per_node: dict[int, RecordDict] = {}
            for s in active:
                assert s.server is not None
                for node, request in s.server.requests().items():
                    content = per_node.setdefault(node, RecordDict({CONFIG: config_record(cfg, rnd)} if first else {}))
                    merge_records(content, to_records(request, s.ns))
                    if first:
                        content.update(s.first)
            messages = [Message(content, dst_node_id=node, message_type=mtype if first else f"{mtype}.{SECAGG_ACTION}",
                                group_id=str(rnd)) for node, content in per_node.items()]  # fmt: skip
            timeout = first_timeout_s if first else cfg.secure.stage_timeout_s
            replies = exchange(self.grid, messages, timeout, stragglers_for(cfg.fed, resend=False))
            learn_names(self.names, replies)
            asked = set(per_node)
            self._heard(replies, asked - set(replies))
            for s in list(active):
                if not self._absorb(rnd, s, replies, first):
                    active.remove(s)
            first = False

    def _absorb(self, rnd: int, s: _Sum, replies: dict[int, Message], first: bool) -> bool:
        """Give ``s`` its part of this stage's replies and close the stage; False once ``s`` is over."""
        server = s.server
        assert server is not None
        stage, failures = server.stage, s.summed.failures
        for src, reply in replies.items():
            if src not in server.awaiting:
                continue
            if reply.has_error():
                failures.append(f"{node_label(src, self.names)} ({stage}): {reply.error.reason}")
                continue
            reason = sum_error_of(reply.content, s.ns) if s.ns else None
            if reason is not None:
                failures.append(f"{node_label(src, self.names)} ({stage}): {reason}")
                continue
            try:
                server.receive(src, from_records(reply.content, s.ns))
            except SecAggError as exc:  # a malformed or lying reply: that node drops out of the round
                failures.append(f"{node_label(src, self.names)} ({stage}): rejected: {exc}")
                continue
            if first:
                s.summed.replies[src] = reply
        silent = set(server.awaiting)  # every node without a valid reply drops out of the round
        failures += [f"{node_label(n, self.names)} ({stage}): no reply in time" for n in sorted(silent - set(replies))]
        try:
            server.end_stage(no_reply=silent)
            if server.finished:
                s.summed.result = server.result()
        except SecAggError as exc:
            for line in failures:
                log.warning("round %d secure aggregation (%s): %s", rnd, s.kind, line)
            which = f" ({s.kind})" if s.ns else ""
            reason = (f"secure aggregation{which} aborted in stage {stage}: {exc}" if isinstance(exc, AbortError)
                      else f"secure aggregation ({s.kind}) failed: {type(exc).__name__}: {exc}")  # fmt: skip
            s.aborted = RoundAborted(reason, failures)
            return False
        if server.finished:
            for line in failures:
                log.warning("round %d secure aggregation (%s): %s", rnd, s.kind, line)
            return False
        return True


def _metric_manifest(splits: Sequence[str]) -> Manifest:
    return Manifest.from_arrays({METRIC_VECTOR: np.zeros(vector_length(splits), dtype=np.float32)})
