"""The cold-item protocol: items that appear late in the timeline, never seen in training.

A streaming catalogue keeps gaining items. To measure how a model ranks them, the last
``fraction`` of items by first appearance (the time of their first interaction anywhere in
the data) are *cold*. Every interaction with a cold item is removed from the training part of
every user's sequence, so no model trains on a cold item, as input or as target. Evaluation
keeps the usual leave-one-out cases (last item test, the one before validation) but only those
whose target is cold, ranked against all items as usual with the user's history masked: the
whole history, cold items included (they are gone from the model's input, not from what the
user has seen, so they do not compete with the target).

The standard protocol and this one share :class:`~models.datasets.LeaveOneOut`: the cold view
is a ``LeaveOneOut`` whose training parts are filtered, so every trainer works unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models.datasets import Dataset, LeaveOneOut
from models.sequences import EvalSet, eval_set


def item_first_seen(dataset: Dataset) -> np.ndarray:
    """Epoch seconds of each item's first interaction, in dense-index order."""
    idx = dataset.index
    ts = dataset.interactions["ts"].to_numpy()
    first = np.full(len(idx.item_ids), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, idx.items, ts)
    return first


def cold_items(first_seen: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Boolean mask of the last ``ceil(fraction · n)`` items by first appearance (ties broken
    by dense index, which follows the time-sorted interaction order)."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be in (0, 1)")
    n = len(first_seen)
    n_cold = math.ceil(fraction * n)
    order = np.lexsort((np.arange(n), first_seen))
    mask = np.zeros(n, dtype=bool)
    mask[order[n - n_cold :]] = True
    return mask


@dataclass(frozen=True)
class ColdSplit:
    """A leave-one-out split whose training parts hold no cold item, plus the cold mask."""

    split: LeaveOneOut
    cold: np.ndarray  # bool per dense item
    original: LeaveOneOut  # the unfiltered split: what each user has really seen

    def eval_set(self, max_len: int, stage: str = "test") -> EvalSet:
        """The cases of ``stage`` (test / valid) whose target is a cold item: the input is
        the filtered history, the mask the unfiltered one (the standard protocol's mask)."""
        data = eval_set(self.split, max_len, stage)
        cases = subset_eval(data, np.flatnonzero(self.cold[data.targets]))
        history = self.original.test_history if stage == "test" else self.original.valid_history
        cases.seen = [np.unique(history(int(u))) for u in cases.users]
        return cases


def subset_eval(data: EvalSet, keep: np.ndarray) -> EvalSet:
    """The rows ``keep`` of an evaluation set."""
    keep = np.asarray(keep, dtype=np.int64)
    return EvalSet(
        data.histories[torch.from_numpy(keep)],
        data.targets[keep],
        [data.seen[k] for k in keep],
        data.users[keep],
    )


def cold_split(split: LeaveOneOut, cold: np.ndarray) -> ColdSplit:
    """Remove every cold item from every user's training part; validation and test items
    stay where they are (a cold one is what the protocol evaluates)."""
    if cold.shape != (split.n_items,):
        raise ValueError(f"cold mask has shape {cold.shape}, expected ({split.n_items},)")
    sequences = []
    for u in range(split.n_users):
        train = split.train_sequence(u)
        held_out = split.sequences[u][len(train) :]
        sequences.append(np.concatenate([train[~cold[train]], held_out]))
    filtered = LeaveOneOut(
        split.n_users,
        split.n_items,
        sequences,
        split.valid_target.copy(),
        split.test_target.copy(),
    )
    return ColdSplit(filtered, cold, split)


def training_counts(split: LeaveOneOut) -> np.ndarray:
    """How often each item occurs in the training parts (inputs or targets)."""
    counts = np.zeros(split.n_items, dtype=np.int64)
    for u in range(split.n_users):
        np.add.at(counts, split.train_sequence(u), 1)
    return counts
