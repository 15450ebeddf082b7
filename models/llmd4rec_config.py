"""Configs of the online LLMD4Rec model, its distillation and its text-mapped cold rows.

Plain dataclasses that import neither torch nor transformers, so the worker's settings
(streams/config.py) embed them by type without loading the models. The models' modules
(``models.online``, ``models.distill``, ``models.coldinit``) re-export them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def _non_negative(*values: float) -> bool:
    return all(math.isfinite(v) and v >= 0 for v in values)


def _whole(*values: object) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


@dataclass(frozen=True)
class DistillConfig:
    rounds: int = 2
    # temperatures chosen on ML-100K validation (T ∈ {1, 2, 4} × w ∈ {0.5, 1}; docs/models.md)
    t1: float = 4.0  # down (CRM → LLM) temperature
    t2: float = 4.0  # up (LLM → CRM) temperature
    w1: float = 0.5  # weight of the KL term when the LLM side learns
    w2: float = 0.5  # weight of the KL term when SASRec learns
    up_epochs: int = 1
    down_epochs: int = 1
    crm_batch: int = 128
    llm_batch: int = 16
    crm_lr: float = 1e-3
    llm_lr: float = 1e-3
    sample_weights: bool = True
    inject: bool = True
    max_steps_per_stage: int | None = None  # the budget
    one_way: bool = False  # peer: LLM → SASRec only (no down step)

    def __post_init__(self) -> None:
        _require(_positive(self.t1, self.t2), "temperatures must be positive and finite")
        _require(_non_negative(self.w1, self.w2), "KL weights must be non-negative and finite")
        counts = (self.rounds, self.up_epochs, self.down_epochs, self.crm_batch, self.llm_batch)
        _require(_whole(*counts), "rounds, epochs and batch sizes must be integers")
        _require(self.rounds >= 0 and min(counts[1:]) >= 1, "epochs and batch sizes must be ≥ 1")
        _require(_positive(self.crm_lr, self.llm_lr), "learning rates must be positive and finite")
        budget = self.max_steps_per_stage
        _require(budget is None or (_whole(budget) and budget >= 1), "a budget must be ≥ 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ColdInitConfig:
    min_count: int = 1  # items with fewer training occurrences get text-derived rows
    ridge: float = 1.0  # L2 penalty of the map, relative to the mean eigenvalue of XᵀX
    scale: float = 1.0  # multiplies the mapped rows (ridge shrinks them; chosen on validation)
    #: an item with ``0 < count < min_count`` keeps ``count / min_count`` of its trained row
    #: (mixed with the mapped one) instead of losing it; False: the mapped row alone
    blend: bool = False

    def __post_init__(self) -> None:
        _require(_whole(self.min_count) and self.min_count >= 1, "min_count must be ≥ 1")
        _require(_positive(self.ridge, self.scale), "ridge and scale must be positive and finite")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OnlineConfig:
    #: item vocabulary capacity of the exported model (dense indices 0..max_items-1)
    max_items: int = 4096
    max_len: int = 50
    hidden: int = 64
    #: "tiny" (random tiny Llama), "smollm2:N" (first N pretrained layers) or "smollm2"
    llm: str = "tiny"
    batch_size: int = 64
    replay_users: int = 512  # sequences per round: new + sampled older
    steps_per_round: int = 8
    pretrain_steps: int = 300  # bounded warm-up of both models
    valid_users: int = 500  # rolling validation sample
    seed: int = 0
    distill: DistillConfig = field(default_factory=DistillConfig)
    #: the LLM side scores items by their text too (``LLMRecConfig.text_repr``); the texts
    #: are given with :meth:`OnlineLLMD4Rec.set_item_texts`
    text_repr: bool = False

    def __post_init__(self) -> None:
        sizes = (self.max_items, self.max_len, self.hidden, self.batch_size, self.replay_users)
        sizes += (self.steps_per_round, self.pretrain_steps, self.valid_users, self.seed)
        _require(_whole(*sizes), "sizes, steps and the seed must be integers")
        _require(self.max_items >= 2 and self.max_len >= 2, "max_items and max_len must be ≥ 2")
        _require(self.hidden >= 8, "hidden must be at least 8")
        _require(min(sizes[3:8]) >= 1, "batch, round and sample sizes must be ≥ 1")
        # one round per micro-batch, its stages bounded by pretrain_steps / steps_per_round:
        # these distill fields are never read here, so setting them would silently do nothing
        unread = ("rounds", "up_epochs", "down_epochs", "max_steps_per_stage")
        default = DistillConfig()
        for name in unread:
            _require(
                getattr(self.distill, name) == getattr(default, name),
                f"distill.{name} is not used by the online model (rounds follow the stream)",
            )

    def to_dict(self) -> dict:
        return asdict(self)
