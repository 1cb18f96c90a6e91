"""Key rotation: a platform replaces its secure-aggregation identity; the operator its roster entry.

Two steps, each on the machine that owns what it changes (the new private key is born on the
platform, like the first one):

1. On the platform, :func:`rotate_identity` (``crossfed deploy rotate-key``): a new Ed25519
   key replaces the old one in place (renamed over it: the old private key is gone), the
   ``.pub`` beside it is rewritten, and the platform's own copy of the roster gets its new key
   (every other entry as it was), so the node's own check passes at its next message.
2. The operator, given the new ``.pub`` out of band, :func:`update_roster` (``crossfed deploy
   roster --update roster.json --pub PLATFORM.secagg.pub``) replaces that platform's entry and
   hands the same roster to every platform again.

Nothing of a run is bound to an identity: the coordinator's checkpoint, each platform's private
parameters and contribution record are keyed by the run's ``out-dir``. A node reads its key and
roster at every message, so the new entry takes effect at the first round set up after every
platform holds the new roster; a round set up in between fails closed (aborted, the run goes
on with the previous adapter). The README (*Key custody*) gives the order that loses no round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.files import SECRET_MODE, atomic_write_bytes, atomic_write_text
from common.secagg.identity import (
    Identity,
    Roster,
    identity_paths,
    load_identity,
    load_public,
    private_pem,
    public_json,
)


@dataclass(frozen=True)
class Rotation:
    """What :func:`rotate_identity` changed."""

    key: Path
    pub: Path
    old_public: bytes
    new_public: bytes
    roster: Path | None


def rotate_identity(platform: str, folder: Path, roster: Path | None = None,
                    passphrase: bytes | None = None) -> Rotation:  # fmt: skip
    """Replace ``platform``'s identity in ``folder`` (and its entry in ``roster``, when given).

    The old key must load (with ``passphrase`` when encrypted; the new one is encrypted with it
    too), and a given roster must list the old key for this platform: rotating a key the
    federation does not know would hide a mix-up. Nothing is written before both checks pass.
    """
    old = load_identity(identity_paths(platform, folder)[0], platform, passphrase)
    current = None
    if roster is not None:
        current = Roster.load(roster)
        current.check_own(old)
    new = Identity.generate(platform)
    key_path, pub_path = identity_paths(platform, folder)
    # renamed over the old files: a crash leaves the old identity or the new one, never none
    atomic_write_bytes(key_path, private_pem(new, passphrase), mode=SECRET_MODE, fsync=True)
    atomic_write_text(pub_path, public_json(new), fsync=True)
    if roster is not None and current is not None:
        atomic_write_text(roster, current.replace(platform, new.public_key).to_json())
    return Rotation(key_path, pub_path, old.public_key, new.public_key, roster)


def update_roster(roster: Path, public_files: Iterable[Path], out: Path | None = None) -> Roster:
    """The operator's side: replace the entries of the platforms whose new ``.pub`` files are given.

    Every other entry stays as it was; a platform the roster does not list is refused (adding a
    platform is a new roster, built with ``crossfed deploy roster --pub ...``).
    """
    updated = Roster.load(roster)
    for path in public_files:
        platform, key = load_public(path)
        updated = updated.replace(platform, key)
    atomic_write_text(out or roster, updated.to_json())
    return updated
