"""``lethe publish``'s file reader: the format follows the suffix, else the content."""

from __future__ import annotations

from streams.config import LimitSettings
from streams.contracts import InteractionEvent
from streams.files import RowError, read_interactions

EVENT = '{"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1}'


def test_jsonl_without_a_jsonl_suffix_is_read_as_jsonl(tmp_path):
    for name in ("events.txt", "events"):
        path = tmp_path / name
        path.write_text(f"\n  {EVENT}\n{EVENT.replace('e1', 'e2')}\n")
        rows = list(read_interactions(path, LimitSettings()))
        assert [r.event_id for r in rows] == ["e1", "e2"]


def test_csv_by_suffix_or_by_content(tmp_path):
    text = "event_id,user_id,item_id,ts\ne1,u1,i1,1\n"
    for name in ("events.csv", "events.txt"):
        path = tmp_path / name
        path.write_text(text)
        (row,) = read_interactions(path, LimitSettings())
        assert isinstance(row, InteractionEvent) and row.user_id == "u1"
    # a .csv file is CSV whatever it holds: a JSON line is a bad row, reported
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(f"{EVENT}\n{EVENT}\n")
    rows = list(read_interactions(wrong, LimitSettings()))
    assert len(rows) == 1 and isinstance(rows[0], RowError)
