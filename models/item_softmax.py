"""Full-softmax cross-entropy over an item table, computed in row chunks.

``cross_entropy(hidden @ table.T)`` materialises an N × n_items matrix of logits, its
log-softmax and its gradient: on ML-1M at length 200 that is about 7,000 × 3,706 floats per
batch (100 MB), three times over, each pass bound by memory on a CPU. Here the logits of a few
hundred rows at a time are made, used and dropped while they are still in cache:
the forward keeps only each row's log-sum-exp, and the backward makes the chunk's logits once
more and turns them straight into the gradient. The result is the same function (tested
against the plain expression in float64); only the order of the sums differs.

Row 0 of the table is padding: it is never a target and never scored, so its gradient is 0.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# 256 rows × 3,706 items of float32 is 3.8 MB: one chunk's logits stay in a CPU's L3 cache.
# A GPU has the memory for every row at once and would only pay for many small launches.
CPU_CHUNK_ROWS = 256


class _ItemSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, chunk: int):
        items = table[1:]
        lse = torch.empty(hidden.shape[0], dtype=hidden.dtype, device=hidden.device)
        total = hidden.new_zeros(())
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = hidden[rows] @ items.T
            lse[rows] = torch.logsumexp(logits, dim=1)
            picked = logits.gather(1, (targets[rows] - 1)[:, None]).squeeze(1)
            total += (lse[rows] - picked).sum()
        ctx.save_for_backward(hidden, table, targets, lse)
        ctx.chunk = chunk
        return total / hidden.shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        hidden, table, targets, lse = ctx.saved_tensors
        want_hidden, want_table = ctx.needs_input_grad[:2]
        items = table[1:]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_table = torch.zeros_like(table) if want_table else None
        scale = grad_loss / hidden.shape[0]
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            h = hidden[rows]
            # softmax − one-hot of the target, times the upstream gradient, in place
            grad_logits = (h @ items.T).sub_(lse[rows, None]).exp_()
            picked = torch.arange(h.shape[0], device=h.device)
            grad_logits[picked, targets[rows] - 1] -= 1.0
            grad_logits.mul_(scale)
            if want_hidden:
                torch.mm(grad_logits, items, out=grad_hidden[rows])
            if want_table:
                grad_table[1:].addmm_(grad_logits.T, h)
        return grad_hidden, grad_table, None, None


def item_softmax_ce(
    hidden: torch.Tensor,
    table: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(hidden @ table[1:].T)`` against ``targets``.

    Parameters
    ----------
    hidden
        N × H states, one per scored position.
    table
        (n_items + 1) × H item table; row 0 is padding and is excluded from the softmax.
    targets
        N item ids in ``1..n_items`` (shifted ids: 0 is padding and must not occur).
    chunk_rows
        Rows of logits made at a time (at least 1); by default a cache-sized chunk on the CPU
        and every row at once elsewhere.

    Returns
    -------
    torch.Tensor
        The scalar mean loss, differentiable in ``hidden`` and ``table``.
    """
    on_cpu = hidden.device.type == "cpu"
    # a padding target would silently score the last item (index −1); on a GPU the gather
    # fails on it instead, and the check is skipped there because it would wait for the device
    if on_cpu and targets.numel() and int(targets.min()) < 1:
        raise ValueError("targets are shifted item ids (1..n_items); 0 is padding")
    if chunk_rows is None:
        chunk_rows = CPU_CHUNK_ROWS if on_cpu else max(hidden.shape[0], 1)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    return _ItemSoftmaxCE.apply(hidden, table, targets, chunk_rows)
