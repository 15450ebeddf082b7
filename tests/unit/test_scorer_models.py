"""What the scoring agent serves: sha256-checked model loading, the candidate catalogue
lining SASRec and IMCorrect up, and batch scoring with fusion, bans and fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.onnx_export import export_sasrec
from models.fusion import fuse, top_k
from models.imcorrect import IMCorrect
from models.sasrec import SASRec, SASRecConfig
from streams.contracts import ModelUpdate
from streams.scorer_models import (
    Catalogue,
    IMCorrectView,
    ModelRejected,
    ScoringJob,
    load_served_model,
    score_batch,
)
from streams.state import IdMap, WorkerState

VOCAB = ["i0", "i1", None, "i3", "i4", "i5"]  # i2 was forgotten: its index stays empty


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=len(VOCAB), max_len=4, hidden=8, layers=1, heads=1))
    meta = {"lethe.items": json.dumps(VOCAB), "lethe.version": "7", "lethe.max_len": "4"}
    return model.eval(), export_sasrec(model, tmp_path_factory.mktemp("m"), metadata=meta)


def update_for(exported_model, **changes) -> ModelUpdate:
    fields = dict(
        kind="crm-onnx",
        version="7",
        path=str(exported_model.path),
        sha256=exported_model.sha256,
        ts=1,
    )
    return ModelUpdate(**{**fields, **changes})


def test_load_checks_sha256_and_metadata(exported, tmp_path):
    _, ex = exported
    served = load_served_model(update_for(ex), prefer_gpu=False)
    assert served.items == VOCAB and served.max_len == 4 and served.version == "7"
    assert served.provider == "CPUExecutionProvider"
    with pytest.raises(ModelRejected, match="sha256"):
        load_served_model(update_for(ex, sha256="0" * 64))
    with pytest.raises(ModelRejected, match="missing"):
        load_served_model(update_for(ex, path=str(tmp_path / "nope.onnx")))
    bare = export_sasrec(exported[0], tmp_path)  # no Lethe metadata
    with pytest.raises(ModelRejected, match="metadata"):
        load_served_model(update_for(ex, path=str(bare.path), sha256=bare.sha256))


def imcorrect_view() -> IMCorrectView:
    model = IMCorrect("ease", l2=1.0)
    items = IdMap(["i5", "i0", "i9"])  # its own layout, and an item SASRec does not know
    users = IdMap(["alice", "bob"])
    model.learn([0, 0, 1, 1], [0, 1, 1, 2])
    return IMCorrectView(path=None, state=WorkerState(model=model, users=users, items=items))


def test_catalogue_lines_up_both_models(exported):
    served = load_served_model(update_for(exported[1]), prefer_gpu=False)
    catalogue = Catalogue(served, imcorrect_view())
    assert catalogue.ids == ["i0", "i1", "i3", "i4", "i5"]
    assert catalogue.crm_cols.tolist() == [1, 2, 4, 5, 6]  # ONNX column = index + 1
    assert catalogue.imc_cols.tolist() == [1, -1, -1, -1, 0]
    assert catalogue.history_row(["zz", "i1", "i4"]).tolist() == [0, 0, 2, 5]
    assert catalogue.history_row(["i0"] * 6).tolist() == [1, 1, 1, 1]
    long = ["i5"] * 100 + ["i1", "i3", "zz", "i4", "zz", "i5", "zz"]
    assert catalogue.history_row(long).tolist() == [2, 4, 5, 6]  # the newest known four
    fallback = Catalogue(None, None, fallback_ids=["x", "y"])
    assert fallback.ids == ["x", "y"] and len(fallback) == 2


def test_score_batch_fuses_bans_and_falls_back(exported):
    model, ex = exported
    served = load_served_model(update_for(ex), prefer_gpu=False)
    view = imcorrect_view()
    catalogue = Catalogue(served, view)
    history = catalogue.history_row(["i0", "i1"])
    jobs = [
        ScoringJob(k=3, history=history, imcorrect_user=0, banned=np.array([0, 1])),
        ScoringJob(k=2, history=history, imcorrect_user=None, banned=np.array([], np.int64)),
        ScoringJob(k=2, history=None, imcorrect_user=None, banned=np.array([4])),
    ]
    popularity = np.array([5.0, 1.0, 0.0, 2.0, 9.0])
    out = score_batch(catalogue, jobs, weight=0.5, popularity=popularity)

    with torch.no_grad():
        crm = model(torch.from_numpy(history[None])).numpy()[:, catalogue.crm_cols]
    imc_raw = view.state.model.score([0], mask_seen=False)
    imc = np.where(catalogue.imc_cols >= 0, imc_raw[:, np.maximum(catalogue.imc_cols, 0)], np.nan)
    expected, _ = top_k(fuse(crm, imc, 0.5)[0], 3, np.array([0, 1]))
    assert out[0][0].tolist() == expected.tolist() and out[0][2] == "personal"
    assert not {0, 1} & set(out[0][0].tolist())
    assert out[1][0].tolist() == top_k(fuse(crm, None, 0.5)[0], 2)[0].tolist()
    assert out[2][0].tolist() == [0, 3] and out[2][2] == "popularity"  # 4 banned


def test_imcorrect_item_indices_map_to_catalogue_positions(exported):
    served = load_served_model(update_for(exported[1]), prefer_gpu=False)
    catalogue = Catalogue(served, imcorrect_view())
    # IMCorrect indices 0 (i5), 1 (i0), 2 (i9: not in the catalogue)
    assert sorted(catalogue.imcorrect_positions(np.array([0, 1, 2])).tolist()) == [0, 4]


def test_a_file_that_onnxruntime_cannot_open_is_rejected_not_raised(exported, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    import hashlib

    digest = hashlib.sha256(garbage.read_bytes()).hexdigest()
    with pytest.raises(ModelRejected, match="cannot be opened"):
        load_served_model(update_for(exported[1], path=str(garbage), sha256=digest))
