"""The chunked item-softmax cross-entropy is the plain one: loss and both gradients, in float64,
for chunks that do and do not divide the rows."""

from __future__ import annotations

import pytest
import torch

from models.item_softmax import item_softmax_ce


def _plain(hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = hidden @ table.T
    logits[:, 0] = float("-inf")
    return torch.nn.functional.cross_entropy(logits, targets)


def _inputs(rows: int = 37, hidden: int = 6, items: int = 23):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, hidden, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(items + 1, hidden, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(1, items + 1, (rows,), generator=g)
    return h, table, targets


@pytest.mark.parametrize("chunk_rows", [1, 5, 37, 1000])
def test_loss_and_gradients_equal_the_plain_cross_entropy(chunk_rows):
    h, table, targets = _inputs()
    expected = _plain(h, table, targets)
    want_h, want_table = torch.autograd.grad(expected * 3.0, (h, table))
    got = item_softmax_ce(h, table, targets, chunk_rows=chunk_rows)
    got_h, got_table = torch.autograd.grad(got * 3.0, (h, table))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_h, want_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_table, want_table, rtol=0, atol=1e-12)


def test_the_padding_row_is_never_a_class_and_gets_no_gradient():
    h, table, targets = _inputs()
    with torch.no_grad():
        table[0] = 1e3  # would dominate every softmax if it were scored
    loss = item_softmax_ce(h, table, targets, chunk_rows=8)
    (grad_table,) = torch.autograd.grad(loss, (table,))
    assert torch.isfinite(loss) and float(loss) < 50
    assert torch.count_nonzero(grad_table[0]) == 0


def test_only_the_gradients_asked_for_are_made():
    h, table, targets = _inputs()
    table.requires_grad_(False)
    (got,) = torch.autograd.grad(item_softmax_ce(h, table, targets, chunk_rows=8), (h,))
    (want,) = torch.autograd.grad(_plain(h, table, targets), (h,))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_a_tied_table_accumulates_into_its_existing_gradient():
    h, table, targets = _inputs()
    table.grad = torch.ones_like(table)
    item_softmax_ce(h, table, targets, chunk_rows=8).backward()
    (want,) = torch.autograd.grad(_plain(h, table, targets), (table,))
    torch.testing.assert_close(table.grad, want + 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_rows", [0, -3])
def test_chunks_of_no_rows_are_refused(chunk_rows):
    h, table, targets = _inputs()
    with pytest.raises(ValueError, match="chunk_rows"):
        item_softmax_ce(h, table, targets, chunk_rows=chunk_rows)


def test_padding_targets_are_refused():
    h, table, targets = _inputs()
    targets[3] = 0
    with pytest.raises(ValueError, match="padding"):
        item_softmax_ce(h, table, targets)


def test_float32_agrees_with_float64():
    h, table, targets = _inputs(rows=300, hidden=16, items=500)
    expected = _plain(h, table, targets)
    got = item_softmax_ce(h.float(), table.float(), targets)
    assert abs(float(got) - float(expected)) < 1e-5
