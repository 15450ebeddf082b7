"""Turn leave-one-out splits into padded item-id sequences for sequential models.

Item ids are shifted by one: 0 is padding, item ``i`` (dense index) becomes ``i + 1``.
Sequences are left-padded so that the last position always holds the newest item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.datasets import LeaveOneOut

PAD = 0


def left_pad(seq: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` items of ``seq`` (+1 shifted), left-padded with 0."""
    out = np.zeros(length, dtype=np.int64)
    tail = np.asarray(seq[-length:], dtype=np.int64) + 1
    if len(tail):
        out[-len(tail) :] = tail
    return out


@dataclass
class TrainingSequences:
    """Next-item training pairs: ``inputs[b, t]`` predicts ``targets[b, t]`` (0 = ignore)."""

    inputs: torch.Tensor  # B × L
    targets: torch.Tensor  # B × L
    users: torch.Tensor  # B

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, idx: torch.Tensor) -> TrainingSequences:
        return TrainingSequences(self.inputs[idx], self.targets[idx], self.users[idx])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of rows ``idx``, the columns that are padding in every row cut.

        Left padding puts those columns first; SASRec gives the same result without them."""
        inputs, targets = self.inputs[idx], self.targets[idx]
        width = max(int((inputs != PAD).sum(dim=1).max()), 1)
        return inputs[:, -width:], targets[:, -width:]


def training_sequences(split: LeaveOneOut, max_len: int, users: np.ndarray | None = None):
    """One row per user from the training part of each sequence (all but valid and test)."""
    users = np.arange(split.n_users) if users is None else users
    rows_in, rows_tgt, kept = [], [], []
    for u in users:
        seq = split.train_sequence(int(u))
        if len(seq) < 2:
            continue
        rows_in.append(left_pad(seq[:-1], max_len))
        rows_tgt.append(left_pad(seq[1:], max_len))
        kept.append(u)
    return TrainingSequences(
        torch.from_numpy(np.stack(rows_in)),
        torch.from_numpy(np.stack(rows_tgt)),
        torch.as_tensor(np.array(kept, dtype=np.int64)),
    )


@dataclass
class EvalSet:
    """Histories, targets and seen-item lists for full-ranking evaluation."""

    histories: torch.Tensor  # U × L (shifted ids)
    targets: np.ndarray  # U (dense item indices)
    seen: list[np.ndarray]  # dense indices to mask per user
    users: np.ndarray


def eval_set(split: LeaveOneOut, max_len: int, stage: str = "test") -> EvalSet:
    users = np.flatnonzero(split.test_target >= 0)
    hist = [split.test_history(u) if stage == "test" else split.valid_history(u) for u in users]
    targets = split.test_target[users] if stage == "test" else split.valid_target[users]
    return EvalSet(
        torch.from_numpy(np.stack([left_pad(h, max_len) for h in hist])),
        targets,
        [np.unique(h) for h in hist],
        users,
    )
