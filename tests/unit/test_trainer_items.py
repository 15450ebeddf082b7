"""New items on the stream: item metadata reaches the trainer, and the next export ranks a
new item by what it is (docs/distillation.md, "New items on the stream"). No broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from export.session import open_session
from streams.config import LetheSettings
from streams.contracts import ContractError, DeadLetter, InteractionEvent, ItemMetadata, decode
from streams.runtime.loop import Runtime
from streams.runtime.memory import MemoryLog
from streams.services.base import Inputs
from streams.services.batch import InteractionColumns
from streams.services.trainer import TrainerService
from streams.services.trainer_items import read_catalogue
from tests.unit.service_contract import ScriptedIO

#: six "genres" of eight items each; a user watches seven items of one genre
GENRES = [
    ["Horror", "Thriller"],
    ["Comedy", "Romance"],
    ["Animation", "Children's"],
    ["Documentary", "War"],
    ["Sci-Fi", "Adventure"],
    ["Western", "Musical"],
]
NEW = "c0-new"  # a Horror/Thriller film the stream has never seen
TOPIC = "u.interactions"


def warm_items() -> list[ItemMetadata]:
    return [
        ItemMetadata(item_id=f"c{g}-i{k}", title=f"Film {g}{k}", genres=GENRES[g], ts=1)
        for g in range(6)
        for k in range(8)
    ]


NEW_META = ItemMetadata(item_id=NEW, title="Film new", genres=GENRES[0], ts=1)


#: a tiny LLM side that still learns to rank a new item by its text within one export. With
#: 300 pretraining steps the new item follows its two unseen siblings for a genre-0 user
#: (rank 2) in seeds 0-7, trained in one round or in two (150 steps: seed 0 of the one-round
#: stream ranks it 3rd), and past 10 for the users of at least two of the five other genres
#: in every seed; for the other genres' users it is often 3rd too (the tiny LM's text tells
#: only some genres apart), so that is all the tests claim
TEXT_MODEL = {
    "llm": "tiny",
    "max_items": 64,
    "max_len": 8,
    "hidden": 16,
    "replay_users": 64,
    "steps_per_round": 8,
    "pretrain_steps": 300,
    "valid_users": 20,
}


def settings_for(tmp: Path, model: dict | None = None, **trainer) -> LetheSettings:
    return LetheSettings(
        topic_prefix="u.",
        state_dir=tmp / "state",
        model_dir=tmp / "models",
        metrics_port=-1,
        trainer={
            "model": {**TEXT_MODEL, **(model or {})},
            "batch_events": 10**6,
            "batch_wait_s": 0.001,  # tick() closes the round
            "min_users": 5,
            "regression_tolerance": 1.0,
            "threads": 1,
            **trainer,
        },
    )


class Feed:
    def __init__(self) -> None:
        self.offset = 0

    def inputs(self, pairs: list[tuple[str, str]]) -> Inputs:
        cols = InteractionColumns()
        for k, (user, item) in enumerate(pairs):
            cols.positions.append(k)
            cols.event_ids.append(f"e{self.offset}")
            cols.user_ids.append(user)
            cols.item_ids.append(item)
            cols.ts.append(1_700_000_000_000 + self.offset)
            cols.sources.append((f"{TOPIC}:0", self.offset))
            self.offset += 1
        return Inputs(interactions=cols, offsets={f"{TOPIC}:0": self.offset})


def genre_stream(seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(f"u{u}", f"c{u % 6}-i{k}") for u in range(90) for k in rng.permutation(8)[:7].tolist()]


def new_item_events(n: int = 3) -> list[tuple[str, str]]:
    """A handful of genre-0 users take the new item (each user's newest item)."""
    return [(f"u{6 * k}", NEW) for k in range(n)]


def items_input(items: list[ItemMetadata], offset: int = 0) -> Inputs:
    return Inputs(items=items, offsets={"u.items:0": offset + len(items)})


def exported(svc: TrainerService) -> tuple[object, list]:
    """The round ``batch_wait_s`` (1 ms) after the first new event, and its exported model."""
    time.sleep(0.01)
    (update,) = svc.tick().announcements
    session = open_session(Path(update.path), prefer_gpu=False, threads=1)
    return session, json.loads(session.metadata["lethe.items"])


def rank_among_unseen(session, catalogue: list, item: str, genre: int) -> int:
    """The item's 0-based rank among the items a genre's user has not seen (full ranking)."""
    history = [catalogue.index(f"c{genre}-i{k}") + 1 for k in range(6)]
    scores = session.run(np.array([[0, 0, *history]], dtype=np.int64))[0][0]
    real = scores[1 : len(catalogue) + 1]
    unseen = np.ones(len(catalogue), dtype=bool)
    unseen[np.array(history) - 1] = False
    return int((real[unseen] > real[catalogue.index(item)]).sum())


def announced_before(tmp: Path, **trainer) -> tuple[TrainerService, object, list]:
    svc = TrainerService(settings_for(tmp, **trainer))
    svc.apply(items_input([*warm_items(), NEW_META]))
    feed = Feed()
    svc.apply(feed.inputs(genre_stream() + new_item_events()))
    session, catalogue = exported(svc)
    return svc, session, catalogue


def test_a_new_item_known_by_its_text_ranks_with_its_genre_after_the_next_export(tmp_path):
    svc, session, catalogue = announced_before(tmp_path / "text")
    ranks = [rank_among_unseen(session, catalogue, NEW, g) for g in range(6)]
    # the new item's training count is 0 (each of its events is a user's newest, held out
    # for validation), yet it ranks among its two unseen genre siblings for a genre-0 user
    assert ranks[0] <= 2, ranks
    # by what it is, not for everyone: at least two other genres' users rank it far down
    assert sorted(ranks[1:])[-2] > 10, ranks
    # the exported row is the mapped one; the live SASRec keeps the row CE left it
    idx = svc.state.items.get(NEW) + 1
    live = svc.model.crm.item_emb.weight[idx].detach()
    crm, mapped = svc.model.crm_for_export(*svc.prepare_texts(svc.dense_sequences()), svc.cold)
    assert idx - 1 in mapped.tolist() and not torch.allclose(crm.item_emb.weight[idx], live)

    # the same stream without text: the row CE leaves it ranks it near the bottom
    _, plain, plain_catalogue = announced_before(tmp_path / "plain", model={"text_repr": False})
    without = rank_among_unseen(plain, plain_catalogue, NEW, 0)
    assert without > ranks[0] + 10, (without, ranks[0])


def test_metadata_that_arrives_after_the_first_interaction_and_a_restart_is_used(tmp_path):
    settings = settings_for(tmp_path)
    svc = TrainerService(settings)
    svc.apply(items_input(warm_items()))
    feed = Feed()
    svc.apply(feed.inputs(genre_stream() + new_item_events()))
    first, catalogue = exported(svc)  # the new item is in it, without a text
    before = rank_among_unseen(first, catalogue, NEW, 0)
    svc.save()

    again = TrainerService(settings)  # the other texts come back from the state file
    assert len(again.state.item_texts) == 48
    again.apply(items_input([NEW_META], offset=48))
    again.apply(feed.inputs([("u90", "c0-i1"), ("u90", "c0-i2")]))
    session, catalogue = exported(again)
    after = rank_among_unseen(session, catalogue, NEW, 0)
    assert after <= 2 < before, (before, after)
    assert again.state.offsets["u.items:0"] == 49
    # item offsets are not training data: the lineage does not carry them
    assert "u.items:0" not in again.state.checkpoints[-1].trained_through


def test_a_catalogue_file_gives_texts_and_the_stream_overrides_it(tmp_path):
    path = tmp_path / "catalogue.jsonl"
    lines = [m.to_bytes().decode() for m in [*warm_items(), NEW_META]]
    path.write_text("\n".join([*lines, '{"item_id": "bad", "title": 5, "ts": 1}']) + "\n")
    texts = read_catalogue(path, LetheSettings().limits)
    assert len(texts) == 49 and texts[NEW][0] == "Film new; Horror, Thriller"
    svc = TrainerService(settings_for(tmp_path, catalogue_file=str(path)))
    assert svc.catalogue.text(NEW) == "Film new; Horror, Thriller"
    svc.apply(items_input([NEW_META.model_copy(update={"title": "Renamed", "ts": 2})]))
    assert svc.catalogue.text(NEW) == "Renamed; Horror, Thriller"
    assert NEW not in {i for i in svc.state.item_texts if svc.state.item_texts[i][1] == 1}


def test_the_bundled_dataset_item_file_is_a_catalogue(tmp_path):
    from models.datasets import dataset_dir

    texts = read_catalogue(dataset_dir("ml-100k") / "ml-100k.item", LetheSettings().limits)
    assert len(texts) == 1682
    assert texts["1"][0].startswith("Toy Story (1995); ")


def test_a_forgotten_item_loses_its_text_and_older_metadata_stays_ignored(tmp_path):
    svc = TrainerService(settings_for(tmp_path))
    svc.apply(items_input([*warm_items(), NEW_META]))
    feed = Feed()
    svc.apply(feed.inputs(genre_stream() + new_item_events()))
    from streams.contracts import DeletionRequest

    request = DeletionRequest(
        request_id="r1", scope="item", item_id=NEW, reason="utility", ts=1_700_000_000_000
    )
    (receipt,) = svc.apply(Inputs(deletions=[request], offsets={"u.deletions:0": 1})).receipts
    assert receipt.removed == {"items": 1, "interactions": 3, "item_texts": 1}
    assert NEW not in svc.state.item_texts and svc.catalogue.text(NEW) is None
    # an item known by its text alone: the receipt says what was dropped
    svc.catalogue.announce([ItemMetadata(item_id="text-only", title="Only text", ts=1)])
    alone = request.model_copy(update={"request_id": "r2", "item_id": "text-only"})
    (receipt,) = svc.apply(Inputs(deletions=[alone], offsets={"u.deletions:0": 2})).receipts
    assert receipt.removed == {"items": 0, "interactions": 0, "item_texts": 1}
    svc.apply(items_input([NEW_META], offset=49))  # published before the deletion, read after
    assert svc.catalogue.text(NEW) is None and svc.state.counters["items_forgotten"] == 1
    svc.save()
    assert NEW.encode() not in svc.files.state_file.read_bytes()
    newer = NEW_META.model_copy(update={"ts": 1_700_000_000_001})
    svc.apply(items_input([newer], offset=50))  # announced again after the deletion
    assert svc.catalogue.text(NEW) == "Film new; Horror, Thriller"


def test_a_deletion_keeps_a_newer_listing_read_in_the_same_step(tmp_path):
    svc = TrainerService(settings_for(tmp_path))
    svc.apply(items_input([*warm_items(), NEW_META]))
    svc.apply(Feed().inputs(genre_stream() + new_item_events()))
    from streams.contracts import DeletionRequest

    request = DeletionRequest(
        request_id="r1", scope="item", item_id=NEW, reason="utility", ts=1_700_000_000_000
    )
    relisted = NEW_META.model_copy(update={"title": "Relisted", "ts": 1_700_000_000_001})
    # the barrier holds deletions behind interactions only: a listing stamped after the
    # deletion can be read in its step, and a later step would have kept it
    svc.apply(Inputs(items=[relisted], deletions=[request], offsets={"u.deletions:0": 1}))
    assert svc.catalogue.text(NEW) == "Relisted; Horror, Thriller"
    svc.save()
    assert (
        TrainerService(settings_for(tmp_path)).catalogue.text(NEW) == "Relisted; Horror, Thriller"
    )


def test_texts_of_items_without_a_row_are_bounded_oldest_first(tmp_path, caplog):
    svc = TrainerService(settings_for(tmp_path, max_item_texts=40))
    svc.apply(items_input(warm_items()[:10]))
    feed = Feed()
    svc.apply(feed.inputs([(f"u{k}", f"c0-i{k}") for k in range(8)]))
    svc._index_new_items()  # the eight c0 items get rows
    many = [ItemMetadata(item_id=f"x{k}", title=f"X {k}", ts=100 + k) for k in range(40)]
    svc.apply(items_input(many, offset=10))
    texts = svc.state.item_texts
    assert len(texts) == 36  # 50 held > 40: down to 90 % of the bound
    assert all(f"c0-i{k}" in texts for k in range(8))  # items with a row keep their text
    # the oldest of the rest went first: c1-i0, c1-i1 (ts 1), then x0 … x11
    assert sorted(set(f"x{k}" for k in range(40)) - set(texts)) == sorted(
        f"x{k}" for k in range(12)
    )
    assert svc.state.counters["item_texts_dropped"] == 14
    assert "trainer.max_item_texts" in caplog.text
    # an item with interactions but no row yet (it gets one at the next round) keeps its
    # text, however old: the export maps its row from it
    svc.apply(feed.inputs([("u9", "x12")]))
    caplog.clear()
    newer = [ItemMetadata(item_id=f"y{k}", title=f"Y {k}", ts=500 + k) for k in range(10)]
    svc.apply(items_input(newer, offset=50))
    assert "x12" in svc.state.item_texts and "x13" not in svc.state.item_texts
    # when every text held is in use nothing goes, and nothing is logged step after step
    svc.state.item_texts = {k: v for k, v in svc.state.item_texts.items() if k.startswith("c0")}
    svc.catalogue.max_texts = 4
    caplog.clear()
    svc.apply(items_input([], offset=60))
    svc.catalogue.announce([])
    assert len(svc.state.item_texts) == 8 and "dropped" not in caplog.text


def test_items_the_full_vocabulary_leaves_out_are_counted_and_logged(tmp_path, caplog):
    from streams import metrics as m

    svc = TrainerService(settings_for(tmp_path, model={"max_items": 4}))
    svc.apply(Feed().inputs([(f"u{k}", f"c0-i{k}") for k in range(7)]))
    svc._index_new_items()
    assert len(svc.state.items.by_id) == 4
    svc.gauges()
    assert m.TRAINER_ITEMS_WITHOUT_ROW._value.get() == 3
    assert "3 item(s) with interactions have no row" in caplog.text
    svc.save()
    m.TRAINER_ITEMS_WITHOUT_ROW.set(0)
    TrainerService(svc.settings).gauges()  # counted again at start, not 0 until a round
    assert m.TRAINER_ITEMS_WITHOUT_ROW._value.get() == 3


def test_catalogue_files_pass_the_contract_and_unreadable_ones_stop_the_start(tmp_path):
    from streams.services.trainer_items import CatalogueError

    limits = LetheSettings().limits
    with pytest.raises(CatalogueError, match="no such file"):
        read_catalogue(tmp_path / "missing.jsonl", limits)
    with pytest.raises(CatalogueError, match="no such file"):
        TrainerService(settings_for(tmp_path, catalogue_file=str(tmp_path / "missing.item")))
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    latin1 = tmp_path / "latin1.item"
    latin1.write_bytes((header + "1\tCaf\xe9\t1990\tDrama\n").encode("latin-1"))
    with pytest.raises(CatalogueError, match="not a readable .item table"):
        read_catalogue(latin1, limits)
    no_genre = tmp_path / "nogenre.item"
    no_genre.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\n1\tA\t1990\n")
    with pytest.raises(CatalogueError):
        read_catalogue(no_genre, limits)
    odd = tmp_path / "odd.item"
    rows = ["1\tGood\t1990\tDrama", "2\tT\x01itle\x1b[31m\t1990\tDrama", " a \tSpaced\t1990\tDrama"]
    rows.append("3\t" + "x" * 600 + "\t1990\tDrama")
    odd.write_text(header + "\n".join(rows) + "\n")
    assert set(read_catalogue(odd, limits)) == {"1"}  # control characters, spaces, length
    dup = tmp_path / "dup.jsonl"
    newer = ItemMetadata(item_id="i", title="New", ts=2).to_bytes().decode()
    older = ItemMetadata(item_id="i", title="Old", ts=1).to_bytes().decode()
    dup.write_text(f"{newer}\n{older}\n")
    assert read_catalogue(dup, limits)["i"] == ("New", 2)  # the newest ts, not the last line


@pytest.mark.parametrize(
    "value, field",
    [
        ({"title": "t", "ts": 1}, "item_id"),
        ({"item_id": "i", "ts": 1}, "title"),
        ({"item_id": "i", "title": "   ", "ts": 1}, "title"),
        ({"item_id": "i", "title": "a\u0000b", "ts": 1}, "title"),
        ({"item_id": "i", "title": "a\u0085b", "ts": 1}, "title"),
        ({"item_id": "i", "title": "a\u2028b", "ts": 1}, "title"),
        ({"item_id": "i", "title": "evil\u202etxt.exe", "ts": 1}, "title"),
        ({"item_id": "i", "title": "t", "ts": 1, "genres": ["Dra\u009bma"]}, "genres.0"),
        ({"item_id": "i", "title": "t", "ts": 1, "text": "csi\u009b31m"}, "text"),
        ({"item_id": "i", "title": "x" * 513, "ts": 1}, "title"),
        ({"item_id": " i", "title": "t", "ts": 1}, "item_id"),
        ({"item_id": "i" * 129, "title": "t", "ts": 1}, "item_id"),
        ({"item_id": "i", "title": "t", "ts": 1, "year": "1995"}, "year"),
        ({"item_id": "i", "title": "t", "ts": 1, "year": 10**6}, "year"),
        ({"item_id": "i", "title": "t", "ts": 1, "genres": "Horror"}, "genres"),
        ({"item_id": "i", "title": "t", "ts": 1, "genres": [["Horror"]]}, "genres.0"),
        ({"item_id": "i", "title": "t", "ts": 1, "genres": ["g"] * 33}, "genres"),
        ({"item_id": "i", "title": "t", "ts": 1, "text": "x" * 4097}, "text"),
        ({"item_id": "i", "title": "t", "ts": 1, "text": "bell\u0007"}, "text"),
        ({"item_id": "i", "title": "t", "ts": 10**14}, "ts"),
        ({"item_id": "i", "title": "t", "ts": -1}, "ts"),
    ],
)
def test_malformed_item_metadata_is_refused_by_the_contract(value, field):
    with pytest.raises(ContractError) as err:
        decode(ItemMetadata, json.dumps(value).encode())
    assert err.value.field == field


def test_deeply_nested_or_oversize_metadata_is_refused():
    nested = b'{"item_id": "i", "title": "t", "ts": 1, "genres": ' + b"[" * 20_000 + b"]" * 20_000
    with pytest.raises(ContractError):
        decode(ItemMetadata, nested + b"}")
    big = json.dumps({"item_id": "i", "title": "t", "ts": 1, "x": "y" * 2_000_000}).encode()
    with pytest.raises(ContractError, match="max_message_bytes"):
        decode(ItemMetadata, big)


def test_the_trainer_dead_letters_bad_item_records_and_keeps_going(tmp_path):
    settings = settings_for(tmp_path, batch_events=10**6, batch_wait_s=3600.0)
    log = MemoryLog()
    topic = "u.items"
    good = warm_items()[:3]
    log.append(topic, good[0].to_bytes(), b"c0-i0")
    bad = [
        log.append(topic, b'{"item_id": "c0-i1", "title": 7, "ts": 1}', b"c0-i1"),
        log.append(topic, b"\xff\xfe not utf-8", b"c0-i2"),
        # valid, but under another item's key: compaction would let it replace that item
        log.append(topic, warm_items()[5].to_bytes(), b"c0-i4"),
    ]
    log.append(topic, None, b"c0-i3")  # a compaction tombstone: passed over, not dead
    for meta in good[1:]:
        log.append(topic, meta.to_bytes(), meta.item_id.encode())
    io = ScriptedIO(log, crash_after=None, chunk=2)
    runtime = Runtime(settings, TrainerService, io, name="trainer")
    io.runtime = runtime  # stops once there is nothing left to read
    runtime.run()
    letters = [DeadLetter.model_validate_json(r.value()) for r in log.records("u.dead-letters")]
    where = sorted((d.source_topic, d.source_partition, d.source_offset) for d in letters)
    assert where == sorted((r.topic(), r.partition(), r.offset()) for r in bad)
    assert sorted(d.error.split(":")[0] for d in letters) == ["key", "message", "title"]
    state = TrainerService(settings).state
    assert sorted(state.item_texts) == sorted(m.item_id for m in good)
    offsets = {k: v for k, v in state.offsets.items() if k.startswith(topic)}
    assert sum(offsets.values()) == 7


def _interactions_log(pairs: list[tuple[str, str]]) -> MemoryLog:
    log = MemoryLog()
    for k, (user, item) in enumerate(pairs):
        event = InteractionEvent(event_id=f"e{k}", user_id=user, item_id=item, ts=1_700_000_000_000)
        log.append(TOPIC, event.to_bytes(), user.encode())
    return log


def test_a_stop_during_training_abandons_the_step_and_a_restart_reads_it_again(tmp_path):
    from streams.services.base import StepAbandoned

    pairs = genre_stream()
    settings = settings_for(tmp_path, batch_events=len(pairs))  # one round, in apply
    svc = TrainerService(settings)
    asked = []
    svc.interrupt_when(lambda: asked.append(1) or len(asked) > 3)  # stop at the 4th step
    with pytest.raises(StepAbandoned):
        svc.apply(Feed().inputs(pairs))
    assert len(asked) == 4

    # under the runtime: the stop request (Ctrl-C, SIGTERM) ends the run at once, with
    # nothing saved or announced; the next start trains on the same events
    log = _interactions_log(pairs)
    io = ScriptedIO(log, crash_after=None, chunk=len(pairs))
    runtime = Runtime(
        settings_for(tmp_path / "rt", batch_events=len(pairs)), TrainerService, io, name="trainer"
    )
    io.runtime = runtime
    steps = []
    original = TrainerService.interrupt_when

    def stop_after_a_few_steps(self, stop):  # noqa: ANN001 - the runtime's stop check
        def check() -> bool:
            steps.append(1)
            if len(steps) == 3:
                runtime.stop()  # as the signal handler does
            return stop()

        original(self, check)

    TrainerService.interrupt_when = stop_after_a_few_steps
    try:
        runtime.run()
    finally:
        TrainerService.interrupt_when = original
    assert len(steps) == 3 and not log.records("u.model-updates")
    state_file = tmp_path / "rt" / "state" / "trainer" / "state.json"
    if state_file.exists():  # a snapshot from before the step holds none of its events
        saved = json.loads(state_file.read_text())["offsets"]
        assert not any(n for tp, n in saved.items() if tp.startswith(TOPIC))
    again = ScriptedIO(log, crash_after=None, chunk=len(pairs))
    runtime = Runtime(
        settings_for(tmp_path / "rt", batch_events=len(pairs)),
        TrainerService,
        again,
        name="trainer",
    )
    again.runtime = runtime
    runtime.run()
    assert len(log.records("u.model-updates")) == 1
    offsets = json.loads(state_file.read_text())["offsets"]
    assert sum(n for tp, n in offsets.items() if tp.startswith(TOPIC)) == len(pairs)
