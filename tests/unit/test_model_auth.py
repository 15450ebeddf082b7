"""Authenticated model updates: the tag, the path confined to the model folder, and the
scorer refusing (and counting) anything else before it opens a file."""

from __future__ import annotations

import os

import pytest

from streams import metrics as m
from streams.config import LetheSettings
from streams.contracts import ModelUpdate
from streams.model_auth import UpdateRefused, authenticate, sign, update_key, verify

KEY = b"shared-secret"


def update(path: str, **changes) -> ModelUpdate:
    fields = dict(kind="crm-onnx", version="3", path=path, sha256="a" * 64, ts=5)
    return ModelUpdate(**{**fields, **changes})


def test_a_signed_update_verifies_and_any_change_breaks_the_tag(tmp_path):
    signed = sign(update(str(tmp_path / "m.onnx"), metrics={"ndcg@10": 0.1}), KEY)
    verify(signed, KEY)
    # the tag survives the wire
    verify(ModelUpdate.model_validate_json(signed.to_bytes()), KEY)
    for change in ({"version": "4"}, {"sha256": "b" * 64}, {"path": "/etc/passwd"}):
        with pytest.raises(UpdateRefused) as err:
            verify(signed.model_copy(update=change), KEY)
        assert err.value.reason == "forged"
    with pytest.raises(UpdateRefused) as err:
        verify(signed, b"another key")
    assert err.value.reason == "forged"
    with pytest.raises(UpdateRefused) as err:
        verify(update("m.onnx"), KEY)
    assert err.value.reason == "unsigned"


def test_the_path_must_resolve_inside_the_model_folder(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.onnx").write_bytes(b"x")
    assert authenticate(sign(update("m.onnx"), KEY), KEY, models) == (models / "m.onnx").resolve()
    inside = str(models / "m.onnx")
    assert authenticate(sign(update(inside), KEY), KEY, models) == (models / "m.onnx").resolve()
    (tmp_path / "evil.onnx").write_bytes(b"x")
    os.symlink(tmp_path / "evil.onnx", models / "link.onnx")
    for path in ("../evil.onnx", str(tmp_path / "evil.onnx"), "link.onnx", "sub/../../evil.onnx"):
        with pytest.raises(UpdateRefused) as err:
            authenticate(sign(update(path), KEY), KEY, models)
        assert err.value.reason == "path", path


def test_trainer_and_scorer_of_one_host_share_a_key_file_or_the_secret(tmp_path):
    s = LetheSettings(state_dir=tmp_path)
    assert update_key(s) == update_key(LetheSettings(state_dir=tmp_path))
    assert oct((tmp_path / "keys" / "model-update.key").stat().st_mode & 0o777) == "0o600"
    assert update_key(LetheSettings(state_dir=tmp_path, model_update_key="k" * 16)) == b"k" * 16


def test_the_scorer_refuses_and_counts_unsigned_forged_and_escaping_updates(tmp_path):
    from streams.services.scorer import ScorerService

    settings = LetheSettings(state_dir=tmp_path / "state", model_dir=tmp_path / "models")
    settings.model_dir.mkdir()
    worker = ScorerService(settings)
    key = update_key(settings)

    def refused(reason: str) -> float:
        return m.MODEL_UPDATES_REFUSED.labels(reason)._value.get()

    before = {r: refused(r) for r in ("unsigned", "forged", "path")}
    assert worker._authentic(update("m.onnx")) is None
    assert worker._authentic(sign(update("m.onnx"), b"guessed")) is None
    assert worker._authentic(sign(update("../../x.onnx"), key)) is None
    assert {r: refused(r) - before[r] for r in before} == {"unsigned": 1, "forged": 1, "path": 1}
    good = worker._authentic(sign(update("m.onnx"), key))
    assert good is not None and good.path == str((settings.model_dir / "m.onnx").resolve())
