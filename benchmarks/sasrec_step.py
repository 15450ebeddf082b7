"""SASRec training step: Lethe's forward and loss against torch's stock path, in one process.

    python -m benchmarks.sasrec_step --dataset ml-1m --steps 40 --batch-size 64 --threads 2

The baseline is what SASRec computed before: the same embedding, then
``nn.TransformerEncoder``'s own forward (torch's dropout, attention through
``scaled_dot_product_attention``) and ``cross_entropy`` over the materialised logits with the
padding column set to −inf. Lethe's step runs the same layers' weights through SASRec's own
block (explicit attention, torch's dropout) and the chunked item softmax
(``models/item_softmax.py``). Both run forward and backward on the same batches, alternating
step by step, so a busy machine slows both alike; no optimiser step is taken, so every
batch meets the same weights. The first batch of each is a warm-up. Before timing, the two
paths are checked to give the same loss and gradients with dropout off.

Prints one JSON line: ``bench: "sasrec_step"``, ``baseline_step_s``, ``step_s``, ``speedup``,
``loss_diff`` and ``grad_max_diff`` (dropout off) and the sizes.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from benchmarks.common import emit
from benchmarks.sasrec import MAX_LEN
from models.datasets import leave_one_out, load
from models.sasrec import SASRec, SASRecConfig, sequence_ce_loss
from models.sequences import training_sequences


def stock_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss as torch's modules compute it (the baseline)."""
    x, pad = model.embed(inputs)
    blocked = model.attention_blocked(pad).repeat_interleave(model.config.heads, dim=0)
    hidden = model.final_norm(model.encoder(x, mask=blocked))
    keep = targets != 0
    logits = model.logits(hidden[keep])
    logits[:, 0] = float("-inf")
    return nn.functional.cross_entropy(logits, targets[keep])


def _gradients(model: SASRec, loss_fn, inputs, targets) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, inputs, targets)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def check_same_function(model: SASRec, inputs, targets) -> tuple[float, float]:
    """|loss difference| and the largest gradient difference with dropout off."""
    model.eval()  # dropout off; autograd still records
    loss_a, grads_a = _gradients(model, stock_loss, inputs, targets)
    loss_b, grads_b = _gradients(model, sequence_ce_loss, inputs, targets)
    model.train()
    worst = max(float((a - b).abs().max()) for a, b in zip(grads_a, grads_b, strict=True))
    return abs(loss_a - loss_b), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(MAX_LEN), default="ml-1m")
    parser.add_argument("--steps", type=int, default=40, help="timed steps (at least 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    split = leave_one_out(load(args.dataset))
    train = training_sequences(split, MAX_LEN[args.dataset])
    torch.manual_seed(args.seed)
    model = SASRec(SASRecConfig(n_items=split.n_items, max_len=MAX_LEN[args.dataset]))
    batches = torch.randperm(len(train)).split(args.batch_size)[: args.steps + 1]
    loss_diff, grad_diff = check_same_function(model, *train.batch(batches[0]))
    model.train()
    paths = {"baseline": stock_loss, "lethe": sequence_ce_loss}
    seconds = dict.fromkeys(paths, 0.0)
    for step, idx in enumerate(batches):
        inputs, targets = train.batch(idx)
        for name, loss_fn in paths.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss_fn(model, inputs, targets).backward()
            if step:  # the first batch warms both paths up
                seconds[name] += time.perf_counter() - start
    steps = len(batches) - 1
    emit(
        {
            "bench": "sasrec_step",
            "dataset": args.dataset,
            "batch_size": args.batch_size,
            "max_len": MAX_LEN[args.dataset],
            "steps": steps,
            "threads": torch.get_num_threads(),
            "baseline_step_s": round(seconds["baseline"] / steps, 4),
            "step_s": round(seconds["lethe"] / steps, 4),
            "speedup": round(seconds["baseline"] / seconds["lethe"], 2),
            "loss_diff": loss_diff,
            "grad_max_diff": grad_diff,
        }
    )


if __name__ == "__main__":
    main()
