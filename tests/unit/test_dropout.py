"""The CPU dropout is torch's dropout: the same mask from the same seed, the same scale, the
same gradient; only the work to apply it is less."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from models.dropout import dropout


@pytest.mark.parametrize("shape", [(7, 3), (4, 2, 30, 30), (50_000,)])
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_the_same_seed_gives_torchs_mask_and_values(shape, p):
    x = torch.randn(shape)
    torch.manual_seed(11)
    ours = dropout(x, p, training=True)
    torch.manual_seed(11)
    theirs = F.dropout(x, p, training=True)
    assert torch.equal(ours, theirs)


def test_the_gradient_is_torchs():
    x = torch.randn(64, 8, requires_grad=True)
    weights = torch.arange(8.0)
    torch.manual_seed(1)
    (ours,) = torch.autograd.grad((dropout(x, 0.3, training=True) * weights).sum(), (x,))
    torch.manual_seed(1)
    (theirs,) = torch.autograd.grad((F.dropout(x, 0.3, training=True) * weights).sum(), (x,))
    assert torch.equal(ours, theirs)
    assert 0 < torch.count_nonzero(ours) < ours.numel()


def test_drops_with_the_asked_probability():
    torch.manual_seed(0)
    y = dropout(torch.ones(400_000), 0.2, training=True)
    # 400k Bernoulli(0.2) draws: the standard deviation of the fraction is 6e-4
    assert abs(float((y == 0).double().mean()) - 0.2) < 4e-3
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 1 / 0.8))


def test_eval_and_zero_probability_return_the_input():
    x = torch.randn(10)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_probabilities_outside_zero_to_one_are_refused(p):
    with pytest.raises(ValueError):
        dropout(torch.randn(3), p, training=True)
