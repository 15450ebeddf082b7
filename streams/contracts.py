"""Typed event contracts for every Lethe topic (README "Architecture").

All values are UTF-8 JSON objects. :func:`decode` is the one door in: it bounds the message
size, parses, validates strictly (JSON types only: ``"5"`` is not an int) and turns every
failure into a :class:`ContractError` whose message names the offending field. Ids are opaque
strings whose length is bounded by :class:`streams.config.LimitSettings`; the bound travels in
the pydantic validation context so it stays configuration, not a constant.

Unknown fields are ignored (a newer producer may add fields) but never passed on.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from streams.config import LimitSettings

DEFAULT_LIMITS = LimitSettings()


class ContractError(ValueError):
    """A message that does not satisfy its contract. ``field`` names the first bad field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _limits(info: ValidationInfo) -> LimitSettings:
    ctx = info.context or {}
    return ctx.get("limits", DEFAULT_LIMITS)


#: control characters and lone surrogates (which cannot be encoded as UTF-8 again)
_BAD_ID_CHARS = re.compile(r"[\x00-\x1f\ud800-\udfff]")


def id_problem(value: str, limit: int) -> str | None:
    """Why ``value`` is not an acceptable id (None when it is); shared with the runtime's
    fast decoder so both paths give the same reason."""
    if len(value) > limit:
        return f"id is {len(value)} characters, longer than the limit of {limit}"
    if value != value.strip() or _BAD_ID_CHARS.search(value):
        return "id must not contain control characters or surrounding whitespace"
    return None


def newest_accepted_ts(limits: LimitSettings, now_ms: int | None = None) -> int:
    """The latest event timestamp accepted now: the wall clock plus the configured skew."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms + limits.max_future_skew_ms


def future_ts_problem(ts: int) -> str:
    return f"ts: {ts} is later than the wall clock plus the allowed skew"


def _bounded_id(value: str, info: ValidationInfo) -> str:
    problem = id_problem(value, _limits(info).max_id_length)
    if problem:
        raise ValueError(problem)
    return value


Id = Annotated[str, Field(min_length=1), AfterValidator(_bounded_id)]
#: the latest timestamp a contract accepts (the year 5138)
MAX_EPOCH_MS = 10**14
EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS, description="Unix epoch milliseconds")]


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]


class Contract(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        """Serialise as compact UTF-8 JSON, leaving out unset optional fields."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")


class InteractionEvent(Contract):
    """One user–item interaction (topic ``interactions``, key ``user_id``)."""

    event_id: Id
    user_id: Id
    item_id: Id
    ts: EpochMs
    kind: Literal["view", "click", "cart", "purchase", "rating"] = "view"
    value: FiniteFloat | None = None


#: bounds of item metadata: what the LLM side reads of an item is its first tokens, so these
#: only keep a record's size sane (the message size limit still applies to the whole)
MAX_TITLE_LENGTH = 512
MAX_ITEM_TEXT_LENGTH = 4096
MAX_GENRES = 32
MAX_GENRE_LENGTH = 64

#: control characters (C0 but tab, newline and carriage return; DEL; C1, which terminals
#: read as escapes), and lone surrogates
_BAD_TEXT_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: and in a one-line label also line and paragraph separators and the bidirectional
#: embeddings, overrides and isolates (which make a title display as other text)
_BAD_LABEL_CHARS = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _label(value: str) -> str:
    """A one-line label (title, genre): no control characters, not blank."""
    if _BAD_LABEL_CHARS.search(value):
        raise ValueError("must not contain control characters")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _free_text(value: str | None) -> str | None:
    if value is not None and _BAD_TEXT_CHARS.search(value):
        raise ValueError("must not contain control characters other than tab and newline")
    return value


Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE_LENGTH), AfterValidator(_label)]
Genre = Annotated[str, Field(min_length=1, max_length=MAX_GENRE_LENGTH), AfterValidator(_label)]


class ItemMetadata(Contract):
    """What an item is (topic ``items``, key ``item_id``; compacted: the newest record per
    item is kept). The trainer's LLM side reads it as text, and an exported SASRec gives a
    new item a row mapped from it (docs/distillation.md, "New items on the stream").

    Not personal data: no field may name a user (docs/privacy.md).
    """

    item_id: Id
    title: Title
    ts: EpochMs
    year: Annotated[int, Field(ge=0, le=9999)] | None = None
    genres: Annotated[list[Genre], Field(max_length=MAX_GENRES)] = []
    text: (
        Annotated[str, Field(max_length=MAX_ITEM_TEXT_LENGTH), AfterValidator(_free_text)] | None
    ) = None

    def kafka_key(self) -> str:
        return self.item_id


class DeletionRequest(Contract):
    """A right-to-be-forgotten request (topic ``deletions``).

    ``scope="user"`` needs ``user_id``; ``scope="item"`` needs ``item_id`` (key ``item:<id>``);
    ``scope="interactions"`` needs ``user_id`` and a non-empty ``item_ids``.
    """

    request_id: Id
    scope: Literal["user", "item", "interactions"]
    reason: Literal["privacy", "security", "utility"]
    ts: EpochMs
    user_id: Id | None = None
    item_id: Id | None = None
    item_ids: list[Id] | None = None

    @model_validator(mode="after")
    def _scope_fields(self, info: ValidationInfo) -> DeletionRequest:
        if self.scope in ("user", "interactions") and self.user_id is None:
            raise ValueError(f"user_id is required for scope '{self.scope}'")
        if self.scope == "item" and self.item_id is None:
            raise ValueError("item_id is required for scope 'item'")
        if self.scope == "interactions":
            if not self.item_ids:
                raise ValueError("item_ids must be a non-empty list for scope 'interactions'")
            if len(self.item_ids) > _limits(info).max_item_ids_per_deletion:
                raise ValueError("item_ids has more entries than max_item_ids_per_deletion")
        return self

    def kafka_key(self) -> str:
        return f"item:{self.item_id}" if self.scope == "item" else str(self.user_id)


class RecRequest(Contract):
    """A request for the top-k items of a user (topic ``rec-requests``)."""

    request_id: Id
    user_id: Id
    k: Annotated[int, Field(ge=1, le=1000)]
    ts: EpochMs
    exclude_seen: bool = True

    @model_validator(mode="after")
    def _k_limit(self, info: ValidationInfo) -> RecRequest:
        if self.k > _limits(info).max_k:
            raise ValueError(f"k exceeds the configured max_k of {_limits(info).max_k}")
        return self


class ScoredItem(Contract):
    item_id: Id
    score: FiniteFloat


class ModelVersions(Contract):
    crm: str | None = None
    imcorrect: str | None = None


class Recommendation(Contract):
    """The answer to a :class:`RecRequest` (topic ``recommendations``)."""

    request_id: Id
    user_id: Id
    items: list[ScoredItem]
    model: ModelVersions
    ts: EpochMs
    strategy: Literal["personal", "popularity"] = "personal"


def recommendation_bytes(
    request_id: str,
    user_id: str,
    items: list[tuple[str, float]],
    versions: ModelVersions,
    ts: int,
    strategy: str,
) -> bytes:
    """``Recommendation(...).to_bytes()`` without building a dozen models per answer: the
    scorer's hot path (pydantic construction was a tenth of its per-request time). The
    caller vouches for the fields (ids from the validated catalogue, finite scores); a
    unit test keeps the two encodings equal."""
    body = {
        "request_id": request_id,
        "user_id": user_id,
        "items": [{"item_id": item, "score": score} for item, score in items],
        "model": {
            k: v
            for k, v in (("crm", versions.crm), ("imcorrect", versions.imcorrect))
            if v is not None
        },
        "ts": ts,
        "strategy": strategy,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ModelUpdate(Contract):
    """Announces a new model file (topic ``model-updates``, key = model name).

    ``path`` must resolve inside the model folder; absolute or relative to it.
    """

    kind: Literal["crm-onnx", "imcorrect"]
    version: Annotated[str, Field(min_length=1, max_length=128)]
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    metrics: dict[str, FiniteFloat] = {}
    trained_through: dict[str, int] = {}
    ts: EpochMs
    #: HMAC-SHA256 (hex) over the canonical content of the other fields, with the shared
    #: ``model_update_key`` (streams/model_auth.py); the scorer refuses a missing or wrong tag
    tag: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class RetainedCopy(Contract):
    """Somewhere the subject's data may still live after the receipt, and until when."""

    location: str  # a topic name, e.g. "lethe.interactions"
    until: EpochMs | None = None  # at the latest; None: no bound (kept until removed by hand)
    what: str = ""


class DeletionReceipt(Contract):
    """Proof that a deletion request was handled (topic ``deletion-receipts``).

    Receipts are kept forever, so they never carry a raw id: ``subject`` is the keyed hash
    (hex) of the subject (``user`` or ``item``), which ``lethe verify-erasure`` checks with
    the operator's key; ``state_digest`` is the sha256 of the model state the receipt refers
    to; ``retained_elsewhere`` says which logs may still hold the data and until when.
    """

    request_id: Id
    status: Literal["applied", "rejected", "neural-retrained"]
    scope: str
    removed: dict[str, int] = {}
    requested_at: EpochMs | None = None
    applied_at: EpochMs
    versions: dict[str, str] = {}
    detail: str = ""
    subject: Annotated[str, Field(pattern=r"^(user|item):[0-9a-f]{16}$")] | None = None
    state_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    retained_elsewhere: list[RetainedCopy] = []
    #: hot IMCorrect replicas that had applied the deletion when the receipt went out
    replicas: list[Annotated[str, Field(max_length=64)]] | None = None


class DeadLetter(Contract):
    """A message that failed validation, with where it came from and why."""

    source_topic: str
    source_partition: int
    source_offset: int
    error: str
    raw_value_b64: str
    key: str | None = None
    ts: EpochMs
    #: length of the original value; when ``truncated``, ``raw_value_b64`` holds its first
    #: bytes only and ``raw_sha256`` identifies the whole value
    raw_length: int | None = None
    raw_sha256: str | None = None
    truncated: bool = False


C = TypeVar("C", bound=Contract)


def field_label(field: str | None) -> str:
    """A metric label for a refused record's field: the top-level field when it is one a
    contract defines, else ``message``. Locations carry list indices (``item_ids.9876``)
    and whatever a producer wrote, which must not mint label values."""
    top = (field or "").split(".", 1)[0]
    return top if top in _contract_fields() else "message"


@functools.cache
def _contract_fields() -> frozenset[str]:
    names: set[str] = set()
    pending = list(Contract.__subclasses__())
    while pending:
        contract = pending.pop()
        names |= set(contract.model_fields)
        pending += contract.__subclasses__()
    return frozenset(names)


def describe_error(err: ValidationError) -> tuple[str, str | None]:
    """(message, field) of a validation error, without the offending value (which may be a
    raw id: these messages reach logs and dead letters)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    if loc is None:
        # Model-level checks name their field in the message itself.
        return msg, msg.split(" ", 1)[0] if msg else None
    return f"{loc}: {msg}", loc


def decode(
    contract: type[C],
    raw: bytes | str,
    limits: LimitSettings = DEFAULT_LIMITS,
    now_ms: int | None = None,
) -> C:
    """Parse and validate one message, raising :class:`ContractError` on any defect.

    Parameters
    ----------
    contract:
        The record type expected on the topic.
    raw:
        The message value as received.
    limits:
        Size and id-length bounds in force.
    now_ms:
        The time an input record's ``ts`` may lead by ``limits.max_future_skew_ms`` (the
        record's append time where the runtime knows it; default: the wall clock).
    """
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > limits.max_message_bytes:
        raise ContractError(
            f"message: {size} bytes exceeds max_message_bytes {limits.max_message_bytes}",
            "message",
        )
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as exc:
        raise ContractError(f"message: not UTF-8 ({exc.reason})", "message") from exc
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"message: not JSON ({exc.msg} at char {exc.pos})", "message") from exc
    except RecursionError:
        raise ContractError("message: JSON nested too deeply", "message") from None
    except ValueError as exc:  # e.g. an integer longer than Python's int-from-string limit
        raise ContractError(f"message: unreadable number ({exc})"[:300], "message") from None
    if not isinstance(obj, dict):
        raise ContractError(f"message: expected a JSON object, got {type(obj).__name__}", "message")
    try:
        event = contract.model_validate(obj, context={"limits": limits})
    except ValidationError as exc:
        message, field = describe_error(exc)
        raise ContractError(message, field) from None
    except RecursionError:
        raise ContractError("message: nested too deeply", "message") from None
    if contract in _INPUT_CONTRACTS and event.ts > newest_accepted_ts(limits, now_ms):
        raise ContractError(future_ts_problem(event.ts), "ts")
    return event


#: Contracts of input topics whose ``ts`` is bounded by the wall clock plus the skew.
_INPUT_CONTRACTS: tuple[type[Contract], ...] = (
    InteractionEvent,
    DeletionRequest,
    RecRequest,
    ItemMetadata,
)

#: Record type per logical topic name (without prefix).
CONTRACTS: dict[str, type[Contract]] = {
    "interactions": InteractionEvent,
    "deletions": DeletionRequest,
    "rec-requests": RecRequest,
    "recommendations": Recommendation,
    "model-updates": ModelUpdate,
    "deletion-receipts": DeletionReceipt,
    "dead-letters": DeadLetter,
    "items": ItemMetadata,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every contract, keyed by topic name."""
    out = {}
    for topic, contract in CONTRACTS.items():
        schema = contract.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"lethe {topic} ({contract.__name__})"
        out[topic] = schema
    return out
