"""SASRec → ONNX: parity with torch, dynamic batch, in-graph top-k, hash names, provider."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.onnx_export import ParityError, export_sasrec, sha256_of
from export.session import open_session
from models.sasrec import SASRec, SASRecConfig


@pytest.fixture(scope="module")
def model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_items=40, max_len=12, hidden=16, layers=2, heads=2)).eval()


def test_export_matches_torch_at_any_batch_size(model, tmp_path):
    exported = export_sasrec(model, tmp_path)
    assert exported.max_abs_diff <= 1e-4
    assert exported.path.name == f"sasrec-{exported.sha256[:16]}.onnx"
    assert sha256_of(exported.path) == exported.sha256
    session = open_session(exported.path)
    assert session.provider == "CPUExecutionProvider"  # no GPU on this machine
    for batch in (1, 5, 33):
        seq = torch.randint(1, 41, (batch, 12))
        with torch.no_grad():
            expected = model(seq).numpy()
        (got,) = session.run(seq.numpy())
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_in_graph_top_k(model, tmp_path):
    exported = export_sasrec(model, tmp_path, top_k=5)
    seq = torch.randint(1, 41, (3, 12))
    values, items = open_session(exported.path).run(seq.numpy())
    with torch.no_grad():
        scores = model(seq)[:, 1:]
    expected = torch.topk(scores, 5, dim=1)
    np.testing.assert_array_equal(items, expected.indices.numpy() + 1)
    np.testing.assert_allclose(values, expected.values.numpy(), atol=1e-4)
    assert (items != 0).all(), "padding is never recommended"


def test_parity_failure_refuses_to_publish(model, tmp_path):
    with pytest.raises(ParityError):
        export_sasrec(model, tmp_path, tolerance=-1.0)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.tmp"))


def test_a_model_with_a_nan_row_fails_parity(tmp_path):
    torch.manual_seed(0)
    broken = SASRec(SASRecConfig(n_items=40, max_len=12, hidden=16, layers=2, heads=2)).eval()
    with torch.no_grad():
        broken.item_emb.weight[7] = float("nan")  # every score against item 7 is NaN
    with pytest.raises(ParityError):
        export_sasrec(broken, tmp_path)


def test_metadata_travels_inside_the_hashed_file(model, tmp_path):
    plain = export_sasrec(model, tmp_path / "plain")
    tagged = export_sasrec(model, tmp_path / "tagged", metadata={"lethe.items": '["a", "b"]'})
    assert tagged.sha256 == sha256_of(tagged.path) != plain.sha256
    session = open_session(tagged.path)
    assert session.metadata["lethe.items"] == '["a", "b"]'
    assert "lethe.items" not in open_session(plain.path).metadata
