"""Secure aggregation of platform adapters (Bonawitz et al., CCS 2017), pure Python/numpy.

The server learns only ``sum_i n_i * x_i`` and ``sum_i n_i`` over the surviving
platforms (plus the clip reports of the cohort, as an unordered set: ``quantize``), never one
platform's adapter or example count. Five stages; each is one request/reply exchange:

=============  =====================================  ==========================================
stage          server -> node (request fields)        node -> server (reply fields)
=============  =====================================  ==========================================
setup          cohort_size, context, vector_length,    platform, pk_c, pk_s (X25519, 32 B each),
               manifest_digest, every SecAggConfig     signature (Ed25519 by the platform's
               field                                   identity over keys, node id, context)
share_keys     threshold, node_ids, platforms, pk_c,   receivers, ciphertexts (176 B each),
               pk_s, signatures (identical for all)    b_commit (32 B)
masked_input   senders, ciphertexts (bundles for it)   masked (np.ndarray uint64, 385 + D words)
consistency    active, dropped                         signature (over roster, U2, U3)
unmask         active, dropped, signers, signatures    b_owners, b_shares, sk_owners, sk_shares
=============  =====================================  ==========================================

Every message also has ``secagg`` (version), ``stage``, ``session`` (bytes),
``round`` (int) and ``node_id`` (recipient or sender). Flower wiring
(``common.secure_wire``): the whole message, ``masked`` array included, packed by
``pack_record`` into one bytes field of a ConfigRecord (one Flower object per message;
``split_arrays`` / ``join_arrays`` separate the array for a caller that wants an
ArrayRecord); on the client keep ``client.state_bytes()`` in ``context.state``
and rebuild with ``SecAggClient.from_state_bytes`` on the next message.

Server loop (ServerApp)::

    server = SecAggServer(cfg, manifest, sampled_node_ids, session=run_id_bytes, round=r, context=ctx)
    while not server.finished:
        replies = send_and_receive(server.requests(), timeout)   # {node_id: reply dict}
        server.step(replies)            # bad replies and silent nodes count as dropped
    mean, bound = server.result().weighted_mean()    # AbortError earlier if < t remain

Client handler (ClientApp)::

    client = SecAggClient(node_id, cfg, manifest, identity=identity, roster=roster, policy=policy, context=ctx)
    reply = client.handle(msg)                          # setup / share_keys / consistency / unmask
    reply = client.handle(msg, tensors, num_examples)   # masked_input, after local training
    state = client.state_bytes()

Security notes (see also the module docstrings and the README's threat model):

* Tolerates up to ``n - t`` dropouts after setup; ``t = max(ceil(f*n), floor(2n/3)+1)``
  of the signed roster (the nodes that answered setup), so t > 2n/3 always.
* Every roster entry is signed by a platform identity the client finds in its own roster
  (from the operator, never from the server): no Sybils, no key substitution.
* Before revealing any share a client needs t roster signatures on the identical
  (roster hash, set it masked with, survivor set) statement: with k < 2t - n colluding
  platforms the server cannot show two groups different survivor sets.
* Every key, share ciphertext and signature is bound to the round context (hash of
  the global adapter and training config): platforms given different models abort.
"""

from common.secagg.client import ClientState, SecAggClient
from common.secagg.codec import pack_record, record_nbytes, unpack_record
from common.secagg.config import HEADER_WORDS, PlatformPolicy, SecAggConfig
from common.secagg.errors import AbortError, ConfigError, InputError, ProtocolError, SecAggError
from common.secagg.identity import Identity, Roster
from common.secagg.messages import (
    STAGE_CONSISTENCY,
    STAGE_MASKED_INPUT,
    STAGE_SETUP,
    STAGE_SHARE_KEYS,
    STAGE_UNMASK,
    STAGES,
    join_arrays,
    split_arrays,
    stage_of,
)
from common.secagg.quantize import (
    InputReport,
    Manifest,
    encode_input,
    quantization_bound,
    weighted_mean,
)
from common.secagg.runner import RoundRun, make_clients, run_round
from common.secagg.server import SecAggResult, SecAggServer
from common.tensor_layout import TensorSpec

__all__ = [
    "HEADER_WORDS",
    "STAGES",
    "STAGE_CONSISTENCY",
    "STAGE_MASKED_INPUT",
    "STAGE_SETUP",
    "STAGE_SHARE_KEYS",
    "STAGE_UNMASK",
    "AbortError",
    "ClientState",
    "ConfigError",
    "Identity",
    "InputError",
    "InputReport",
    "Manifest",
    "PlatformPolicy",
    "ProtocolError",
    "Roster",
    "RoundRun",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "TensorSpec",
    "encode_input",
    "join_arrays",
    "make_clients",
    "pack_record",
    "quantization_bound",
    "record_nbytes",
    "run_round",
    "split_arrays",
    "stage_of",
    "unpack_record",
    "weighted_mean",
]
