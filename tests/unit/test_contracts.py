"""Every contract rejects malformed input with a message that names the field."""

from __future__ import annotations

import json

import pytest

from streams.config import LimitSettings
from streams.contracts import (
    CONTRACTS,
    ContractError,
    DeletionReceipt,
    DeletionRequest,
    InteractionEvent,
    ModelUpdate,
    ModelVersions,
    Recommendation,
    RecRequest,
    ScoredItem,
    decode,
    recommendation_bytes,
)
from streams.schemas import SCHEMA_DIR, render_schemas

GOOD_INTERACTION = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000_000}


def _bad(contract, value, limits=LimitSettings()) -> ContractError:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    with pytest.raises(ContractError) as info:
        decode(contract, raw, limits)
    return info.value


def test_good_interaction_round_trips():
    event = decode(InteractionEvent, json.dumps({**GOOD_INTERACTION, "kind": "click", "value": 2}))
    assert event.kind == "click" and event.value == 2.0
    assert decode(InteractionEvent, event.to_bytes()) == event


def test_not_json_is_rejected():
    err = _bad(InteractionEvent, b"{not json")
    assert "not JSON" in str(err) and err.field == "message"


def test_not_utf8_is_rejected():
    assert "not UTF-8" in str(_bad(InteractionEvent, b"\xff\xfe{}"))


def test_json_that_is_not_an_object_is_rejected():
    assert "expected a JSON object" in str(_bad(InteractionEvent, b"[1, 2]"))


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id", "ts"])
def test_missing_field_is_named(field):
    value = {k: v for k, v in GOOD_INTERACTION.items() if k != field}
    err = _bad(InteractionEvent, value)
    assert err.field == field and field in str(err) and "required" in str(err).lower()


@pytest.mark.parametrize(
    "field,value",
    [("ts", "1700000000000"), ("ts", 1.5), ("user_id", 17), ("value", "high"), ("kind", "like")],
)
def test_wrong_type_is_named(field, value):
    err = _bad(InteractionEvent, {**GOOD_INTERACTION, field: value})
    assert err.field == field and str(err).startswith(f"{field}:")


def test_negative_timestamp_is_rejected():
    assert _bad(InteractionEvent, {**GOOD_INTERACTION, "ts": -1}).field == "ts"


def test_oversize_id_is_rejected_with_the_configured_limit():
    limits = LimitSettings(max_id_length=16)
    err = _bad(InteractionEvent, {**GOOD_INTERACTION, "user_id": "u" * 17}, limits)
    assert err.field == "user_id" and "limit of 16" in str(err)
    decode(InteractionEvent, json.dumps({**GOOD_INTERACTION, "user_id": "u" * 16}), limits)


def test_control_characters_in_ids_are_rejected():
    assert _bad(InteractionEvent, {**GOOD_INTERACTION, "item_id": "a\nb"}).field == "item_id"


def test_oversize_message_is_rejected_before_parsing():
    limits = LimitSettings(max_message_bytes=1024)
    err = _bad(InteractionEvent, {**GOOD_INTERACTION, "pad": "x" * 2000}, limits)
    assert err.field == "message" and "max_message_bytes" in str(err)


def test_non_finite_value_is_rejected():
    assert _bad(
        InteractionEvent, b'{"event_id":"e","user_id":"u","item_id":"i","ts":1,"value":NaN}'
    )


@pytest.mark.parametrize("k", [0, -3, 1001])
def test_k_out_of_range_is_rejected(k):
    err = _bad(RecRequest, {"request_id": "r", "user_id": "u", "k": k, "ts": 1})
    assert err.field == "k"


def test_configured_max_k_is_enforced():
    err = _bad(
        RecRequest, {"request_id": "r", "user_id": "u", "k": 50, "ts": 1}, LimitSettings(max_k=20)
    )
    assert "max_k" in str(err)


def test_unknown_deletion_scope_is_rejected():
    err = _bad(
        DeletionRequest,
        {"request_id": "r", "scope": "everything", "user_id": "u", "reason": "privacy", "ts": 1},
    )
    assert err.field == "scope" and "user" in str(err)


@pytest.mark.parametrize(
    "value,needle",
    [
        ({"scope": "user"}, "user_id"),
        ({"scope": "item"}, "item_id"),
        ({"scope": "interactions", "user_id": "u"}, "item_ids"),
        ({"scope": "interactions", "user_id": "u", "item_ids": []}, "item_ids"),
    ],
)
def test_deletion_scope_needs_its_fields(value, needle):
    err = _bad(DeletionRequest, {"request_id": "r", "reason": "privacy", "ts": 1, **value})
    assert needle in str(err)


def test_unknown_reason_is_rejected():
    err = _bad(
        DeletionRequest,
        {"request_id": "r", "scope": "user", "user_id": "u", "reason": "because", "ts": 1},
    )
    assert err.field == "reason"


def test_deletion_keys_follow_the_design():
    item = DeletionRequest(request_id="r", scope="item", item_id="i9", reason="utility", ts=1)
    user = DeletionRequest(request_id="r", scope="user", user_id="u9", reason="privacy", ts=1)
    assert item.kafka_key() == "item:i9" and user.kafka_key() == "u9"


def test_model_update_needs_a_sha256():
    err = _bad(
        ModelUpdate,
        {"kind": "crm-onnx", "version": "v1", "path": "/m.onnx", "sha256": "abc", "ts": 1},
    )
    assert err.field == "sha256"


def test_outbound_records_validate():
    rec = Recommendation(
        request_id="r",
        user_id="u",
        items=[{"item_id": "i", "score": 0.5}],
        model={"imcorrect": "v3"},
        ts=1,
    )
    assert decode(Recommendation, rec.to_bytes()) == rec
    receipt = DeletionReceipt(
        request_id="r", status="applied", scope="user", removed={"interactions": 3}, applied_at=2
    )
    assert decode(DeletionReceipt, receipt.to_bytes()) == receipt


def test_schema_files_match_the_contracts():
    rendered = render_schemas()
    assert set(rendered) == {f"{t}.schema.json" for t in CONTRACTS}
    for name, text in rendered.items():
        on_disk = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert on_disk == text, f"{name} is stale: run `lethe schemas`"


@pytest.mark.parametrize(
    "versions",
    [ModelVersions(crm="12", imcorrect="40"), ModelVersions(imcorrect="3"), ModelVersions()],
)
def test_fast_recommendation_encoding_equals_the_contract(versions):
    items = [("i1", 2.5), ("film «é»", -0.1), ("i3", 1e-7), ("i4", 123456789.125), ("i5", 0.0)]
    fast = recommendation_bytes("r-1", "usér", items, versions, 1_700_000_000_000, "personal")
    rec = Recommendation(
        request_id="r-1",
        user_id="usér",
        items=[ScoredItem(item_id=i, score=s) for i, s in items],
        model=versions,
        ts=1_700_000_000_000,
        strategy="personal",
    )
    assert decode(Recommendation, fast) == rec
    assert json.loads(fast) == json.loads(rec.to_bytes())
    assert list(json.loads(fast)) == list(json.loads(rec.to_bytes()))  # same field order


def test_the_sdk_refuses_what_the_configured_limits_would_dead_letter():
    import asyncio

    from streams.client import LetheProducer
    from streams.config import LetheSettings

    settings = LetheSettings(limits={"max_id_length": 8})
    request = DeletionRequest(
        request_id="r1", scope="user", user_id="a-user-id-of-20-chars", reason="privacy", ts=1
    )
    with pytest.raises(ContractError, match="user_id"):
        # a worker would dead-letter it and no receipt would ever come
        asyncio.run(LetheProducer(settings).send("deletions", "k", request))


def test_dead_letter_metric_labels_are_the_contracts_own_field_names():
    from streams.contracts import field_label

    # a bad entry deep in a list names its index; a producer's odd text names itself
    too_long = "x" * 200
    with pytest.raises(ContractError) as refused:
        decode(
            DeletionRequest,
            json.dumps(
                {
                    "request_id": "r",
                    "scope": "interactions",
                    "user_id": "u",
                    "item_ids": ["a"] * 9876 + [too_long],
                    "reason": "privacy",
                    "ts": 1,
                }
            ),
        )
    assert refused.value.field == "item_ids.9876"
    assert field_label(refused.value.field) == "item_ids"
    assert field_label("user_id") == "user_id"
    for odd in (None, "", "zq-anything-a-producer-wrote", "9876.item_ids"):
        assert field_label(odd) == "message"
