"""The keyed-hash key ring, kept apart from every state file (docs/privacy.md, "Keys").

Tombstones, dedup windows and the subject hashes in receipts are BLAKE2b hashes keyed with a
secret. Anyone holding a state file *and* the key could confirm a guessed id, so the key is
never written next to the hashes: it comes from ``LETHE_HASH_KEY`` (a secret setting) or from
a key file with mode 0600, by default ``<state_dir>/keys/hash.key``, created on first start.

Rotation keeps the old keys: new hashes use the current key, lookups try every key, so a
tombstone written under a retired key still stops a forgotten user from being re-learned.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from models.durable import fsync_path

log = logging.getLogger("lethe.keys")

KEY_BYTES = 32


@dataclass(frozen=True)
class KeyRing:
    """The current hash key and retired ones still honoured on lookups."""

    current: bytes
    retired: tuple[bytes, ...] = ()

    @classmethod
    def generate(cls) -> KeyRing:
        """A fresh random key (tests and throw-away state)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @property
    def all(self) -> tuple[bytes, ...]:
        return (self.current, *self.retired)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(key_fingerprint(k) for k in self.all)


def key_fingerprint(key: bytes) -> str:
    """A name for a key that reveals nothing of it (a keyed hash of a fixed label), written
    beside the hashes a key made so that a reader can tell it holds the right key."""
    return hashlib.blake2b(b"lethe hash key fingerprint", digest_size=8, key=key).hexdigest()


class UnknownKeyError(RuntimeError):
    """Saved state whose keyed hashes were made with a key this process does not hold."""


def require_key(fingerprint: str | None, keys: KeyRing, what: str) -> None:
    """Refuse ``what`` (a state file, a snapshot) whose hashes a key outside ``keys`` made:
    its tombstones would match nothing, so forgotten users' late events would be learned
    again without a word (a lost key file, a moved ``LETHE_HASH_KEY_FILE``)."""
    if fingerprint is not None and fingerprint not in keys.fingerprints:
        raise UnknownKeyError(
            f"{what} was written with a hash key this process does not hold (fingerprint "
            f"{fingerprint}): restore that key (the file LETHE_HASH_KEY_FILE names, or the "
            "LETHE_HASH_KEY it came from); after a rotation keep the old key among the "
            "retired ones: the key file's later lines (lethe rotate-hash-key), or "
            "LETHE_HASH_KEYS_RETIRED for an old LETHE_HASH_KEY (docs/privacy.md)"
        )


def _from_secret(secret: SecretStr) -> bytes:
    # any length of secret text becomes a fixed-size key; BLAKE2b keys are at most 64 bytes
    return hashlib.sha256(secret.get_secret_value().encode("utf-8")).digest()


def read_key_file(path: Path) -> KeyRing:
    """Read a key file: one hex key per line, the current one first, retired ones after."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("key file %s is readable by others (mode %o); chmod 600 it", path, mode)
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"key file {path} holds no key")
    keys = [bytes.fromhex(ln) for ln in lines]
    return KeyRing(keys[0], tuple(keys[1:]))


def write_key_file(path: Path, ring: KeyRing, exclusive: bool = False) -> bool:
    """Write ``ring`` to ``path`` with mode 0600 (temp file, fsync, then rename).

    With ``exclusive`` the temp file is hard-linked into place instead, which fails when
    ``path`` exists: of workers starting together, the first one's key wins and the others
    read it. Returns False when an exclusive write found the file already there.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(k.hex() + "\n" for k in ring.all))
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        tmp.unlink(missing_ok=True)
    # the new name is durable only once the folder is: a power cut must not bring back the
    # old key file (hashes written with the new key would then match nothing)
    fsync_path(path.parent)
    return True


def load_or_create_key_file(path: Path) -> KeyRing:
    """The key ring in ``path``; a new random key is written there (0600) when it is absent."""
    if not path.exists() and write_key_file(path, KeyRing.generate(), exclusive=True):
        log.info("created key file %s", path)
    return read_key_file(path)


def rotate_key_file(path: Path) -> KeyRing:
    """Make a new current key; the old ones stay as retired keys (see docs/privacy.md)."""
    old = load_or_create_key_file(path)
    ring = KeyRing(secrets.token_bytes(KEY_BYTES), old.all)
    write_key_file(path, ring)
    return ring


def keyring(
    key_file: Path,
    secret: SecretStr | None = None,
    retired_secrets: Iterable[SecretStr] = (),
    create: bool = True,
) -> KeyRing:
    """Resolve the key ring: the secret setting when given, else the key file.

    Parameters
    ----------
    key_file:
        Where the key lives when no secret is configured (created on first use).
    secret:
        ``LETHE_HASH_KEY``: the current key as secret text.
    retired_secrets:
        Earlier values of ``LETHE_HASH_KEY`` still honoured on lookups.
    create:
        Make the key file when it is missing. A verifier passes False: checking hashes
        with a brand-new key would find nothing and so prove nothing.
    """
    if secret is not None:
        return KeyRing(_from_secret(secret), tuple(_from_secret(s) for s in retired_secrets))
    if not create:
        return read_key_file(Path(key_file))
    return load_or_create_key_file(Path(key_file))


def keyring_for(  # noqa: ANN001 - settings: LetheSettings
    settings, create: bool = True, *, saved_fingerprint: str | None = None
) -> KeyRing:
    """The key ring of a Lethe process: ``hash_key`` when set, else the key file.

    ``saved_fingerprint``: the key fingerprint of state the caller wrote earlier. A missing
    key file is then refused instead of created, since a new key matches none of that
    state's hashes, and writing one would only overwrite the key an operator is about to
    restore."""
    from streams.config import hash_key_path

    path = hash_key_path(settings)
    if saved_fingerprint and settings.hash_key is None and not Path(path).exists():
        raise UnknownKeyError(
            f"saved state is here but the hash key file {path} is missing: restore it "
            "(LETHE_HASH_KEY_FILE); a new key would match none of the state's tombstones "
            "(docs/privacy.md)"
        )
    return keyring(path, settings.hash_key, settings.hash_keys_retired, create=create)
