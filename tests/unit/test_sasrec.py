"""SASRec's padding contract: the leading all-padding columns of a batch change nothing, which
is what lets training cut each batch to its longest row."""

from __future__ import annotations

import torch

from models.sasrec import SASRec, SASRecConfig, sequence_ce_loss
from models.sequences import TrainingSequences

L, N_ITEMS = 12, 25


def _model() -> SASRec:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=L, hidden=16, layers=2, heads=2))
    with torch.no_grad():
        # non-zero norm biases give padded positions non-zero keys and values, so any
        # attention that reached them would show in the scores
        for layer in model.encoder.layers:
            layer.norm1.bias.normal_()
            layer.norm2.bias.normal_()
    return model.eval()


def _batch() -> torch.Tensor:
    seq = torch.randint(1, N_ITEMS + 1, (4, L), generator=torch.Generator().manual_seed(1))
    seq[0, :7] = 0
    seq[1, :9] = 0
    seq[2, :8] = 0
    seq[3, :6] = 0
    return seq


def test_cutting_the_all_padding_columns_changes_no_real_position():
    model, seq = _model(), _batch()
    width = int((seq != 0).sum(1).max())
    with torch.no_grad():
        full, cut = model.hidden_states(seq), model.hidden_states(seq[:, -width:])
        real = seq[:, -width:] != 0
        torch.testing.assert_close(cut[real], full[:, -width:][real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(seq[:, -width:]), model(seq), atol=1e-5, rtol=1e-5)


def test_more_padding_in_front_changes_no_score():
    model, seq = _model(), _batch()[:, -5:]
    wide = torch.cat([torch.zeros(4, L - 5, dtype=seq.dtype), seq], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(seq), model(wide), atol=1e-5, rtol=1e-5)


def test_an_empty_history_scores_finite():
    with torch.no_grad():
        assert torch.isfinite(_model()(torch.zeros(2, L, dtype=torch.long))).all()


def test_the_training_loss_is_the_same_on_a_cut_batch():
    model, seq = _model(), _batch()
    targets = torch.roll(seq, -1, dims=1)
    targets[:, -1] = 3
    targets[seq == 0] = 0
    data = TrainingSequences(seq, targets, torch.arange(4))
    inputs, cut_targets = data.batch(torch.arange(4))
    assert inputs.shape[1] == int((seq != 0).sum(1).max()) < L
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_ce_loss(model, inputs, cut_targets), sequence_ce_loss(model, seq, targets)
        )


def test_the_encoder_is_torchs_own_pre_norm_layer():
    """SASRec runs its layers' block itself (for the cheaper dropout); in eval mode it must be
    the function ``nn.TransformerEncoderLayer`` computes with the same weights and mask, so
    checkpoints and the export (which read those modules' parameters) mean the same model."""
    model, seq = _model(), _batch()
    with torch.no_grad():
        x, pad = model.embed(seq)
        blocked = model.attention_blocked(pad).repeat_interleave(model.config.heads, dim=0)
        expected = model.final_norm(model.encoder(x, mask=blocked))
        got = model.hidden_states(seq)
    torch.testing.assert_close(got[~pad], expected[~pad], atol=1e-5, rtol=1e-5)


def test_training_mode_draws_dropout_and_eval_mode_does_not():
    model, seq = _model(), _batch()
    with torch.no_grad():
        model.train()
        torch.manual_seed(3)
        a = model.hidden_states(seq)
        b = model.hidden_states(seq)
        model.eval()
        c, d = model.hidden_states(seq), model.hidden_states(seq)
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)
