"""Configs of the online LLMD4Rec model, its distillation and its text-mapped cold rows.

Plain dataclasses that import neither torch nor transformers, so the worker's settings
(streams/config.py) embed them by type without loading the models. The models' modules
(``models.online``, ``models.distill``, ``models.coldinit``) re-export them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from models.config_checks import real, whole


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
        for name in ("t1", "t2", "crm_lr", "llm_lr"):
            real(self, name, positive=True)
        for name in ("w1", "w2"):
            real(self, name, positive=False)
        whole(self, "rounds", minimum=0)
        for name in ("up_epochs", "down_epochs", "crm_batch", "llm_batch"):
            whole(self, name, minimum=1)
        if self.max_steps_per_stage is not None:
            whole(self, "max_steps_per_stage", minimum=1)

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
        whole(self, "min_count", minimum=1)
        real(self, "ridge", positive=True)
        real(self, "scale", positive=True)

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
        whole(self, "max_items", minimum=2)
        whole(self, "max_len", minimum=2)
        whole(self, "hidden", minimum=8)
        for name in ("batch_size", "replay_users", "steps_per_round", "pretrain_steps"):
            whole(self, name, minimum=1)
        whole(self, "valid_users", minimum=1)
        whole(self, "seed", minimum=0)
        # one round per micro-batch, its stages bounded by pretrain_steps / steps_per_round:
        # these distill fields are never read here, so setting them would silently do nothing
        default = DistillConfig()
        for name in ("rounds", "up_epochs", "down_epochs", "max_steps_per_stage"):
            if getattr(self.distill, name) != getattr(default, name):
                raise ValueError(
                    f"distill.{name} is not used by the online model (rounds follow the stream)"
                )

    def to_dict(self) -> dict:
        return asdict(self)
