"""What the trainer knows about items as text: from ``items`` and from a catalogue file.

Item metadata (:class:`streams.contracts.ItemMetadata`) arrives on the compacted ``items``
topic, which the trainer reads from the offsets its state reflects, like ``interactions``;
the texts read are kept in the state file. A configured catalogue file
(``trainer.catalogue_file``: JSONL of ItemMetadata records, or a dataset's ``.item`` file)
is read at every start and never written to the state; a record on the stream overrides the
file's for the same item.

An item's text is looked up by its id whenever a round trains or a model is exported, so it
does not matter whether the metadata came before or after the item's first interaction.

Forgetting an item (a deletion of scope ``item``) drops its text and leaves a tombstone
(keyed hash and the deletion's ``ts``): metadata of the item stamped no later than that is
ignored wherever it is read from, so a record published before the deletion but read after
it (the barrier orders deletions after interactions only) cannot bring the text back. The
rule is by timestamp, as for interactions: a record stamped after the deletion is the item
listed again and is kept, wherever it falls in the reading order (a producer's clock may
lead by at most ``limits.max_future_skew_ms``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from models.itemtext import item_text
from streams.config import LimitSettings
from streams.contracts import ContractError, ItemMetadata, decode
from streams.services.trainer_state import TrainerState

log = logging.getLogger("lethe.trainer")


def metadata_text(meta: ItemMetadata) -> str:
    """The string the LLM side reads: ``"<title> (<year>); <genre>, …"`` (the bundled
    data's format, :func:`models.itemtext.item_text`), then the free text."""
    year = "" if meta.year is None else str(meta.year)
    text = item_text(meta.title, year, meta.genres)
    return f"{text}. {meta.text.strip()}" if meta.text and meta.text.strip() else text


class CatalogueError(ValueError):
    """The configured catalogue file cannot be read at all (missing, unreadable, not a
    ``.item`` table): the trainer does not start without the texts it was told to use."""


def read_catalogue(path: Path, limits: LimitSettings) -> dict[str, tuple[str, int]]:
    """Item id → (text, ts) from a JSONL file of ItemMetadata records or a dataset's ``.item``
    file (ts 0). Every record passes the ``items`` contract (ids, lengths, control
    characters); one that fails is logged with its line and skipped. For an id listed more
    than once the newest ``ts`` wins (the later line on a tie), as on the stream."""
    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"trainer.catalogue_file {path}: no such file")
    if path.is_dir():
        raise CatalogueError(f"trainer.catalogue_file {path}: a folder, not a file")
    out: dict[str, tuple[str, int]] = {}
    bad = 0
    for number, raw in _catalogue_records(path):
        try:
            meta = decode(ItemMetadata, raw, limits)
        except ContractError as exc:
            bad += 1
            log.warning("catalogue %s line %d skipped: %s", path.name, number, exc)
            continue
        held = out.get(meta.item_id)
        if held is None or held[1] <= meta.ts:
            out[meta.item_id] = (metadata_text(meta), meta.ts)
    if bad:
        log.warning("catalogue %s: %d line(s) skipped, %d items read", path.name, bad, len(out))
    return out


def _catalogue_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, ItemMetadata JSON) of each record in the file."""
    if path.suffix != ".item":
        try:
            f = path.open("rb")
        except OSError as exc:
            raise CatalogueError(f"trainer.catalogue_file {path}: cannot be read: {exc}") from exc
        with f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield number, line.rstrip(b"\r\n")
        return
    from models.datasets import read_item_file

    try:
        rows = read_item_file(path)
    except (OSError, ValueError, KeyError) as exc:  # a decode error is a ValueError
        raise CatalogueError(
            f"trainer.catalogue_file {path}: not a readable .item table"
            f" (UTF-8, tab-separated, with item_id, movie_title, release_year and"
            f" class or genre columns): {type(exc).__name__}"
        ) from exc
    for number, row in enumerate(rows.itertuples(index=False), start=2):  # after the header
        year = str(row.year).removesuffix(".0").strip()
        genres = [g for g in row.genres if g] if isinstance(row.genres, list) else []
        record = {
            "item_id": str(row.item_id),
            "title": str(row.title),
            "ts": 0,
            "year": int(year) if year.isdigit() else None,
            "genres": genres,
        }
        yield number, json.dumps(record).encode()


class ItemCatalogue:
    """Texts from the stream (in the state) over the file's, with the tombstones of
    forgotten items."""

    def __init__(
        self,
        state: TrainerState,
        file_texts: dict[str, tuple[str, int]],
        max_texts: int | None = None,
    ) -> None:
        self.state = state
        self.file_texts = file_texts
        self.max_texts = max_texts

    def _forgotten(self, item_id: str, ts: int) -> bool:
        tombs = self.state.item_tombstones
        if not tombs:
            return False
        return any(ts <= tombs.get(h, -1) for h in self.state.hasher.candidates("item", item_id))

    def announce(self, items: Iterable[ItemMetadata]) -> int:
        """Keep the text of each record (the newest read wins); returns how many were kept."""
        kept = 0
        for meta in items:
            if self._forgotten(meta.item_id, meta.ts):
                self.state.bump("items_forgotten")
                continue
            self.state.item_texts[meta.item_id] = (metadata_text(meta), meta.ts)
            kept += 1
        if self.max_texts is not None and len(self.state.item_texts) > self.max_texts:
            self._evict(self.max_texts)
        return kept

    def _evict(self, limit: int) -> None:
        """Drop texts of items nothing uses yet, oldest ``ts`` first (ties by id), down to
        90 % of ``limit`` so that a stream of new items does not sort the store at every
        step. Texts of items with a row or with held interactions (a row at the next round)
        stay: the next export maps their rows from them."""
        texts, rows = self.state.item_texts, self.state.items.by_id
        held = self.state.store.item_counts
        target = max(0, len(texts) - int(0.9 * limit))
        spare = sorted(
            (ts, item) for item, (_, ts) in texts.items() if item not in rows and item not in held
        )
        for _, item in spare[:target]:
            del texts[item]
        dropped = min(target, len(spare))
        if not dropped:  # every text held is in use: the bound is below the vocabulary's
            return
        self.state.bump("item_texts_dropped", dropped)
        log.warning(
            "%d item text(s) dropped: more than trainer.max_item_texts (%d) held; the"
            " oldest of items without a row went (their next record brings them back)",
            dropped,
            limit,
        )

    def text(self, item_id: str) -> str | None:
        got = self.state.item_texts.get(item_id) or self.file_texts.get(item_id)
        if got is None or self._forgotten(item_id, got[1]):
            return None
        return got[0]

    def by_index(self, items: list[str | None]) -> list[str | None]:
        """The text of every dense index (None: a freed index or an item without text)."""
        return [None if item is None else self.text(item) for item in items]


def forget_item_text(state: TrainerState, item_id: str, ts: int) -> bool:
    """Drop a forgotten item's text and remember (as a keyed hash) until when its metadata
    is ignored. A text stamped after the deletion (the item listed again, read in the same
    step or while the deletion was held) stays: a later step would have kept it too.
    Returns whether a text was dropped (the receipt counts it)."""
    held = state.item_texts.get(item_id)
    dropped = held is not None and held[1] <= ts
    if dropped:
        del state.item_texts[item_id]
    key = state.hasher("item", item_id)
    state.item_tombstones[key] = max(ts, state.item_tombstones.get(key, ts))
    return dropped


class TextEncoder:
    """The LM's raw encoding of each text, computed once per process. The pretrained LM
    (adapters off) is the same after every reset or checkpoint load, so an encoding stays
    valid; texts no longer used are dropped."""

    def __init__(self) -> None:
        self.memo: dict[str, torch.Tensor] = {}

    def table(self, llm, texts: list[str | None], rows: int) -> tuple[torch.Tensor, np.ndarray]:
        """``rows × hidden`` raw encodings (row ``i + 1`` for dense index ``i``, zero rows
        where there is no text) and which of the ``rows - 1`` items have a text."""
        used = {t for t in texts if t}
        self.memo = {t: v for t, v in self.memo.items() if t in used}
        missing = sorted(used - set(self.memo))
        if missing:
            encoded = llm.encode_texts(missing, llm.tokenizer).detach().cpu()
            self.memo.update(zip(missing, encoded, strict=True))
        hidden = llm.text_table.shape[1]
        table = torch.zeros(rows, hidden)
        has_text = np.zeros(rows - 1, dtype=bool)
        for idx, text in enumerate(texts[: rows - 1]):
            if text:
                table[idx + 1] = self.memo[text]
                has_text[idx] = True
        return table, has_text
