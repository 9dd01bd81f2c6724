"""The SQLite store shared by processes: one writer, many readers, racing labelers, a killed writer.

Covers: a writer process inserting batches while three reader processes count, page and iterate
the same file: nobody errors or waits out a lock, readers never see a count go down nor a partial
batch, and every episode is there at the end; two processes labeling the same episodes with the
same expected revision: exactly one wins each episode and the other gets ``ConflictError``, with
one label written; a writer killed with SIGKILL mid-stream: every batch it had been told was
committed is in the file when it is opened again.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest

from lightning_op.api import episode as ep
from lightning_op.store import base, sqlite

# fork: the children start in milliseconds and open their own store (nothing is open before fork).
CTX = mp.get_context("fork")
T0 = datetime(2026, 1, 10, tzinfo=UTC)
BATCHES = 40
BATCH = 50


def _episode(n: int) -> ep.Episode:
    return ep.Episode(
        agent_id="bot",
        session_id=f"s{n}",
        turn=0,
        timestamp=T0 + timedelta(milliseconds=n),
        state=ep.State(query=f"question {n} " + "context " * 40),
    )


def _write(path: str, start: Event) -> None:
    start.wait(10)
    with sqlite.SQLiteStore(path) as store:
        for b in range(BATCHES):
            store.insert_many([_episode(b * BATCH + i) for i in range(BATCH)])


def _read(path: str, start: Event, done: Event, out: Any) -> None:
    report: dict[str, Any] = {"checks": 0, "errors": [], "last": 0}
    try:
        with sqlite.SQLiteStore(path) as store:
            start.wait(10)
            while True:
                finished = done.is_set()
                n = store.count("bot")
                if n < report["last"]:
                    report["errors"].append(f"count went down: {report['last']} -> {n}")
                if n % BATCH:
                    report["errors"].append(f"saw a partial batch: {n} episodes")
                report["last"] = n
                page = store.query(base.EpisodeQuery(agent_id="bot", limit=25))
                stamps = [e.timestamp for e in page.items]
                if stamps != sorted(stamps, reverse=True):
                    report["errors"].append("a page was not newest first")
                seen = sum(1 for _ in store.iter_json(base.EpisodeQuery(agent_id="bot"), batch_size=300))
                if seen < n:
                    report["errors"].append(f"iter_json saw {seen} after count said {n}")
                report["checks"] += 1
                if finished:
                    break
    except Exception as exc:  # reported to the parent, which fails the test with it
        report["errors"].append(f"{type(exc).__name__}: {exc}")
    out.put(report)


def test_one_writer_and_several_readers_work_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    sqlite.SQLiteStore(path).close()
    start, done = CTX.Event(), CTX.Event()
    out = CTX.Queue()
    readers = [CTX.Process(target=_read, args=(path, start, done, out)) for _ in range(3)]
    writer = CTX.Process(target=_write, args=(path, start))
    for p in [*readers, writer]:
        p.start()
    start.set()
    writer.join(60)
    assert writer.exitcode == 0
    done.set()
    reports = [out.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(10)
    for report in reports:
        assert report["errors"] == []
        assert report["checks"] >= 2, report
        assert report["last"] == BATCHES * BATCH
    with sqlite.SQLiteStore(path) as store:
        assert store.count() == BATCHES * BATCH


ROUNDS = 6


def _label(path: str, ids: list[str], barrier: Barrier, grader: str, out: Any) -> None:
    results = []
    with sqlite.SQLiteStore(path) as store:
        for episode_id in ids:
            barrier.wait(10)
            try:
                store.add_label(episode_id, ep.Label(score=0.5, grader=grader), expected_revision=1)
                results.append("won")
            except base.ConflictError:
                results.append("conflict")
    out.put((grader, results))


def test_concurrent_labels_with_the_same_revision_have_exactly_one_winner(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    ids = [_episode(n).id for n in range(ROUNDS)]
    with sqlite.SQLiteStore(path) as store:
        store.insert_many([_episode(n) for n in range(ROUNDS)])
    barrier = CTX.Barrier(2)
    out = CTX.Queue()
    procs = [CTX.Process(target=_label, args=(path, ids, barrier, g, out)) for g in ("a", "b")]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    for i, episode_id in enumerate(ids):
        outcomes = sorted([results["a"][i], results["b"][i]])
        assert outcomes == ["conflict", "won"], f"episode {i}: {outcomes}"
        winner = "a" if results["a"][i] == "won" else "b"
        with sqlite.SQLiteStore(path) as store:
            stored = store.get(episode_id)
        assert stored is not None and stored.revision == 2
        assert [label.grader for label in stored.labels] == [winner]


def _write_until_killed(path: str, acks: Any) -> None:
    with sqlite.SQLiteStore(path) as store:
        n = 0
        while True:
            batch = [_episode(n + i) for i in range(20)]
            store.insert_many(batch)
            n += len(batch)
            acks.put(n)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_acknowledged_batches_survive_kill_9_of_the_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "crash.db")
    sqlite.SQLiteStore(path).close()
    acks = CTX.Queue()
    writer = CTX.Process(target=_write_until_killed, args=(path, acks))
    writer.start()
    acked = 0
    deadline = time.monotonic() + 30
    while acked < 400 and time.monotonic() < deadline:
        acked = max(acked, acks.get(timeout=30))
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(10)
    assert writer.exitcode == -signal.SIGKILL
    while True:
        try:
            acked = max(acked, acks.get_nowait())
        except (queue.Empty, EOFError, OSError):
            break
    assert acked >= 400
    with sqlite.SQLiteStore(path) as store:
        stored = store.count()
        assert stored >= acked
        assert all(store.get(_episode(n).id) is not None for n in range(0, acked, 7))
