"""Shared tiny helpers: a two-tensor manifest, seeded inputs."""

from __future__ import annotations

import numpy as np

from common.secagg import Manifest, TensorSpec

D_A, D_B = (4, 8), (8, 3)  # a LoRA-like pair: A (r x in) and B (out x r)


def tiny_manifest() -> Manifest:
    return Manifest([TensorSpec("lora_A", D_A, "float32"), TensorSpec("lora_B", D_B, "float32")])


def make_inputs(node_ids, seed: int = 0, scale: float = 0.3, manifest: Manifest | None = None):
    """{node: ({name: float32 array}, weight)} with weights in [1, 500]."""
    man = manifest or tiny_manifest()
    rng = np.random.default_rng(seed)
    out = {}
    for n in node_ids:
        tensors = {s.name: (rng.standard_normal(s.shape) * scale).astype(s.dtype) for s in man.specs}
        out[n] = (tensors, int(rng.integers(1, 501)))
    return out


def flat(tensors, manifest: Manifest | None = None) -> np.ndarray:
    """The float64 vector the tensors make in the manifest's layout (the oracle's input)."""
    return (manifest or tiny_manifest()).flatten(tensors, np.float64)


def drive_to(stage, cfg, manifest, ids, inputs=None, session=b"S" * 16, rnd=1):
    """Run a round by hand until ``stage`` requests are pending; return (server, clients, inputs)."""
    from common.secagg import STAGES, SecAggServer, make_clients

    inputs = inputs or make_inputs(ids)
    server = SecAggServer(cfg, manifest, ids, session=session, round=rnd)
    clients = make_clients(cfg, manifest, ids)
    while server.stage != stage:
        reqs = server.requests()
        extra = lambda n: inputs[n] if server.stage == STAGES[2] else (None, None)  # noqa: E731
        server.step({n: clients[n].handle(m, *extra(n)) for n, m in reqs.items()})
    return server, clients, inputs


def expected_sum(inputs, nodes, cfg, manifest):
    """Oracle: the plain modular sum of the encoded inputs of ``nodes``, decoded."""
    from common.secagg import HEADER_WORDS
    from common.secagg.quantize import decode_sum, encode_input

    acc = np.zeros(HEADER_WORDS + manifest.size, dtype=cfg.uint_dtype)
    for n in nodes:
        acc += encode_input(*inputs[n], manifest, cfg)[0]
    return decode_sum(acc, cfg, len(nodes))


def client_for(node, cfg, manifest, ids=None, **kwargs):
    """One client of a federation ``ids`` (default: node 0..7) with simulated identities."""
    from common.secagg import make_clients

    return make_clients(cfg, manifest, sorted(set(ids or range(8)) | {node}), **kwargs)[node]
