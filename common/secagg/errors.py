"""Error types of the secure-aggregation protocol.

Every failure the protocol code can raise on bad input, bad configuration or a
misbehaving peer is one of these, so callers (the Flower handlers) can catch
``SecAggError`` alone and never see a ``KeyError`` or ``ValueError`` leak out
of a parser.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error raised by ``common.secagg``."""


class ConfigError(SecAggError):
    """A configuration value is invalid or could overflow; names the field to change."""


class InputError(SecAggError):
    """A local input (adapter tensors, weight) is unusable: not finite, wrong shape/dtype."""


class ProtocolError(SecAggError):
    """A message is malformed, out of order, for another round, or from an unexpected node."""


class AbortError(SecAggError):
    """The round is aborted: a security check failed or too few nodes remain.

    After this is raised the raising party has wiped its round secrets and will
    not answer further messages of the round.
    """
