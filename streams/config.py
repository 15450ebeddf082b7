"""Runtime configuration as data: environment variables, an optional TOML file, defaults.

Every Lethe process reads one :class:`LetheSettings`. Environment variables use the
``LETHE_`` prefix (``LETHE_TOPIC_PREFIX``, ``LETHE_STATE_DIR`` …), except the broker
address, which also answers to the conventional ``KAFKA_BOOTSTRAP``. Nested sections use
``__`` (``LETHE_TOPICS__INTERACTIONS_RETENTION_MS``). ``LETHE_CONFIG`` names a TOML file whose
values sit below the environment in priority.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from models.imcorrect import (
    EASEConfig,
    GFCFConfig,
    ItemKNNConfig,
    ItemKNNTopKConfig,
    MappingConfig,
)
from models.imcorrect.model import MappingName
from models.llmd4rec_config import ColdInitConfig, OnlineConfig

DAY_MS = 24 * 3600 * 1000
#: the shortest hash key or model-update key accepted from the settings
MIN_SECRET_LENGTH = 16


class _Section(BaseModel):
    """A settings section: a misspelt key (``LETHE_IMCORRECT__BATCH_MAX_EVENT``) is refused
    rather than ignored, which would run the default without a word."""

    # a refused value is not echoed: it may be a password (SASL, keys)
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class SecuritySettings(_Section):
    """How every client reaches the brokers (translated by :mod:`streams.kafka_config` for
    aiokafka and librdkafka); secrets are never logged (SecretStr). See docs/security.md."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: PLAIN when a SASL protocol names none
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: CA bundle (PEM) that signed the brokers' certificates; the system store when unset
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: allow SASL PLAIN over SASL_PLAINTEXT (the password crosses the network in clear
    #: text): only where the network itself is trusted or encrypted (a service mesh)
    allow_cleartext_password: bool = False

    @model_validator(mode="after")
    def _usable(self) -> SecuritySettings:
        # Refused here, when the settings are read, rather than as a connection that never
        # authenticates: each of these would otherwise surface as a retry loop or a timeout.
        sasl = self.protocol.startswith("SASL")
        if self.sasl_mechanism == "OAUTHBEARER":
            raise ValueError(
                "sasl_mechanism OAUTHBEARER is not supported: Lethe has no token provider "
                "(neither its aiokafka nor its librdkafka clients are given one); use "
                "SCRAM-SHA-512 or SCRAM-SHA-256 (docs/security.md)"
            )
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"protocol {self.protocol} needs sasl_username and sasl_password "
                "(LETHE_SECURITY__SASL_USERNAME, LETHE_SECURITY__SASL_PASSWORD)"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile is set without ssl_certfile (the client certificate)")
        # credentials or certificates under a protocol that ignores them: the clients would
        # connect unauthenticated or in clear text without a word
        given_sasl = self.sasl_mechanism or self.sasl_username or self.sasl_password
        if given_sasl and not sasl:
            raise ValueError(
                f"SASL settings are given but protocol is {self.protocol}, which ignores them: "
                "set LETHE_SECURITY__PROTOCOL=SASL_SSL (docs/security.md)"
            )
        given_tls = self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        if given_tls and not self.protocol.endswith("SSL"):
            raise ValueError(
                f"TLS files are given but protocol is {self.protocol}, which connects in clear "
                "text: set LETHE_SECURITY__PROTOCOL=SSL or SASL_SSL (docs/security.md)"
            )
        cleartext = self.protocol == "SASL_PLAINTEXT" and self.sasl_mechanism in (None, "PLAIN")
        if cleartext and not self.allow_cleartext_password:
            raise ValueError(
                "SASL PLAIN over SASL_PLAINTEXT sends the password in clear text: use "
                "SASL_SSL or a SCRAM mechanism, or set allow_cleartext_password where the "
                "network is trusted (docs/security.md)"
            )
        return self


class LimitSettings(_Section):
    """Bounds applied to every incoming message before it reaches a model."""

    max_id_length: int = Field(default=128, ge=1, le=4096)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    max_item_ids_per_deletion: int = Field(default=10_000, ge=1)
    max_k: int = Field(default=1000, ge=1)
    #: input events stamped later than the wall clock plus this are refused (dead-lettered):
    #: a producer's clock far ahead must not re-learn a forgotten subject (docs/privacy.md)
    max_future_skew_ms: int = Field(default=300_000, ge=0)


class TopicSettings(_Section):
    """Partitions, retention and cleanup for every topic Lethe owns.

    ``erasure_deadline_ms`` is the one bound on how long a topic that carries user data
    (interactions, deletions, rec-requests, recommendations, dead-letters) keeps it: each of
    their retentions is capped at it when topics are created (docs/privacy.md, "Retention").
    Receipts carry no raw ids and are kept forever as proof of erasure.
    """

    partitions: int = Field(default=4, ge=1)
    #: unset: 3 where the cluster has the brokers for it, else one per broker; a number is
    #: asked for as it is (the broker refuses more replicas than it has)
    replication_factor: int | None = Field(default=None, ge=1)
    #: unset: 2 with three or more replicas, else 1, so one broker may be lost
    min_insync_replicas: int | None = Field(default=None, ge=1)
    erasure_deadline_ms: int = Field(default=30 * DAY_MS, ge=60_000)
    interactions_retention_ms: int = Field(default=30 * DAY_MS, ge=-1)
    deletions_retention_ms: int = Field(default=30 * DAY_MS, ge=-1)
    requests_retention_ms: int = Field(default=1 * DAY_MS, ge=-1)
    recommendations_retention_ms: int = Field(default=1 * DAY_MS, ge=-1)
    receipts_retention_ms: int = Field(default=-1, ge=-1)  # kept forever: proof of erasure
    dead_letters_retention_ms: int = Field(default=30 * DAY_MS, ge=-1)
    #: IMCorrect replicas' heartbeats (no user data): only the newest seconds are read
    heartbeats_retention_ms: int = Field(default=3_600_000, ge=60_000)


class ProducerSettings(_Section):
    linger_ms: int = Field(default=5, ge=0)
    max_batch_size: int = Field(default=262_144, ge=1024)
    compression: Literal["gzip", "lz4", "zstd", "snappy"] | None = None
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    idempotent: bool = True


def _over_default(default: object, value: object) -> object:
    """A partial section (one env variable, one TOML key) changes only the fields it names:
    the others keep the settings' default instance, which may differ from the config class's
    own defaults (the trainer reads item text; ``OnlineConfig`` alone does not)."""
    if isinstance(value, dict) and dataclasses.is_dataclass(default):
        _refuse_unknown(type(default), value)
        return _deep_merge(dataclasses.asdict(default), value)
    return value


def _refuse_unknown(config_class: type, value: dict, where: str = "") -> None:
    """A misspelt key inside a model's config is refused, as in every other section."""
    known = {f.name: f for f in dataclasses.fields(config_class)}
    for key, item in value.items():
        if key not in known:
            raise ValueError(f"{where}{key} is not a field of {config_class.__name__}")
        nested = getattr(config_class(), key) if isinstance(item, dict) else None
        if dataclasses.is_dataclass(nested):
            _refuse_unknown(type(nested), item, f"{where}{key}.")


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _refuse_moved(data: object, section: str, moved: dict[str, tuple[str, ...]]) -> object:
    """Refuse settings that were flat fields once and now live in a model's own config:
    ignoring them (extra fields are ignored) would silently run the defaults."""
    if isinstance(data, dict):
        for name, places in moved.items():
            if name in data:
                where = " or ".join(f"LETHE_{section.upper()}__{p.upper()}" for p in places)
                raise ValueError(f"{section}.{name} moved into a model's own config: {where}")
    return data


_IMCORRECT_MOVED = {
    "l2": ("ease__l2",),
    "shrink": ("itemknn__shrink", "itemknn_topk__shrink"),
    "k": ("itemknn_topk__k",),
    "reserve": ("itemknn_topk__reserve",),
}
_TRAINER_MOVED = {
    **{
        name: (f"model__{name}",)
        for name in (
            "llm",
            "max_items",
            "max_len",
            "hidden",
            "replay_users",
            "steps_per_round",
            "pretrain_steps",
            "valid_users",
            "seed",
        )
    },
    **{name: (f"model__distill__{name}",) for name in ("t1", "t2", "w1", "w2")},
    "item_text": ("model__text_repr",),
    **{f"cold_{name}": (f"cold__{name}",) for name in ("min_count", "ridge", "scale")},
}


class IMCorrectWorkerSettings(_Section):
    """The streaming IMCorrect worker: model, micro-batching, snapshots."""

    mapping: MappingName = "ease"
    #: each mapping's own config (models.imcorrect), e.g. LETHE_IMCORRECT__EASE__L2 or
    #: LETHE_IMCORRECT__ITEMKNN_TOPK__K; only the one ``mapping`` names is used
    ease: EASEConfig = EASEConfig()
    itemknn: ItemKNNConfig = ItemKNNConfig()
    gfcf: GFCFConfig = GFCFConfig()
    itemknn_topk: ItemKNNTopKConfig = ItemKNNTopKConfig()
    #: cap on the dense mappings' n×n arrays; None: half the machine's memory
    memory_budget_gb: float | None = Field(default=None, gt=0)
    #: a batch takes whatever is already fetched, up to this many events: small when the
    #: worker keeps up, large while it drains a backlog (one correction per batch)
    batch_max_events: int = Field(default=1_000_000, ge=1)
    batch_max_wait_ms: int = Field(default=200, ge=1)
    snapshot_interval_s: float = Field(default=30.0, gt=0)
    #: how often a periodic snapshot also writes the dense mapping (otherwise it is rebuilt
    #: from X on start); snapshots taken for a receipt never write it
    mapping_persist_interval_s: float = Field(default=600.0, gt=0)
    dedup_window: int = Field(default=2_000_000, ge=1)
    group_id: str = "lethe-imcorrect"
    #: answer ``rec-requests`` itself; turn off where the scoring agent answers them
    answer_requests: bool = True
    #: hot replicas (docs/scale-out.md): every replica applies the change log one elected
    #: writer orders; each keeps its own state folder ``imcorrect-<replica_id>``
    replicated: bool = False
    replica_id: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,40}$")
    #: a replica silent this long is no longer waited for by receipts
    replica_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=0.5, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired_fields(cls, data: object) -> object:
        return _refuse_moved(data, "imcorrect", _IMCORRECT_MOVED)

    @field_validator("ease", "itemknn", "gfcf", "itemknn_topk", mode="before")
    @classmethod
    def _keep_section_defaults(cls, value: object, info: ValidationInfo) -> object:
        return _over_default(cls.model_fields[info.field_name].default, value)

    @model_validator(mode="after")
    def _replicas_decide_alike(self) -> IMCorrectWorkerSettings:
        """Replicas must refuse the same items and tell their heartbeats apart."""
        if not self.replicated:
            return self
        if not self.replica_id:
            raise ValueError(
                "imcorrect.replicated needs an imcorrect.replica_id unique to each replica "
                "(receipts wait for every id they hear; two replicas with one id look like one)"
            )
        if self.mapping != "itemknn-topk" and self.memory_budget_gb is None:
            raise ValueError(
                "imcorrect.replicated with a dense mapping needs imcorrect.memory_budget_gb, "
                "the same on every replica: the default (half of each machine's memory) "
                "would let replicas on different machines refuse different new items"
            )
        return self

    def mapping_config(self) -> MappingConfig:
        """The config of the mapping the worker runs (its section is named after it)."""
        return getattr(self, self.mapping.replace("-", "_"))


class TrainerSettings(_Section):
    """The trainer consumer: micro-batched LLMD4Rec rounds, checkpoints, exports."""

    #: the online LLMD4Rec model (models.llmd4rec_config.OnlineConfig), its distillation in
    #: ``model.distill``: LETHE_TRAINER__MODEL__LLM, __MODEL__MAX_ITEMS, __MODEL__DISTILL__T1 …
    #: ``model.text_repr``: item text (``items`` topic, ``catalogue_file``) for the LLM side,
    #: and text-mapped SASRec rows (``cold``) in every export (docs/distillation.md)
    model: OnlineConfig = OnlineConfig(text_repr=True)
    #: SASRec rows mapped from text for items with fewer than ``cold.min_count`` training
    #: events (models.coldinit), blended with the trained row below that count
    cold: ColdInitConfig = ColdInitConfig(min_count=5, blend=True)
    batch_events: int = Field(default=20_000, ge=1)  # a round after this many new events …
    batch_wait_s: float = Field(default=30.0, gt=0)  # … or this long after the first new one
    min_users: int = Field(default=50, ge=1)  # no training before this many users
    retrain_rounds: int = Field(default=1, ge=0)  # full passes after a forget's warm-up
    regression_tolerance: float = Field(default=0.002, ge=0)  # NDCG@10, absolute
    keep_checkpoints: int = Field(default=6, ge=1)
    threads: int = Field(default=0, ge=0)  # torch CPU threads, 0 = torch's default
    dedup_window: int = Field(default=2_000_000, ge=1)
    #: records one runtime step reads at most, and how long it waits for the first one
    #: (a round due by time waits at most this long for the step to end)
    batch_max_events: int = Field(default=5000, ge=1)
    batch_max_wait_ms: float = Field(default=500.0, ge=0)
    #: an idle trainer rewrites nothing; rounds and forgets snapshot when they announce
    snapshot_interval_s: float = Field(default=30.0, gt=0)
    #: JSONL of ItemMetadata records, or a dataset's ``.item`` file; read at every start
    catalogue_file: Path | None = None
    #: texts read from ``items`` kept in the state file at most: beyond, those of items
    #: without a row go, oldest ``ts`` first (a large catalogue belongs in ``catalogue_file``,
    #: which is never copied into the state)
    max_item_texts: int = Field(default=50_000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired_fields(cls, data: object) -> object:
        return _refuse_moved(data, "trainer", _TRAINER_MOVED)

    @field_validator("model", "cold", mode="before")
    @classmethod
    def _keep_section_defaults(cls, value: object, info: ValidationInfo) -> object:
        return _over_default(cls.model_fields[info.field_name].default, value)


class ScorerSettings(_Section):
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
    #: event ids remembered so that a redelivered event is not stored twice
    dedup_window: int = Field(default=200_000, ge=1)
    #: the newest interactions kept per user: SASRec's input and the scorer's own part of
    #: ``exclude_seen`` (what IMCorrect holds of the user is banned too). Bounds the state
    #: file, which is rewritten at every snapshot; a served model with a longer ``max_len``
    #: raises it
    max_history: int = Field(default=1000, ge=1)
    prefer_gpu: bool = True
    #: onnxruntime intra-op threads (0 = one per core); batches are small, so one thread
    #: that does not spin leaves the cores to Kafka and Python
    threads: int = Field(default=1, ge=0)
    #: the longest the broker holds an empty fetch of ``rec-requests``. A request that
    #: arrives ends the wait at once (fetch.min.bytes 1), so this only paces idle fetches
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    #: the consumer group replicas share ``rec-requests`` through (default
    #: ``<client_id>-scorer-<topic_prefix>``): a request is answered by its partition's owner
    group_id: str | None = None
    #: names this replica's own state folder (``scorer-<id>``; default ``scorer``): replicas
    #: on one shared volume each keep their sequences and offsets apart
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: input records (interactions, deletions, announcements) applied between two looks at
    #: the requests: bounds how long a request waits behind the state side
    state_batch_max_events: int = Field(default=500, ge=1)
    #: how long an idle scorer waits for a request before it looks at its input again
    idle_wait_ms: float = Field(default=20.0, ge=0)
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
        hide_input_in_errors=True,
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP", "LETHE_BOOTSTRAP_SERVERS", "bootstrap_servers"
        ),
    )
    client_id: str = "lethe"
    #: a worker whose state folder is in use waits for it (a standby on a shared volume)
    #: instead of exiting; it takes over from the newest snapshot when the holder dies
    standby: bool = False
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
    #: key of the keyed hashes in tombstones, dedup windows and receipts (``LETHE_HASH_KEY``);
    #: unset: a 0600 key file, ``hash_key_file`` or ``<state_dir>/keys/hash.key``
    hash_key: SecretStr | None = None
    #: earlier hash keys, still honoured on lookups after a rotation (docs/privacy.md)
    hash_keys_retired: list[SecretStr] = []
    hash_key_file: Path | None = None
    #: shared secret of the HMAC-SHA256 tag on ``model-updates`` (``LETHE_MODEL_UPDATE_KEY``);
    #: the trainer signs, the scorer refuses anything whose tag does not verify
    model_update_key: SecretStr | None = None

    @field_validator("hash_key", "model_update_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # an empty or short secret (``${VAR}`` of an unset variable in compose) would let
        # anyone sign model announcements or reverse the keyed hashes of ids
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"{info.field_name} must be at least {MIN_SECRET_LENGTH} characters "
                "(unset it to use a generated key file; docs/security.md)"
            )
        return value

    @field_validator("hash_keys_retired")
    @classmethod
    def _no_empty_retired_key(cls, values: list[SecretStr]) -> list[SecretStr]:
        # an unset ${VAR} in compose: a retired key nobody can have meant
        if any(not v.get_secret_value() for v in values):
            raise ValueError("a retired hash key is empty")
        return values

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


def hash_key_path(settings: LetheSettings) -> Path:
    """Where the hash key file lives (used when ``hash_key`` is not set)."""
    return settings.hash_key_file or Path(settings.state_dir) / "keys" / "hash.key"


def load_settings(**overrides: object) -> LetheSettings:
    """Read settings from the environment (and ``LETHE_CONFIG``), with explicit overrides on top."""
    return LetheSettings(**overrides)
