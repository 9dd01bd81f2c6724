"""``SQLiteStore.add_labels`` (labels appended on the stored JSON) against ``add_label`` one at a time.

Covers: the same seeded stream of label updates, applied one ``add_label`` at a time in one store and
with ``add_labels`` in batches of 1, 7 and 500 in another, gives the same status per update and the
same episodes (``Episode.model_validate`` of both, the stored JSON dicts and the indexed
``labeled``/``reward``/``revision`` columns): manual and automatic labels, failed gradings, a
client-sent reward, labels already stored, reasons with personal data (redacted, counted once per
label even when the redaction is remembered), naive and non-UTC label times, fresh, stale and absent
expected revisions, several updates of one episode in one batch, missing episodes, and the 64-label
cap both when an automatic label can be dropped and when every earlier label is manual. An episode
whose JSON orjson cannot read back exactly (an integer beyond 64 bits) is labeled through the model
path and keeps its integer. A stored document that is not a valid episode fails the batch, as
``add_label`` does, and nothing of the batch is written. A batch larger than one ``IN (...)`` chunk
is one transaction.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydantic
import pytest

from lightning_op.api import episode as ep
from lightning_op.store import base, sqlite

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
REASONS = [
    "chose the expected tool",
    "wrong tool: expected get_weather",
    "arguments differ",
    "",
    "the user wrote to alice@example.com, which the answer ignored",
    "call +44 20 7946 0958 for details",
]


def make_episodes() -> list[ep.Episode]:
    episodes = []
    for n in range(12):
        labels = []
        if n % 4 == 1:
            labels = [ep.Label(score=0.4, grader="earlier", reason="stored before", at=T0)]
        if n % 4 == 2:
            labels = [ep.Label(score=0.9, grader="human", manual=True, reason="by hand", at=T0)]
        episodes.append(
            ep.Episode(
                agent_id="bot",
                session_id=f"s-{n}",
                turn=0,
                timestamp=T0 + timedelta(seconds=n),
                model_version="base-v1",
                state=ep.State(
                    query=f"question {n}" + (" mail bob@example.org" if n % 5 == 0 else ""),
                    context={"n": n, "nested": {"list": [1, 2.5, None, "x"]}},
                ),
                action=ep.Action(tool="lookup", arguments={"n": n}),
                result={"ok": n % 2 == 0},
                reward=0.7 if n % 6 == 3 else None,
                labeled=n % 6 == 3,
                labels=labels,
            )
        )
    return episodes


def make_label(rng: random.Random, i: int) -> ep.Label:
    at_choices = [
        T0 + timedelta(minutes=i),
        (T0 + timedelta(minutes=i)).replace(tzinfo=None),
        (T0 + timedelta(minutes=i, microseconds=123)).astimezone(timezone(timedelta(hours=2))),
    ]
    manual = rng.random() < 0.15
    failed = not manual and rng.random() < 0.15
    return ep.Label(
        score=None if failed else rng.choice([0.0, 0.25, 0.5, 1.0, rng.random()]),
        grader="human" if manual else rng.choice(["tool_selection", "judge"]),
        grader_version=None if manual else "v1",
        reason=rng.choice(REASONS),
        at=rng.choice(at_choices),
        manual=manual,
        error=rng.choice(["timed out", "rate limited by 10.0.0.1"]) if failed else None,
    )


def make_updates(ids: list[str], seed: int, count: int) -> list[base.LabelUpdate]:
    """Updates whose expected revisions are fresh, stale, ahead or absent, as predicted in order."""
    rng = random.Random(seed)
    revision = dict.fromkeys(ids, 1)
    updates = []
    for i in range(count):
        episode_id = rng.choice([*ids[:4], *ids[:4], *ids, "ep-missing"])
        label = make_label(rng, i)
        choice = rng.random()
        expected: int | None
        if episode_id == "ep-missing" or choice < 0.3:
            expected = None
        elif choice < 0.8:
            expected = revision[episode_id]
        else:
            expected = revision[episode_id] + rng.choice([-1, 1])
        if episode_id != "ep-missing" and expected in (None, revision[episode_id]):
            revision[episode_id] += 1
        updates.append(base.LabelUpdate(episode_id, label, expected))
    return updates


def one_at_a_time(store: sqlite.SQLiteStore, updates: list[base.LabelUpdate]) -> list[base.LabelWriteStatus]:
    statuses = []
    for update in updates:
        try:
            store.add_label(update.episode_id, update.label, update.expected_revision)
        except base.ConflictError:
            statuses.append(base.LabelWriteStatus.CONFLICT)
        except base.NotFoundError:
            statuses.append(base.LabelWriteStatus.NOT_FOUND)
        else:
            statuses.append(base.LabelWriteStatus.APPLIED)
    return statuses


def in_batches(
    store: sqlite.SQLiteStore, updates: list[base.LabelUpdate], size: int
) -> list[base.LabelWriteStatus]:
    statuses = []
    for start in range(0, len(updates), size):
        statuses.extend(store.add_labels(updates[start : start + size]))
    return statuses


def columns(path: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT id, agent_id, ts, labeled, reward, model_version, revision FROM episodes")
        return {row[0]: row[1:] for row in rows}


def assert_same_episodes(old: sqlite.SQLiteStore, new: sqlite.SQLiteStore) -> None:
    old_docs = {d["id"]: d for d in old.iter_json(base.EpisodeQuery())}
    new_docs = {d["id"]: d for d in new.iter_json(base.EpisodeQuery())}
    assert new_docs.keys() == old_docs.keys()
    for episode_id, old_doc in old_docs.items():
        assert ep.Episode.model_validate(new_docs[episode_id]) == ep.Episode.model_validate(old_doc)
        assert new_docs[episode_id] == old_doc
    assert old.path is not None and new.path is not None
    assert columns(new.path) == columns(old.path)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[sqlite.SQLiteStore, sqlite.SQLiteStore]]:
    old = sqlite.SQLiteStore(tmp_path / "one-at-a-time.db")
    new = sqlite.SQLiteStore(tmp_path / "batched.db")
    yield old, new
    old.close()
    new.close()


@pytest.mark.parametrize("batch_size", [1, 7, 500], ids=["batch-1", "batch-7", "batch-500"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_add_labels_gives_the_episodes_add_label_gives(
    stores: tuple[sqlite.SQLiteStore, sqlite.SQLiteStore], batch_size: int, seed: int
) -> None:
    old, new = stores
    episodes = make_episodes()
    old.insert_many(episodes)
    new.insert_many(episodes)
    # Enough updates that the busiest episodes pass the 64-label cap.
    updates = make_updates([e.id for e in episodes], seed, 600)

    expected = one_at_a_time(old, updates)
    assert in_batches(new, updates, batch_size) == expected
    assert set(expected) == set(base.LabelWriteStatus)
    assert_same_episodes(old, new)
    assert max(len(e.labels) for e in new.iter_episodes(base.EpisodeQuery())) == ep.MAX_LABELS


@pytest.mark.parametrize("all_manual", [False, True], ids=["drops-oldest-automatic", "all-manual"])
def test_the_label_cap_matches_add_label(
    stores: tuple[sqlite.SQLiteStore, sqlite.SQLiteStore], all_manual: bool
) -> None:
    old, new = stores
    episode = make_episodes()[0]
    old.insert_many([episode])
    new.insert_many([episode])
    updates = [
        base.LabelUpdate(
            episode.id,
            ep.Label(
                score=i / 100,
                grader="human" if all_manual or i % 9 == 0 else "judge",
                manual=all_manual or i % 9 == 0,
                reason=f"label {i}",
                at=T0,
            ),
        )
        for i in range(ep.MAX_LABELS + 10)
    ]
    one_at_a_time(old, updates)
    assert set(new.add_labels(updates)) == {base.LabelWriteStatus.APPLIED}
    assert_same_episodes(old, new)
    stored = new.get(episode.id)
    assert stored is not None and len(stored.labels) == ep.MAX_LABELS
    assert stored.labels[0].reason == ("label 10" if all_manual else "label 0")


def test_repeated_reasons_count_their_redactions_once_per_label(
    stores: tuple[sqlite.SQLiteStore, sqlite.SQLiteStore],
) -> None:
    old, new = stores
    episode = make_episodes()[5]  # its query has an email too
    old.insert_many([episode])
    new.insert_many([episode])
    reason = "reply went to carol@example.com"
    updates = [base.LabelUpdate(episode.id, ep.Label(score=0.5, grader="g", reason=reason, at=T0))] * 3
    one_at_a_time(old, updates)
    new.add_labels(updates[:1])
    new.add_labels(updates[1:])
    assert_same_episodes(old, new)
    stored = new.get(episode.id)
    assert stored is not None and stored.redactions == {"email": 4}
    assert [label.reason for label in stored.labels[-3:]] == ["reply went to [REDACTED:email]"] * 3


def test_an_integer_beyond_64_bits_is_kept_exactly(
    stores: tuple[sqlite.SQLiteStore, sqlite.SQLiteStore],
) -> None:
    old, new = stores
    big = ep.Episode(
        agent_id="bot",
        session_id="big",
        turn=0,
        timestamp=T0,
        state=ep.State(context={"big": 2**70, "n": -(2**63) - 5}),
    )
    plain = make_episodes()[0]
    for store in stores:
        store.insert_many([big, plain])
    updates = [
        base.LabelUpdate(big.id, ep.Label(score=0.5, grader="g", at=T0), 1),
        base.LabelUpdate(plain.id, ep.Label(score=0.5, grader="g", at=T0), 1),
        base.LabelUpdate(big.id, ep.Label(score=1.0, grader="h", manual=True, at=T0), 2),
    ]
    assert one_at_a_time(old, updates) == new.add_labels(updates)
    assert_same_episodes(old, new)
    stored = new.get(big.id)
    assert stored is not None and stored.state.context == {"big": 2**70, "n": -(2**63) - 5}
    assert (stored.revision, stored.reward) == (3, 1.0)


def test_an_invalid_stored_document_fails_the_batch_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "episodes.db"
    with sqlite.SQLiteStore(path) as store:
        good, bad = make_episodes()[:2]
        store.insert_many([good, bad])
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE episodes SET doc = ? WHERE id = ?", ('{"id": "x", "labels": 3}', bad.id))
        with pytest.raises(pydantic.ValidationError):
            store.add_label(bad.id, ep.Label(score=1.0, grader="g"))
        with pytest.raises(pydantic.ValidationError):
            store.add_labels(
                [
                    base.LabelUpdate(good.id, ep.Label(score=1.0, grader="g")),
                    base.LabelUpdate(bad.id, ep.Label(score=1.0, grader="g")),
                ]
            )
        stored = store.get(good.id)
        assert stored is not None and stored.revision == 1 and not stored.labels


def test_a_batch_larger_than_one_id_chunk_is_one_transaction(
    stores: tuple[sqlite.SQLiteStore, sqlite.SQLiteStore],
) -> None:
    old, new = stores
    episodes = [
        ep.Episode(agent_id="bot", session_id=f"s{n}", turn=0, timestamp=T0 + timedelta(seconds=n))
        for n in range(sqlite._ID_CHUNK * 2 + 3)
    ]
    old.insert_many(episodes)
    new.insert_many(episodes)
    updates = [
        base.LabelUpdate(e.id, ep.Label(score=0.5, grader="g", reason="ok", at=T0), 1) for e in episodes
    ]
    statements: list[str] = []
    new._conn.set_trace_callback(statements.append)
    assert set(new.add_labels(updates)) == {base.LabelWriteStatus.APPLIED}
    new._conn.set_trace_callback(None)
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    one_at_a_time(old, updates)
    assert_same_episodes(old, new)
    assert new.count("bot", labeled=True) == len(episodes)
