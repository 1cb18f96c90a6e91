"""In-memory driver: one whole round across in-process clients.

It does what the Flower ServerApp/ClientApp pair will do, minus the network:
``server.requests()`` -> each client's stage method -> ``server.receive`` ->
``server.end_stage()``. Masked vectors go to the server as soon as they are
made and are dropped after being added, and inputs are produced lazily per
node, so 30 platforms x 10M parameters need memory for a few vectors only.

``drops`` makes nodes stall (receive a stage's request, never answer), which
the server sees exactly like a transport timeout. ``intercept`` can rewrite or
swallow any message in flight (tests use it to play a malicious server or
network). ``restart_clients`` rebuilds every client from ``state_bytes()``
between stages, as a ClientApp restarted by Flower would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.secagg.client import NO_CONTEXT, SecAggClient
from common.secagg.codec import record_nbytes
from common.secagg.config import PlatformPolicy, SecAggConfig
from common.secagg.errors import AbortError, ProtocolError, SecAggError
from common.secagg.identity import Identity, Roster
from common.secagg.messages import STAGE_MASKED_INPUT, STAGES
from common.secagg.quantize import InputReport, Manifest
from common.secagg.server import SecAggResult, SecAggServer

InputFn = Callable[[int], tuple[Mapping[str, np.ndarray], Any]]
Intercept = Callable[[str, str, int, dict[str, Any]], "dict[str, Any] | None"]


@dataclass
class RoundRun:
    """Outcome and measurements of one simulated round."""

    server: SecAggServer
    clients: dict[int, SecAggClient]
    result: SecAggResult | None = None
    abort_reason: str = ""
    client_seconds: dict[str, dict[int, float]] = field(default_factory=lambda: {s: {} for s in STAGES})
    server_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # CPU seconds of the same calls (thread time): robust when other processes share the cores.
    client_cpu_seconds: dict[str, dict[int, float]] = field(default_factory=lambda: {s: {} for s in STAGES})
    server_cpu_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    upload_bytes: dict[int, dict[str, int]] = field(default_factory=dict)
    download_bytes: dict[int, dict[str, int]] = field(default_factory=dict)
    client_errors: dict[int, str] = field(default_factory=dict)
    server_rejections: dict[int, str] = field(default_factory=dict)
    reports: dict[int, InputReport] = field(default_factory=dict)
    # (direction "down"/"up", stage, node, message) -- only with record=True
    transcript: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)


def make_clients(
    config: SecAggConfig,
    manifest: Manifest,
    node_ids: Iterable[int],
    *,
    policy: PlatformPolicy | None = None,
    context: bytes = NO_CONTEXT,
) -> dict[int, SecAggClient]:
    """One client per node, platform ``platform-<id>``, with simulated identities and their roster.

    The policy defaults to one that accepts the config's own ``min_cohort``, so a small test
    cohort runs; a deployed platform's policy comes from its node_config.
    """
    ids = sorted(node_ids)
    identities = {n: Identity.simulated(f"platform-{n}") for n in ids}
    roster = Roster.of(identities.values())
    pol = policy if policy is not None else PlatformPolicy(min_cohort=config.min_cohort)
    return {
        n: SecAggClient(n, config, manifest, identity=identities[n], roster=roster, policy=pol, context=context)
        for n in ids
    }


def run_round(
    config: SecAggConfig,
    manifest: Manifest,
    node_ids: Iterable[int],
    inputs: InputFn | Mapping[int, tuple[Mapping[str, np.ndarray], Any]],
    *,
    drops: Mapping[str, Iterable[int]] | None = None,
    session: bytes | None = None,
    round: int = 0,  # noqa: A002
    threshold: int | None = None,
    clients: Mapping[int, SecAggClient] | None = None,
    restart_clients: bool = False,
    record: bool = False,
    intercept: Intercept | None = None,
) -> RoundRun:
    """Run one round; never raises for drops or aborts (see ``RoundRun``)."""
    ids = sorted(node_ids)
    get_input: InputFn = inputs.__getitem__ if isinstance(inputs, Mapping) else inputs
    stall = {stage: set(nodes) for stage, nodes in (drops or {}).items()}
    unknown = set(stall) - set(STAGES)
    if unknown:
        raise ProtocolError(f"unknown stage(s) in drops: {sorted(unknown)}")
    server = SecAggServer(config, manifest, ids, session=session, round=round, threshold=threshold)
    pool = dict(clients) if clients is not None else make_clients(config, manifest, ids)
    run = RoundRun(server=server, clients=pool)
    for n in ids:
        run.upload_bytes[n] = dict.fromkeys(STAGES, 0)
        run.download_bytes[n] = dict.fromkeys(STAGES, 0)

    while not server.finished:
        stage = server.stage
        t0, c0 = time.perf_counter(), time.thread_time()
        requests = server.requests()
        run.server_seconds[stage] += time.perf_counter() - t0
        run.server_cpu_seconds[stage] += time.thread_time() - c0
        for node, req in requests.items():
            run.download_bytes[node][stage] += record_nbytes(req)
            if record:
                run.transcript.append(("down", stage, node, req))
            delivered = intercept("down", stage, node, req) if intercept is not None else req
            if delivered is None or node in stall.get(stage, ()):
                continue
            client = pool[node]
            if restart_clients:
                client = pool[node] = SecAggClient.from_state_bytes(
                    client.state_bytes(),
                    client.config,
                    client.manifest,
                    identity=client.identity,
                    roster=client.roster,
                    policy=client.policy,
                    context=client.context,
                )
            args = get_input(node) if stage == STAGE_MASKED_INPUT else (None, None)
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                reply = client.handle(delivered, *args)
            except SecAggError as exc:
                run.client_errors[node] = f"{stage}: {type(exc).__name__}: {exc}"
                continue
            finally:
                run.client_seconds[stage][node] = time.perf_counter() - t0
                run.client_cpu_seconds[stage][node] = time.thread_time() - c0
            del args
            if client.input_report is not None and stage == STAGE_MASKED_INPUT:
                run.reports[node] = client.input_report
            run.upload_bytes[node][stage] += record_nbytes(reply)
            if record:
                run.transcript.append(("up", stage, node, reply))
            arrived = intercept("up", stage, node, reply) if intercept is not None else reply
            if arrived is None:
                continue
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                server.receive(node, arrived)
            except ProtocolError as exc:
                run.server_rejections[node] = f"{stage}: {exc}"
            finally:
                run.server_seconds[stage] += time.perf_counter() - t0
                run.server_cpu_seconds[stage] += time.thread_time() - c0
            del reply, arrived
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            server.end_stage(no_reply=stall.get(stage, set()) & set(server.awaiting))
        except AbortError as exc:
            run.abort_reason = str(exc)
        finally:
            run.server_seconds[stage] += time.perf_counter() - t0
            run.server_cpu_seconds[stage] += time.thread_time() - c0
    if not server.aborted:
        run.result = server.result()
    return run
