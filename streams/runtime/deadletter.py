"""Dead letters that always fit: a refused record's value, key and reason, bounded in size.

A dead letter carries the raw value base64-encoded, which grows it by 4/3: the dead letter of
a value near the broker's limit would itself be refused, and a worker that cannot publish it
must not move its offset past it. So the raw value is cut to what fits, and the letter then
says how long the value was and gives its sha256, so the original can still be identified.
What fits is measured, not guessed: the letter's other fields as JSON (an escaped control
character takes six bytes) and the record's key count against the limit too.
"""

from __future__ import annotations

import base64
import hashlib
import time

from streams.contracts import ContractError, DeadLetter

#: room kept for the record's framing (headers, batch header, attributes)
_RECORD_OVERHEAD_BYTES = 512
MAX_ERROR_CHARS = 1000
MAX_KEY_BYTES = 1024


def bounded_key(key: bytes | None) -> bytes | None:
    """The key a dead letter is published with: the original, or its digest when long."""
    if key is None or len(key) <= MAX_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def dead_letter_bytes(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: ContractError | str,
    max_message_bytes: int,
) -> bytes:
    """The JSON value of the dead letter for one refused record.

    Parameters
    ----------
    topic, partition, offset:
        Where the record was read.
    key, value:
        The record's raw key and value.
    error:
        Why it was refused.
    max_message_bytes:
        The largest value the producer may send; the letter is kept within it.
    """
    raw = value or b""
    letter_key = bounded_key(key)

    def letter(kept: bytes, truncated: bool) -> DeadLetter:
        return DeadLetter(
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            error=str(error)[:MAX_ERROR_CHARS],
            raw_value_b64=base64.b64encode(kept).decode("ascii"),
            key=letter_key.decode("utf-8", "replace") if letter_key else None,
            ts=int(time.time() * 1000),
            raw_length=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest() if truncated else None,
            truncated=truncated,
        )

    # everything but the value, at its largest (a truncated letter names the sha256)
    fixed = len(letter(b"", True).to_bytes()) + len(letter_key or b"") + _RECORD_OVERHEAD_BYTES
    budget = max(0, (max_message_bytes - fixed) * 3 // 4)
    truncated = len(raw) > budget
    return letter(raw[:budget] if truncated else raw, truncated).to_bytes()
