"""The embedded SQLite store (``store/sqlite.py``) through the ``EpisodeStore`` protocol.

Covers: opening from each URL form (absolute, relative, ``:memory:``, missing parent directories)
and refusing bad URLs by name; WAL mode and owner-only file permissions; batch inserts that are
idempotent by id (a replayed batch adds nothing, duplicates are listed in input order) and atomic (a
failure mid-batch writes nothing); every query filter (agent, since inclusive / until exclusive,
labeled, min reward, model version); newest-first pages whose cursors visit each episode exactly
once even when timestamps tie; oldest-first ``iter_episodes``/``iter_json`` in small batches, capped
by ``limit``, with ``iter_json`` giving exactly ``to_json_dict()`` and holding no read transaction
between batches (the WAL can be checkpointed mid-iteration); labels with optimistic concurrency
(revision bump, reward recomputed, manual label wins, stale revision refused with nothing written,
label count capped) one at a time and in batches; counts, reward statistics, agents; purging in
chunks; named records with revision checks; and closed-store errors.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lightning_op import store as store_mod
from lightning_op.api import episode as ep
from lightning_op.store import base, sqlite

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def make_episode(
    n: int,
    *,
    agent: str = "bot",
    at: datetime | None = None,
    reward: float | None = None,
    model_version: str | None = "base-v1",
    query: str | None = None,
) -> ep.Episode:
    return ep.Episode(
        agent_id=agent,
        session_id=f"s-{n}",
        turn=0,
        timestamp=at if at is not None else T0 + timedelta(seconds=n),
        model_version=model_version,
        state=ep.State(query=query or f"question {n}", context={"n": n}),
        action=ep.Action(tool="lookup", arguments={"n": n}),
        reward=reward,
        labeled=reward is not None,
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite.SQLiteStore]:
    s = sqlite.SQLiteStore(tmp_path / "episodes.db")
    yield s
    s.close()


# --- opening ---------------------------------------------------------------------------------------


def test_open_store_gives_a_sqlite_store_that_satisfies_the_protocol(store: base.EpisodeStore) -> None:
    assert isinstance(store, sqlite.SQLiteStore)
    assert isinstance(store, base.EpisodeStore)
    assert isinstance(store, base.BatchLabelWriter)


def test_absolute_url_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "episodes.db"
    with sqlite.SQLiteStore.from_url(f"sqlite:///{path}") as s:
        s.insert_many([make_episode(1)])
        assert s.url == f"sqlite:///{path}"
    assert path.exists()


def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with sqlite.SQLiteStore.from_url("sqlite:///data/rel.db") as s:
        s.insert_many([make_episode(1)])
    assert (tmp_path / "data" / "rel.db").exists()


def test_url_path_is_percent_decoded(tmp_path: Path) -> None:
    with sqlite.SQLiteStore.from_url(f"sqlite:///{tmp_path}/my%20episodes.db") as s:
        s.insert_many([make_episode(1)])
    assert (tmp_path / "my episodes.db").exists()


def test_memory_url_keeps_episodes_for_the_life_of_the_store() -> None:
    with sqlite.SQLiteStore.from_url("sqlite:///:memory:") as s:
        s.insert_many([make_episode(1), make_episode(2)])
        assert s.count() == 2
        assert s.path is None


@pytest.mark.parametrize(
    "url",
    ["sqlite://host/x.db", "sqlite:///", "postgres:///x.db"],
    ids=["host", "no-path", "other-scheme"],
)
def test_bad_urls_are_refused_naming_the_url(url: str) -> None:
    with pytest.raises(base.StoreError, match="sqlite"):
        sqlite.SQLiteStore.from_url(url)


def test_timeout_option_bounds_the_wait_for_another_writers_lock(tmp_path: Path) -> None:
    path = tmp_path / "episodes.db"
    with sqlite.SQLiteStore.from_url(f"sqlite:///{path}?timeout=0.2") as s:
        assert s.busy_timeout_s == 0.2
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(base.StoreUnavailableError, match=r"database is locked.*0\.2s"):
                s.insert_many([make_episode(1)])
            assert time.monotonic() - started < 5
        finally:
            holder.rollback()
            holder.close()
        assert s.insert_many([make_episode(1)]).accepted == [make_episode(1).id]
        assert s.url.endswith("?timeout=0.2")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ("mode=ro", "unknown option 'mode'"),
        ("timeout=1&cache=shared", "unknown option 'cache'"),
        ("timeout", "timeout must be one number"),
        ("timeout=soon", "timeout must be one number of seconds above 0, got 'soon'"),
        ("timeout=0", "got '0'"),
        ("timeout=-1", "got '-1'"),
        ("timeout=inf", "got 'inf'"),
        ("timeout=1&timeout=2", "got '1', '2'"),
        ("&x=1", "unknown option '', 'x'"),
    ],
)
def test_bad_url_options_are_refused_naming_the_option(tmp_path: Path, options: str, named: str) -> None:
    path = tmp_path / "episodes.db"
    with pytest.raises(base.StoreError, match=re.escape(named)):
        sqlite.SQLiteStore.from_url(f"sqlite:///{path}?{options}")
    assert not path.exists()


def test_file_is_in_wal_mode_and_private_to_its_owner(db: sqlite.SQLiteStore) -> None:
    assert db.path is not None
    with sqlite3.connect(db.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(os.stat(db.path).st_mode) == 0o600


# --- inserting -------------------------------------------------------------------------------------


def test_replayed_batch_adds_nothing_and_lists_duplicates_in_order(db: sqlite.SQLiteStore) -> None:
    batch = [make_episode(n) for n in range(5)]
    first = db.insert_many(batch)
    assert first.accepted == [e.id for e in batch] and first.duplicates == []
    again = db.insert_many([make_episode(9), *reversed(batch)])
    assert again.accepted == [make_episode(9).id]
    assert again.duplicates == [e.id for e in reversed(batch)]
    assert db.count() == 6


def test_a_repeated_id_within_one_batch_is_stored_once(db: sqlite.SQLiteStore) -> None:
    one = make_episode(1)
    result = db.insert_many([one, one.model_copy(update={"result": "changed"})])
    assert result.accepted == [one.id] and result.duplicates == [one.id]
    stored = db.get(one.id)
    assert stored is not None and stored.result is None


def test_an_existing_episode_is_not_overwritten_by_a_replay(db: sqlite.SQLiteStore) -> None:
    one = make_episode(1)
    db.insert_many([one])
    db.add_label(one.id, ep.Label(score=0.9, grader="g"))
    db.insert_many([one])
    stored = db.get(one.id)
    assert stored is not None and stored.reward == 0.9 and stored.revision == 2


def test_a_batch_is_one_transaction_a_failure_writes_nothing(db: sqlite.SQLiteStore) -> None:
    assert db.path is not None
    with sqlite3.connect(db.path) as raw:
        raw.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON episodes WHEN NEW.agent_id = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        )
    batch = [make_episode(1), make_episode(2), make_episode(3, agent="poison"), make_episode(4)]
    with pytest.raises(base.StoreError, match="poisoned row"):
        db.insert_many(batch)
    assert db.count() == 0
    db.insert_many(batch[:2])
    assert db.count() == 2


def test_inserted_episodes_read_back_equal_with_revision_1(db: sqlite.SQLiteStore) -> None:
    one = make_episode(1, reward=0.4)
    db.insert_many([one])
    assert db.get(one.id) == one.model_copy(update={"revision": 1})
    assert db.get("ep-missing") is None


# --- queries ---------------------------------------------------------------------------------------


@pytest.fixture
def mixed(db: sqlite.SQLiteStore) -> sqlite.SQLiteStore:
    """10 episodes of 'bot' (even ones labeled with reward n/10, odd ones tuned-v2), 3 of 'other'."""
    episodes = [
        make_episode(
            n,
            reward=n / 10 if n % 2 == 0 else None,
            model_version="tuned-v2" if n % 2 else "base-v1",
        )
        for n in range(10)
    ]
    episodes += [make_episode(100 + n, agent="other") for n in range(3)]
    db.insert_many(episodes)
    return db


def _ns(page: list[ep.Episode]) -> list[int]:
    return [e.state.context["n"] for e in page]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (base.EpisodeQuery(agent_id="bot"), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        (base.EpisodeQuery(agent_id="other"), [102, 101, 100]),
        (base.EpisodeQuery(), [102, 101, 100, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        (base.EpisodeQuery(agent_id="bot", labeled=True), [8, 6, 4, 2, 0]),
        (base.EpisodeQuery(agent_id="bot", labeled=False), [9, 7, 5, 3, 1]),
        (base.EpisodeQuery(agent_id="bot", min_reward=0.4), [8, 6, 4]),
        (base.EpisodeQuery(agent_id="bot", model_version="tuned-v2"), [9, 7, 5, 3, 1]),
        (
            base.EpisodeQuery(
                agent_id="bot", since=T0 + timedelta(seconds=3), until=T0 + timedelta(seconds=6)
            ),
            [5, 4, 3],
        ),
        (base.EpisodeQuery(agent_id="bot", limit=3), [9, 8, 7]),
        (base.EpisodeQuery(agent_id="nobody"), []),
    ],
    ids=[
        "agent",
        "other-agent",
        "all",
        "labeled",
        "unlabeled",
        "min-reward",
        "model-version",
        "since-inclusive-until-exclusive",
        "limit",
        "unknown-agent",
    ],
)
def test_query_filters_newest_first(
    mixed: sqlite.SQLiteStore, query: base.EpisodeQuery, expected: list[int]
) -> None:
    assert _ns(mixed.query(query).items) == expected


def test_naive_since_is_taken_as_utc(mixed: sqlite.SQLiteStore) -> None:
    naive = (T0 + timedelta(seconds=8)).replace(tzinfo=None)
    assert _ns(mixed.query(base.EpisodeQuery(agent_id="bot", since=naive)).items) == [9, 8]


@pytest.mark.parametrize("page_size", [1, 3, 7, 50], ids=["1", "3", "7", "50"])
def test_cursor_pages_visit_each_episode_once_even_with_equal_timestamps(
    db: sqlite.SQLiteStore, page_size: int
) -> None:
    # 30 episodes share 3 timestamps: the cursor must break ties by insertion order.
    episodes = [make_episode(n, at=T0 + timedelta(seconds=n % 3)) for n in range(30)]
    db.insert_many(episodes)
    seen: list[str] = []
    cursor = None
    while True:
        page = db.query(base.EpisodeQuery(agent_id="bot", limit=page_size, cursor=cursor))
        assert len(page.items) <= page_size
        seen += [e.id for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(e.id for e in episodes) and len(seen) == 30
    by_id = {e.id: e.timestamp for e in episodes}
    stamps = [by_id[i] for i in seen]
    assert stamps == sorted(stamps, reverse=True)


def test_the_last_full_page_has_no_cursor(mixed: sqlite.SQLiteStore) -> None:
    page = mixed.query(base.EpisodeQuery(agent_id="other", limit=3))
    assert len(page.items) == 3 and page.next_cursor is None


@pytest.mark.parametrize(
    "query",
    [
        base.EpisodeQuery(cursor="not-a-cursor"),
        base.EpisodeQuery(limit=0),
        base.EpisodeQuery(min_reward=float("nan")),
    ],
    ids=["bad-cursor", "zero-limit", "nan-min-reward"],
)
def test_bad_query_input_raises_value_error(mixed: sqlite.SQLiteStore, query: base.EpisodeQuery) -> None:
    with pytest.raises(ValueError):
        mixed.query(query)


def test_iter_episodes_is_oldest_first_in_small_batches(db: sqlite.SQLiteStore) -> None:
    episodes = [make_episode(n, at=T0 + timedelta(seconds=n // 4)) for n in range(40)]
    db.insert_many(episodes)
    got = list(db.iter_episodes(base.EpisodeQuery(agent_id="bot"), batch_size=7))
    assert [e.id for e in got] == [e.id for e in episodes]


def test_iter_limit_caps_the_total(mixed: sqlite.SQLiteStore) -> None:
    got = list(mixed.iter_json(base.EpisodeQuery(agent_id="bot", limit=4), batch_size=3))
    assert [d["state"]["context"]["n"] for d in got] == [0, 1, 2, 3]


def test_iter_json_yields_exactly_to_json_dict(mixed: sqlite.SQLiteStore) -> None:
    mixed.add_label(
        make_episode(1, model_version="tuned-v2").id, ep.Label(score=0.3, grader="g", reason="meh", at=T0)
    )
    docs = list(mixed.iter_json(base.EpisodeQuery(), batch_size=4))
    assert len(docs) == 13
    for doc in docs:
        stored = mixed.get(doc["id"])
        assert stored is not None
        assert doc == stored.to_json_dict()
        assert "reward" in doc and "labeled" in doc


def test_iter_takes_no_cursor(mixed: sqlite.SQLiteStore) -> None:
    cursor = mixed.query(base.EpisodeQuery(limit=1)).next_cursor
    with pytest.raises(ValueError, match="no cursor"):
        next(mixed.iter_json(base.EpisodeQuery(cursor=cursor)))


def test_iteration_holds_no_read_transaction_between_batches(db: sqlite.SQLiteStore) -> None:
    db.insert_many([make_episode(n) for n in range(60)])
    it = db.iter_json(base.EpisodeQuery(), batch_size=10)
    first = [next(it) for _ in range(15)]
    assert db.path is not None
    other = sqlite.SQLiteStore(db.path)
    try:
        other.insert_many([make_episode(1000)])
    finally:
        other.close()
    with sqlite3.connect(db.path) as raw:
        busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "a reader pinned the WAL: the checkpoint could not complete"
    rest = list(it)
    assert len(first) + len(rest) == 61


# --- labels ----------------------------------------------------------------------------------------


def test_add_label_bumps_revision_and_recomputes_reward(db: sqlite.SQLiteStore) -> None:
    one = make_episode(1)
    db.insert_many([one])
    after = db.add_label(one.id, ep.Label(score=0.25, grader="judge", reason="partly"), expected_revision=1)
    assert (after.revision, after.reward, after.labeled) == (2, 0.25, True)
    after = db.add_label(one.id, ep.Label(score=0.9, grader="human", manual=True), expected_revision=2)
    after = db.add_label(one.id, ep.Label(score=0.1, grader="judge"), expected_revision=3)
    assert after.reward == 0.9, "a manual label wins over a newer automatic one"
    stored = db.get(one.id)
    assert stored is not None and stored == after
    assert [lab.grader for lab in stored.labels] == ["judge", "human", "judge"]
    assert db.count("bot", labeled=True) == 1


def test_an_episode_sent_with_labels_is_stored_with_the_reward_they_give(db: sqlite.SQLiteStore) -> None:
    """Labels that come with an episode (a reviewed export, a replay from another store) count at
    insert as on every later label: a manual label wins over the client's reward, a scored label
    makes the episode labeled, and ``labeled`` without any reward does not hide it from labeling."""
    manual = ep.Label(score=0.9, grader="human", manual=True)
    rows = {
        "manual label, no reward": make_episode(1).model_copy(update={"labels": [manual]}),
        "manual label beats reward": make_episode(2, reward=0.1).model_copy(update={"labels": [manual]}),
        "labeled, no reward": make_episode(3).model_copy(update={"labeled": True}),
        "failed grading, reward": make_episode(4, reward=0.7).model_copy(
            update={"labels": [ep.Label(grader="judge", error="timeout")]}
        ),
    }
    db.insert_many(list(rows.values()))
    stored = {name: db.get(episode.id) for name, episode in rows.items()}
    got = {name: (e.reward, e.labeled) for name, e in stored.items() if e is not None}
    assert got == {
        "manual label, no reward": (0.9, True),
        "manual label beats reward": (0.9, True),
        "labeled, no reward": (None, False),
        "failed grading, reward": (0.7, True),
    }
    unlabeled = db.query(base.EpisodeQuery(agent_id="bot", labeled=False)).items
    assert [e.id for e in unlabeled] == [rows["labeled, no reward"].id]
    high = db.query(base.EpisodeQuery(agent_id="bot", min_reward=0.8)).items
    assert {e.id for e in high} == {rows["manual label, no reward"].id, rows["manual label beats reward"].id}


def test_stale_revision_is_a_conflict_and_writes_nothing(db: sqlite.SQLiteStore) -> None:
    one = make_episode(1)
    db.insert_many([one])
    db.add_label(one.id, ep.Label(score=0.5, grader="a"))
    with pytest.raises(base.ConflictError, match="revision is 2, expected 1"):
        db.add_label(one.id, ep.Label(score=1.0, grader="b"), expected_revision=1)
    stored = db.get(one.id)
    assert stored is not None and stored.revision == 2 and stored.reward == 0.5 and len(stored.labels) == 1


def test_label_for_a_missing_episode_is_not_found(db: sqlite.SQLiteStore) -> None:
    with pytest.raises(base.NotFoundError, match="ep-nope"):
        db.add_label("ep-nope", ep.Label(score=1.0, grader="g"))


def test_a_failed_grading_keeps_the_episode_unlabeled(db: sqlite.SQLiteStore) -> None:
    db.insert_many([make_episode(1), make_episode(2, reward=0.7)])
    unlabeled = db.add_label(make_episode(1).id, ep.Label(grader="judge", error="timeout"))
    assert (unlabeled.reward, unlabeled.labeled) == (None, False)
    client_reward = db.add_label(make_episode(2).id, ep.Label(grader="judge", error="timeout"))
    assert (client_reward.reward, client_reward.labeled) == (0.7, True)


def test_labels_are_capped_dropping_the_oldest_automatic_one(db: sqlite.SQLiteStore) -> None:
    one = make_episode(1)
    db.insert_many([one])
    db.add_label(one.id, ep.Label(score=1.0, grader="human", manual=True, reason="keep"))
    for i in range(ep.MAX_LABELS):
        last = db.add_label(one.id, ep.Label(score=0.5, grader="judge", reason=f"auto {i}"))
    assert len(last.labels) == ep.MAX_LABELS
    assert last.labels[0].reason == "keep" and last.labels[1].reason == "auto 1"
    assert db.get(one.id) == last


def test_add_labels_applies_each_update_in_one_call(db: sqlite.SQLiteStore) -> None:
    a, b = make_episode(1), make_episode(2)
    db.insert_many([a, b])
    statuses = db.add_labels(
        [
            base.LabelUpdate(a.id, ep.Label(score=0.8, grader="g"), 1),
            base.LabelUpdate(b.id, ep.Label(score=0.8, grader="g"), 7),
            base.LabelUpdate("ep-missing", ep.Label(score=0.8, grader="g")),
            base.LabelUpdate(a.id, ep.Label(score=0.2, grader="g"), 2),
        ]
    )
    assert statuses == [
        base.LabelWriteStatus.APPLIED,
        base.LabelWriteStatus.CONFLICT,
        base.LabelWriteStatus.NOT_FOUND,
        base.LabelWriteStatus.APPLIED,
    ]
    stored_a, stored_b = db.get(a.id), db.get(b.id)
    assert stored_a is not None and stored_a.revision == 3 and stored_a.reward == 0.2
    assert stored_b is not None and stored_b.revision == 1 and not stored_b.labels


# --- statistics and housekeeping -------------------------------------------------------------------


def test_count_and_agents(mixed: sqlite.SQLiteStore) -> None:
    assert mixed.count() == 13
    assert mixed.count("bot") == 10
    assert mixed.count("bot", labeled=True) == 5
    assert mixed.count(labeled=False) == 8
    assert mixed.agents() == ["bot", "other"]


def test_reward_stats(mixed: sqlite.SQLiteStore) -> None:
    stats = mixed.reward_stats("bot")
    rewards = [0.0, 0.2, 0.4, 0.6, 0.8]
    mean = sum(rewards) / 5
    std = (sum((r - mean) ** 2 for r in rewards) / 5) ** 0.5
    assert (stats.count, stats.labeled) == (10, 5)
    assert stats.mean == pytest.approx(mean) and stats.std == pytest.approx(std)
    assert (stats.min, stats.max) == (0.0, 0.8)
    assert stats.last_timestamp == T0 + timedelta(seconds=9)
    since = mixed.reward_stats("bot", since=T0 + timedelta(seconds=6), model_version="base-v1")
    assert since.count == 2
    assert since.mean == pytest.approx(0.7) and since.std == pytest.approx(0.1)


def test_reward_stats_without_rewards(mixed: sqlite.SQLiteStore) -> None:
    stats = mixed.reward_stats("other")
    assert (stats.count, stats.labeled) == (3, 0)
    assert stats.mean is stats.std is stats.min is stats.max is None
    empty = mixed.reward_stats("nobody")
    assert (empty.count, empty.last_timestamp) == (0, None)


def test_equal_rewards_have_zero_std(db: sqlite.SQLiteStore) -> None:
    db.insert_many([make_episode(n, reward=0.7) for n in range(9)])
    assert db.reward_stats().std == 0.0


def test_purge_deletes_older_episodes_in_chunks(
    db: sqlite.SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "_PURGE_CHUNK", 3)
    db.insert_many([make_episode(n) for n in range(10)] + [make_episode(n, agent="other") for n in range(10)])
    assert db.purge_older_than(T0 + timedelta(seconds=7), agent_id="bot") == 7
    assert db.count("bot") == 3 and db.count("other") == 10
    assert db.purge_older_than(T0 + timedelta(seconds=5)) == 5
    assert db.count() == 8


# --- records ---------------------------------------------------------------------------------------


def test_records_are_created_once_and_updated_with_their_revision(db: sqlite.SQLiteStore) -> None:
    first = db.put_record("dataset", "ds-1", {"episodes": 10}, expected_revision=0)
    assert first.revision == 1
    with pytest.raises(base.ConflictError, match="dataset/ds-1 is at revision 1"):
        db.put_record("dataset", "ds-1", {"episodes": 11}, expected_revision=0)
    second = db.put_record("dataset", "ds-1", {"episodes": 12}, expected_revision=1)
    assert second.revision == 2
    with pytest.raises(base.ConflictError):
        db.put_record("dataset", "ds-1", {"episodes": 13}, expected_revision=1)
    third = db.put_record("dataset", "ds-1", {"episodes": 14})
    got = db.get_record("dataset", "ds-1")
    assert got is not None and got.data == {"episodes": 14} and got.revision == third.revision == 3


def test_expected_revision_on_a_missing_record_is_a_conflict(db: sqlite.SQLiteStore) -> None:
    with pytest.raises(base.ConflictError, match="does not exist"):
        db.put_record("job", "j", {}, expected_revision=2)
    assert db.get_record("job", "j") is None


def test_list_records_by_kind_sorted_by_name(db: sqlite.SQLiteStore) -> None:
    for name in ["b", "a", "c"]:
        db.put_record("job", name, {"name": name})
    db.put_record("dataset", "z", {})
    assert [r.name for r in db.list_records("job")] == ["a", "b", "c"]
    assert db.list_records("promotion") == []


@pytest.mark.parametrize(
    ("kind", "name", "data"),
    [("", "n", {}), ("k", "", {}), ("k", "n", {"when": object()}), ("k", "n", ["not", "a", "dict"])],
    ids=["empty-kind", "empty-name", "not-serialisable", "not-an-object"],
)
def test_bad_records_raise_value_error(db: sqlite.SQLiteStore, kind: str, name: str, data: Any) -> None:
    with pytest.raises(ValueError):
        db.put_record(kind, name, data)


# --- lifecycle ---------------------------------------------------------------------------------------


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    s = sqlite.SQLiteStore(tmp_path / "x.db")
    s.close()
    s.close()
    with pytest.raises(base.StoreError, match="closed"):
        s.count()


def test_data_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keep.db'}"
    opened = store_mod.open_store(url)
    try:
        opened.insert_many([make_episode(n) for n in range(3)])
        opened.put_record("job", "j", {"x": 1})
    finally:
        opened.close()
    with sqlite.SQLiteStore.from_url(url) as s:
        assert s.count() == 3 and s.get_record("job", "j") is not None
