"""Runtime configuration as data: environment variables, an optional TOML file, defaults.

Every Lethe process reads one :class:`LetheSettings`. Environment variables use the
``LETHE_`` prefix (``LETHE_TOPIC_PREFIX``, ``LETHE_STATE_DIR`` …), except the broker
address, which also answers to the conventional ``KAFKA_BOOTSTRAP``. Nested sections use
``__`` (``LETHE_TOPICS__INTERACTIONS_RETENTION_MS``). ``LETHE_CONFIG`` names a TOML file whose
values sit below the environment in priority.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DAY_MS = 24 * 3600 * 1000


class SecuritySettings(BaseModel):
    """Passed through to aiokafka untouched; secrets are never logged (SecretStr)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None


class LimitSettings(BaseModel):
    """Bounds applied to every incoming message before it reaches a model."""

    max_id_length: int = Field(default=128, ge=1, le=4096)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    max_item_ids_per_deletion: int = Field(default=10_000, ge=1)
    max_k: int = Field(default=1000, ge=1)


class TopicSettings(BaseModel):
    """Partitions, retention and cleanup for every topic Lethe owns."""

    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    interactions_retention_ms: int = Field(default=30 * DAY_MS, ge=-1)
    deletions_retention_ms: int = Field(default=365 * DAY_MS, ge=-1)
    requests_retention_ms: int = Field(default=1 * DAY_MS, ge=-1)
    recommendations_retention_ms: int = Field(default=1 * DAY_MS, ge=-1)
    receipts_retention_ms: int = Field(default=-1, ge=-1)  # kept forever: proof of erasure
    dead_letters_retention_ms: int = Field(default=90 * DAY_MS, ge=-1)


class ProducerSettings(BaseModel):
    linger_ms: int = Field(default=5, ge=0)
    max_batch_size: int = Field(default=262_144, ge=1024)
    compression: Literal["gzip", "lz4", "zstd", "snappy"] | None = None
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    idempotent: bool = True


class IMCorrectWorkerSettings(BaseModel):
    """The streaming IMCorrect worker: model, micro-batching, snapshots."""

    mapping: Literal["ease", "itemknn", "gfcf", "itemknn-topk"] = "ease"
    l2: float = Field(default=200.0, gt=0)
    shrink: float = Field(default=0.0, ge=0)
    #: neighbours per item of the sparse ``itemknn-topk`` mapping (large catalogues)
    k: int = Field(default=100, ge=1)
    #: cap on the dense mappings' n×n arrays; None: half the machine's memory
    memory_budget_gb: float | None = Field(default=None, gt=0)
    batch_max_events: int = Field(default=2000, ge=1)
    batch_max_wait_ms: int = Field(default=200, ge=1)
    snapshot_interval_s: float = Field(default=30.0, gt=0)
    dedup_window: int = Field(default=2_000_000, ge=1)
    group_id: str = "lethe-imcorrect"
    #: answer ``rec-requests`` itself; turn off where the scoring agent answers them
    answer_requests: bool = True


class TrainerSettings(BaseModel):
    """The trainer consumer: micro-batched LLMD4Rec rounds, checkpoints, exports."""

    llm: str = "tiny"  # "tiny" (random tiny Llama), "smollm2:N" (first N layers) or "smollm2"
    max_items: int = Field(default=4096, ge=2)  # item vocabulary capacity of the exported model
    max_len: int = Field(default=50, ge=2)
    hidden: int = Field(default=64, ge=8)
    batch_events: int = Field(default=20_000, ge=1)  # a round after this many new events …
    batch_wait_s: float = Field(default=30.0, gt=0)  # … or this long after the first new one
    min_users: int = Field(default=50, ge=1)  # no training before this many users
    replay_users: int = Field(default=512, ge=1)  # sequences per round: new + sampled older
    steps_per_round: int = Field(default=8, ge=1)
    pretrain_steps: int = Field(default=300, ge=1)  # bounded warm-up of both models
    retrain_rounds: int = Field(default=1, ge=0)  # full passes after a forget's warm-up
    valid_users: int = Field(default=500, ge=1)  # rolling validation sample
    regression_tolerance: float = Field(default=0.002, ge=0)  # NDCG@10, absolute
    keep_checkpoints: int = Field(default=6, ge=1)
    #: T₁ = T₂ = 4, w₁ = w₂ = 0.5: best validation NDCG@10 of a T ∈ {1, 2, 4} × w ∈ {0.5, 1}
    #: sweep on ML-100K (benchmarks/results/distill-sweep-ml-100k-h200.jsonl)
    t1: float = Field(default=4.0, gt=0)
    t2: float = Field(default=4.0, gt=0)
    w1: float = Field(default=0.5, ge=0)
    w2: float = Field(default=0.5, ge=0)
    seed: int = 0
    threads: int = Field(default=0, ge=0)  # torch CPU threads, 0 = torch's default
    dedup_window: int = Field(default=2_000_000, ge=1)


class ScorerSettings(BaseModel):
    """The scoring agent: dynamic batching, ONNX model, fusion with IMCorrect."""

    max_batch: int = Field(default=64, ge=1)
    #: 0: answer whatever has arrived at once; batches still form from requests that arrive
    #: while the previous batch is scored (measured: p50 15–22 ms vs 25–29 ms at 2–6 ms)
    max_wait_ms: float = Field(default=0.0, ge=0)
    #: weight of the (standardised) IMCorrect scores added to SASRec's; chosen on validation
    #: by ``python -m benchmarks.fusion`` (ML-100K)
    fusion_weight: float = Field(default=0.5, ge=0)
    imcorrect_reload_s: float = Field(default=2.0, gt=0)
    snapshot_interval_s: float = Field(default=30.0, gt=0)
    prefer_gpu: bool = True
    #: onnxruntime intra-op threads (0 = one per core); batches are small, so one thread
    #: that does not spin leaves the cores to Kafka and Python
    threads: int = Field(default=1, ge=0)
    #: the longest the broker holds an empty fetch of ``rec-requests``. A request that
    #: arrives ends the wait at once (fetch.min.bytes 1), so this only paces idle fetches
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    #: batches up to this size are scored on the event loop: handing a millisecond of work
    #: to a thread costs more (wake-ups, and the GIL's 5 ms switch interval while the loop
    #: runs) than the loop loses; larger batches go to a thread so fetches keep flowing
    inline_max_batch: int = Field(default=8, ge=0)
    #: librdkafka's linger for answers. A batch's answers are queued together and leave in
    #: one produce request at 0 too; more holds every answer back up to that long
    reply_linger_ms: float = Field(default=0.0, ge=0)


class LetheSettings(BaseSettings):
    """All settings of a Lethe process."""

    model_config = SettingsConfigDict(
        env_prefix="LETHE_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP", "LETHE_BOOTSTRAP_SERVERS", "bootstrap_servers"
        ),
    )
    client_id: str = "lethe"
    topic_prefix: str = "lethe."
    state_dir: Path = Path("./var/state")
    metrics_port: int = Field(default=9464, ge=-1, le=65535)  # 0: any free port, -1: off
    metrics_host: str = "127.0.0.1"
    security: SecuritySettings = SecuritySettings()
    limits: LimitSettings = LimitSettings()
    topics: TopicSettings = TopicSettings()
    producer: ProducerSettings = ProducerSettings()
    imcorrect: IMCorrectWorkerSettings = IMCorrectWorkerSettings()
    trainer: TrainerSettings = TrainerSettings()
    scorer: ScorerSettings = ScorerSettings()
    #: where exported ONNX models are written (shared with the scorer)
    model_dir: Path = Path("./var/models")
    log_json: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("LETHE_CONFIG")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


def load_settings(**overrides: object) -> LetheSettings:
    """Read settings from the environment (and ``LETHE_CONFIG``), with explicit overrides on top."""
    return LetheSettings(**overrides)
