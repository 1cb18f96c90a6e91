"""GridTransport: plain rounds over a Flower Grid (simulation engine or Deployment Engine alike).

Each round waits for enough live platforms (``server.quorum``), broadcasts the global adapter and fuses the replies by
example-weighted averaging; a malformed reply leaves its platform out of the round, not the run.
``server.secure.SecureGridTransport`` builds on it for rounds under secure aggregation.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from common.config import AppConfig
from common.data import DatasetError, discover_platforms
from common.fusion import weighted_average
from common.payload import ARRAYS, CONFIG, EVAL, METRICS, arrays_to_state, config_record, eval_record, state_to_arrays
from common.synthetic import SHOPS
from server.federation import FederationError, PerPlatform, RoundAborted, Tensors
from server.messaging import Replies, broadcast, node_label, stragglers_for
from server.quorum import Quorum

log = logging.getLogger("crossfed.server")


def simulated_platforms(cfg: AppConfig) -> list[str]:
    """The platforms a simulation serves, one per SuperNode by ``partition-id`` (as clients.platform)."""
    return discover_platforms(Path(cfg.data.dir)) if cfg.data.dir else sorted(shop.name for shop in SHOPS)


def warn_if_platforms_left_out(grid: Grid, cfg: AppConfig) -> str | None:
    """Simulation only: warn when fewer SuperNodes run than the data has platforms (called once, after
    round 1's training, when every simulated SuperNode is online).

    ``flwr run .`` without ``num-supernodes`` simulates Flower's default of 2 SuperNodes, and the
    platforms beyond them would silently never train. In a deployment each SuperNode names its
    platform and the server has no dataset to count, so nothing is checked there.
    """
    if not isinstance(grid, InMemoryGrid):
        return None
    try:
        platforms = simulated_platforms(cfg)
    except DatasetError:
        return None  # the ClientApps report a bad data.dir, each with its own line
    nodes = len(list(grid.get_node_ids()))
    if nodes >= len(platforms):
        return None
    message = (
        f"only {nodes} SuperNodes for {len(platforms)} platforms: {', '.join(platforms[nodes:])} will not train "
        f'(flwr run . --federation-config "num-supernodes={len(platforms)}")'
    )
    log.warning(message)
    return message


class GridTransport:
    """Rounds over a Flower Grid (simulation engine or Deployment Engine alike)."""

    def __init__(self, grid: Grid, names: Mapping[int, str] | None = None) -> None:
        self.grid = grid
        self.nodes_checked = False
        # node id -> platform for failure lines: the operator's (fed.node-names), then what replies say
        self.names: dict[int, str] = dict(names or {})
        self.quorum = Quorum(self.names)  # whom each round waits for (server.quorum)

    def _nodes(self, cfg: AppConfig, rnd: int) -> list[int]:
        """The round's cohort, once enough live platforms are there (``server.quorum``); RoundAborted
        (FederationError before the first round) when they are not within ``fed.node-wait-s``."""
        return self.quorum.wait(self.grid, cfg, rnd)

    def _heard(self, replies: Mapping[int, Message], silent: Iterable[int]) -> None:
        """What an exchange taught: each replying platform's minimum cohort, which nodes said nothing."""
        self.quorum.learn(replies)
        self.quorum.fell_silent(self.grid, silent)

    def _check_supernode_count(self, cfg: AppConfig) -> None:
        """Once per run, at the first evaluation (every simulated SuperNode is online by then)."""
        if not self.nodes_checked:
            self.nodes_checked = True
            warn_if_platforms_left_out(self.grid, cfg)

    def _broadcast(
        self, state: Tensors, cfg: AppConfig, rnd: int, message_type: str, splits: Sequence[str] = ()
    ) -> Replies:
        nodes = self._nodes(cfg, rnd)
        content = RecordDict({ARRAYS: state_to_arrays(state), CONFIG: config_record(cfg, rnd)})
        if splits:
            content[EVAL] = eval_record(splits)
        replies = broadcast(self.grid, nodes, content, message_type, rnd, cfg.fed.round_timeout_s,
                            stragglers_for(cfg.fed), self.names)  # fmt: skip
        self._heard(replies.ok, replies.silent)
        return replies

    def train_round(
        self, state: Tensors, cfg: AppConfig, rnd: int
    ) -> tuple[OrderedDict[str, np.ndarray], PerPlatform, list[str]]:
        """Plain (non-secure) round: every platform trains; fuse by example-weighted average."""
        replies = self._broadcast(state, cfg, rnd, MessageType.TRAIN)
        states, weights, info, failures = [], [], {}, list(replies.failures)
        for node_id, reply in replies.ok.items():
            try:
                update = arrays_to_state(reply.content[ARRAYS])  # type: ignore[arg-type]
                _check_update(update, state)
                metrics = _metrics(replies, node_id)
                n = float(metrics["num-examples"])
                if not np.isfinite(n) or n <= 0:
                    raise ValueError(f"`num-examples` must be a positive count, got {n}")
            except (KeyError, ValueError) as exc:  # left out of this round; the others are fused
                label = node_label(node_id, self.names)
                failures.append(f"{label}: malformed reply: {exc}")
                log.error("round %d: %s left out: malformed reply: %s", rnd, label, exc)
                continue
            states.append(update)
            weights.append(n)
            info[replies.platform(node_id)] = metrics
        if not states:
            raise FederationError(f"round {rnd}: no platform returned a usable update: {failures}")
        return weighted_average(states, weights), info, failures

    def evaluate_round(
        self, state: Tensors, cfg: AppConfig, rnd: int, splits: Sequence[str]
    ) -> tuple[PerPlatform, list[str]]:
        self._check_supernode_count(cfg)
        try:
            replies = self._broadcast(state, cfg, rnd, MessageType.EVALUATE, splits)
        except RoundAborted as exc:  # too few platforms there: this round is recorded without metrics
            log.warning("round %d: evaluation gave no metrics: %s", rnd, exc)
            return {}, [str(exc)]
        per_platform = {replies.platform(n): _metrics(replies, n) for n in replies.ok}
        return dict(sorted(per_platform.items())), replies.failures


def _check_update(update: Tensors, reference: Tensors) -> None:
    """ValueError unless ``update`` has the global adapter's tensor names (in order) and shapes."""
    if list(update) != list(reference):
        extra, missing = sorted(set(update) - set(reference)), sorted(set(reference) - set(update))
        raise ValueError(f"tensor names differ from the global adapter's (unknown {extra[:3]}, missing {missing[:3]})")
    for name, value in update.items():
        if np.shape(value) != np.shape(reference[name]):
            raise ValueError(f"tensor `{name}` has shape {np.shape(value)}, expected {np.shape(reference[name])}")


def _metrics(replies: Replies, node_id: int) -> dict[str, float]:
    record = replies.ok[node_id].content[METRICS]
    if not isinstance(record, MetricRecord):
        raise ValueError("reply has no metrics record")
    return {k: float(v) for k, v in record.items()}  # type: ignore[arg-type]
