"""The serving form of SASRec computes exactly what the trained module computes."""

from __future__ import annotations

import onnx
import pytest
import torch

from export.onnx_export import export_sasrec
from export.scoring_graph import SASRecScorer
from models.sasrec import SASRec, SASRecConfig


def _model(layers: int, heads: int, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=30, max_len=9, hidden=12, layers=layers, heads=heads))
    with torch.no_grad():  # weights far from their small initial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


@pytest.mark.parametrize(("layers", "heads"), [(1, 1), (2, 2), (3, 4)])
def test_scorer_equals_model(layers, heads):
    model = _model(layers, heads)
    seq = torch.randint(1, 31, (6, 9))
    seq[0, :5] = 0  # short history
    seq[1, :8] = 0  # one item
    seq[2, :] = 0  # nothing at all
    with torch.no_grad():
        expected, got = model(seq), SASRecScorer(model)(seq)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_scorer_shares_the_trained_weights():
    model = _model(2, 2)
    scorer = SASRecScorer(model)
    with torch.no_grad():
        model.item_emb.weight[3].fill_(1.0)
    assert scorer.item_emb.weight.data_ptr() == model.item_emb.weight.data_ptr()
    assert {id(p) for p in scorer.parameters()} <= {id(p) for p in model.parameters()}


def test_exported_graph_has_no_shape_arithmetic(tmp_path):
    """Why the serving form exists: batch-1 latency is dominated by node count."""
    exported = export_sasrec(_model(2, 2), tmp_path)
    ops = [node.op_type for node in onnx.load(str(exported.path)).graph.node]
    assert "Shape" not in ops and "Concat" not in ops
    assert len(ops) < 200
