"""Secure aggregation of platform adapters (Bonawitz et al., CCS 2017), pure Python/numpy.

The server learns only ``sum_i n_i * x_i`` and ``sum_i n_i`` over the surviving
platforms (plus cohort totals of clipping counts), never one platform's adapter
or example count. Four stages; each is one request/reply exchange:

=============  =====================================  ==========================================
stage          server -> node (request fields)        node -> server (reply fields)
=============  =====================================  ==========================================
setup          cohort_size, threshold, vector_length,  pk_c, pk_s (X25519, 32 B each),
               manifest_digest, every SecAggConfig     signature (Ed25519 or b"")
               field
share_keys     node_ids, pk_c, pk_s, signatures        receivers, ciphertexts (176 B each),
               (the roster, identical for all)         b_commit (32 B)
masked_input   senders, ciphertexts (bundles for it)   masked (np.ndarray uint64, 4 + D words)
unmask         active, dropped                         b_owners, b_shares, sk_owners, sk_shares
=============  =====================================  ==========================================

Every message also has ``secagg`` (version), ``stage``, ``session`` (bytes),
``round`` (int) and ``node_id`` (recipient or sender). Flower wiring: put
``split_arrays(msg)[0]`` in a ConfigRecord and the ``masked`` array in an
ArrayRecord; on the client keep ``client.state_bytes()`` in ``context.state``
and rebuild with ``SecAggClient.from_state_bytes`` on the next message.

Server loop (ServerApp)::

    server = SecAggServer(cfg, manifest, sampled_node_ids, session=run_id_bytes, round=r)
    while not server.finished:
        replies = send_and_receive(server.requests(), timeout)   # {node_id: reply dict}
        server.step(replies)            # bad replies and silent nodes count as dropped
    mean, bound = server.result().weighted_mean()    # AbortError earlier if < t remain

Client handler (ClientApp)::

    client = SecAggClient.from_state_bytes(state, cfg, manifest) if state else SecAggClient(node_id, cfg, manifest)
    reply = client.handle(msg)                          # setup / share_keys / unmask
    reply = client.handle(msg, tensors, num_examples)   # masked_input, after local training
    state = client.state_bytes()

Security notes (see also the module docstrings):

* Tolerates up to ``n - t`` dropouts at any stage; ``t = max(ceil(f*n), n//2+1)``
  of the *sampled* cohort, so the server cannot lower it by claiming drops.
* A server that deviates cannot obtain both shares of one node: each node
  answers unmask once, refuses overlapping/own-dropped/unknown/short lists, and
  2t > n. With k colluding platforms this holds while k < 2t - n.
* Without registered identity keys (``peer_identity_keys``) the roster is
  trusted from the server, which could then simulate platforms (Sybil); pass
  pre-registered Ed25519 keys to close that.
"""

from common.secagg.client import ClientState, SecAggClient
from common.secagg.config import HEADER_WORDS, SecAggConfig
from common.secagg.crypto import generate_identity
from common.secagg.errors import AbortError, ConfigError, InputError, ProtocolError, SecAggError
from common.secagg.messages import (
    STAGE_MASKED_INPUT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    STAGES,
    join_arrays,
    pack_record,
    record_nbytes,
    split_arrays,
    stage_of,
    unpack_record,
)
from common.secagg.quantize import (
    InputReport,
    Manifest,
    TensorSpec,
    encode_input,
    quantization_bound,
    weighted_mean,
)
from common.secagg.runner import RoundRun, run_round
from common.secagg.server import SecAggResult, SecAggServer

__all__ = [
    "HEADER_WORDS",
    "STAGES",
    "STAGE_MASKED_INPUT",
    "STAGE_SETUP",
    "STAGE_SHARE_KEYS",
    "STAGE_UNMASK",
    "AbortError",
    "ClientState",
    "ConfigError",
    "InputError",
    "InputReport",
    "Manifest",
    "ProtocolError",
    "RoundRun",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "TensorSpec",
    "encode_input",
    "generate_identity",
    "join_arrays",
    "pack_record",
    "quantization_bound",
    "record_nbytes",
    "run_round",
    "split_arrays",
    "stage_of",
    "unpack_record",
    "weighted_mean",
]
