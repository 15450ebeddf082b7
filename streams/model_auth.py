"""Authenticated ``model-updates`` (docs/privacy.md, "Model updates").

A model announcement makes the scorer open a file and serve it, so it is trusted only when
(1) its HMAC-SHA256 tag over the canonical content verifies with the secret shared by trainer
and scorer, and (2) its path resolves (symlinks followed) inside the model folder. The
secret is ``LETHE_MODEL_UPDATE_KEY``, or else a 0600 key file the trainer and scorer of one
host share (``<state_dir>/keys/model-update.key``, created on first use).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from streams.contracts import ModelUpdate
from streams.keys import load_or_create_key_file


class UpdateRefused(RuntimeError):
    """A model update that fails authentication or names a file outside the model folder.

    ``reason`` is the metric label: ``unsigned``, ``forged`` or ``path``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def update_key(settings) -> bytes:  # noqa: ANN001 - LetheSettings
    """The shared secret of model-update tags: the setting, else the host's key file."""
    if settings.model_update_key is not None:
        return settings.model_update_key.get_secret_value().encode("utf-8")
    path = Path(settings.state_dir) / "keys" / "model-update.key"
    return load_or_create_key_file(path).current


def canonical_bytes(update: ModelUpdate) -> bytes:
    """The signed content: every field but ``tag``, as sorted compact JSON."""
    body = update.model_dump(mode="json", exclude={"tag"})
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _tag(update: ModelUpdate, key: bytes) -> str:
    return hmac.new(key, canonical_bytes(update), hashlib.sha256).hexdigest()


def sign(update: ModelUpdate, key: bytes) -> ModelUpdate:
    """A copy of ``update`` carrying its tag."""
    return update.model_copy(update={"tag": _tag(update, key)})


def verify(update: ModelUpdate, key: bytes) -> None:
    """Raise :class:`UpdateRefused` unless ``update``'s tag is right for ``key``."""
    if update.tag is None:
        raise UpdateRefused("unsigned", f"model update {update.version} carries no tag")
    if not hmac.compare_digest(update.tag, _tag(update, key)):
        raise UpdateRefused(
            "forged",
            f"model update {update.version}: tag does not verify (forged, or this worker"
            " holds another key than the trainer: they must share LETHE_MODEL_UPDATE_KEY,"
            " or one state folder's keys/model-update.key)",
        )


def confined_path(path: str, model_dir: Path) -> Path:
    """``path`` resolved (relative to ``model_dir`` when not absolute); raises
    :class:`UpdateRefused` when the result lies outside ``model_dir``."""
    root = Path(model_dir).resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise UpdateRefused("path", f"model path {path!r} is outside the model folder")
    return resolved


def authenticate(update: ModelUpdate, key: bytes, model_dir: Path) -> Path:
    """Both checks; the model file's confined, resolved path."""
    verify(update, key)
    return confined_path(update.path, model_dir)
