"""Read interaction events from CSV or JSONL files, validating every row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.config import LimitSettings
from streams.contracts import ContractError, InteractionEvent, decode

_INT_FIELDS = ("ts",)
_FLOAT_FIELDS = ("value",)


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


def _typed_csv_row(row: dict[str, str]) -> dict[str, object]:
    """CSV carries text only: give ``ts`` and ``value`` their JSON types before validation."""
    out: dict[str, object] = {k: v for k, v in row.items() if k and v != ""}
    for name in _INT_FIELDS:
        if name in out:
            try:
                out[name] = int(str(out[name]))
            except ValueError:
                pass  # leave as text so validation names the field
    for name in _FLOAT_FIELDS:
        if name in out:
            try:
                out[name] = float(str(out[name]))
            except ValueError:
                pass
    return out


def _format_of(path: Path) -> str:
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if path.suffix == ".csv" or not path.is_file():
        return "csv"  # a pipe is read once: it is not sniffed
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


def read_interactions(
    path: Path, limits: LimitSettings, *, fmt: str | None = None
) -> Iterator[InteractionEvent | RowError]:
    """Yield each row of ``path`` as a validated event or as a :class:`RowError`.

    ``fmt`` is ``"csv"`` or ``"jsonl"``; by default it follows the file suffix, and a file
    with neither kind of suffix is JSONL when its first non-blank character is ``{``. A CSV
    file needs a header with at least ``event_id,user_id,item_id,ts``.
    """
    fmt = fmt or _format_of(path)
    with path.open("r", encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield decode(InteractionEvent, line, limits)
                except ContractError as exc:
                    yield RowError(line_no, str(exc))
        elif fmt == "csv":
            reader = csv.DictReader(handle)
            for line_no, row in enumerate(reader, start=2):
                try:
                    yield decode(InteractionEvent, json.dumps(_typed_csv_row(row)), limits)
                except ContractError as exc:
                    yield RowError(line_no, str(exc))
        else:
            raise ValueError(f"unknown format {fmt!r}: use csv or jsonl")
