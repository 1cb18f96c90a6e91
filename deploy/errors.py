"""What goes wrong deploying: a failed step (:class:`DeployError`), plaintext asked for (a warning)."""

from __future__ import annotations

import warnings


class DeployError(RuntimeError):
    """A deployment step failed; the message names the step and where its log is."""


class InsecureDeploymentWarning(UserWarning):
    """Plaintext HTTP was asked for explicitly: data and node identities are unprotected."""


def warn_insecure(what: str) -> None:
    """Warn that ``what`` runs in plaintext (pointing at whoever asked the command builder for it)."""
    warnings.warn(
        f"{what}: --insecure: plaintext HTTP, no TLS: adapters and node identities travel unprotected",
        InsecureDeploymentWarning, stacklevel=3,
    )  # fmt: skip
