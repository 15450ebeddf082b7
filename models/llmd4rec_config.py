"""Configs of the online LLMD4Rec model, its distillation and its text-mapped cold rows.

Plain dataclasses that import neither torch nor transformers, so the worker's settings
(streams/config.py) embed them by type without loading the models. The models' modules
(``models.online``, ``models.distill``, ``models.coldinit``) re-export them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


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
        _require(self.t1 > 0 and self.t2 > 0, "temperatures must be positive")
        _require(self.w1 >= 0 and self.w2 >= 0, "KL weights must be non-negative")
        _require(self.rounds >= 0, "rounds must be non-negative")
        _require(min(self.crm_batch, self.llm_batch) >= 1, "batch sizes must be at least 1")
        _require(self.crm_lr > 0 and self.llm_lr > 0, "learning rates must be positive")

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
        _require(self.min_count >= 1, "min_count must be at least 1")
        _require(self.ridge > 0 and self.scale > 0, "ridge and scale must be positive")

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
        _require(self.max_items >= 2 and self.max_len >= 2, "max_items and max_len must be ≥ 2")
        _require(self.hidden >= 8, "hidden must be at least 8")
        counts = (self.batch_size, self.replay_users, self.steps_per_round, self.pretrain_steps)
        _require(min(*counts, self.valid_users) >= 1, "batch, round and sample sizes must be ≥ 1")

    def to_dict(self) -> dict:
        return asdict(self)
