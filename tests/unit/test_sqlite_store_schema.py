"""Schema versions and failure reporting of the SQLite store (``store/sqlite.py``).

Covers: a new file gets the latest schema version; a file left at an older version (built with the
first migration only, with an episode in it) is migrated on open, keeps its data and gains the new
index, which labeled queries then use; a failing migration step leaves the file at its old version;
a file from a newer lightning-op is refused with "upgrade"; and sqlite failures become store errors
that say what happened: a write lock held too long and a full database are ``StoreUnavailableError``
(retry later), a file that is not a database and a path that cannot be created say so.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lightning_op.api import episode as ep
from lightning_op.store import base, sqlite

T0 = datetime(2026, 1, 10, tzinfo=UTC)


def _episode(n: int, text: str = "") -> ep.Episode:
    return ep.Episode(
        agent_id="bot", session_id=f"s{n}", turn=0, timestamp=T0, state=ep.State(query=f"q{n} {text}")
    )


def _version(path: Path) -> int:
    with sqlite3.connect(path) as raw:
        return int(raw.execute("PRAGMA user_version").fetchone()[0])


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_new_file_has_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    sqlite.SQLiteStore(path).close()
    assert _version(path) == sqlite.SCHEMA_VERSION == len(sqlite.MIGRATIONS)


def test_an_old_version_file_is_migrated_and_keeps_its_episodes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = _episode(1).model_copy(update={"revision": 1})
    raw = sqlite3.connect(path, isolation_level=None)
    assert sqlite.migrate(raw, target=1) == 0
    raw.execute(
        "INSERT INTO episodes (id, agent_id, ts, labeled, reward, model_version, revision, doc) "
        "VALUES (?, ?, ?, 0, NULL, NULL, 1, ?)",
        (old.id, old.agent_id, 1_768_003_200_000_000, old.model_dump_json(by_alias=True)),
    )
    raw.close()
    assert _version(path) == 1 and "episodes_agent_labeled_ts" not in _indexes(path)

    with sqlite.SQLiteStore(path) as store:
        assert store.get(old.id) == old
        assert [e.id for e in store.query(base.EpisodeQuery(agent_id="bot", labeled=False)).items] == [old.id]
        store.add_label(old.id, ep.Label(score=1.0, grader="g"), expected_revision=1)

    assert _version(path) == sqlite.SCHEMA_VERSION
    assert "episodes_agent_labeled_ts" in _indexes(path)
    with sqlite3.connect(path) as raw2:
        plan = " ".join(
            str(r[3])
            for r in raw2.execute(
                "EXPLAIN QUERY PLAN SELECT doc FROM episodes WHERE agent_id = 'bot' AND labeled = 0 "
                "ORDER BY ts DESC LIMIT 10"
            )
        )
    assert "episodes_agent_labeled_ts" in plan


def test_a_failing_migration_step_leaves_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v.db"
    with sqlite.SQLiteStore(path) as store:
        store.insert_many([_episode(1)])
    broken = (*sqlite.MIGRATIONS, ("CREATE TABLE new_table (x)", "CREATE TABLE episodes (x)"))
    monkeypatch.setattr(sqlite, "MIGRATIONS", broken)
    monkeypatch.setattr(sqlite, "SCHEMA_VERSION", len(broken))
    raw = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        sqlite.migrate(raw, target=len(broken))
    raw.close()
    assert _version(path) == len(broken) - 1
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT name FROM sqlite_master WHERE name = 'new_table'").fetchone() is None


def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    sqlite.SQLiteStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {sqlite.SCHEMA_VERSION + 1}")
    with pytest.raises(base.StoreError, match="newer than this lightning-op supports.*upgrade"):
        sqlite.SQLiteStore(path)


# --- failures ----------------------------------------------------------------------------------------


def test_a_write_lock_held_too_long_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    with sqlite.SQLiteStore(path, busy_timeout_s=0.2) as store:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(base.StoreUnavailableError, match="database is locked.*retry later"):
                store.insert_many([_episode(1)])
            assert time.monotonic() - started >= 0.15, "it should wait for the lock before giving up"
            # Reads are not blocked by a writer in WAL mode.
            assert store.count() == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert store.insert_many([_episode(1)]).accepted == [_episode(1).id]


def test_a_full_database_is_store_unavailable_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    with sqlite.SQLiteStore(path) as store:
        # Cap the file's size, as a full disk would (the store has no public knob for this).
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        batch = [_episode(n, "x" * 2000) for n in range(50)]
        with pytest.raises(base.StoreUnavailableError, match="full"):
            store.insert_many(batch)
        assert store.count() == 0


def test_a_file_that_is_not_a_database_says_so(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database" * 200)
    with pytest.raises(base.StoreError, match="not a SQLite database"):
        sqlite.SQLiteStore(path)


def test_a_path_that_cannot_be_created_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(base.StoreUnavailableError, match="cannot create"):
        sqlite.SQLiteStore(blocker / "sub" / "e.db")
