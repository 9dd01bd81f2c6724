"""What the collector promises about acknowledged episodes when its process dies or is stopped.

Covers: ``kill -9`` while four clients ingest concurrently, then a restart on the same SQLite file:
every episode acknowledged in a 2xx response is in the store, ``PRAGMA integrity_check`` is ok and the
restarted collector accepts new batches; SIGTERM while large batches are in flight: every request
still gets its 200 after the signal, all their episodes are stored, the process logs its totals and
exits 0, and it accepts no new connections afterwards.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.collector_process import CollectorProcess, hold_write_lock, wait_for_metric

from lightning_op import store as store_mod

JSON = {"Content-Type": "application/json"}


def episode(worker: int, seq: int, agent: str) -> dict[str, Any]:
    return {
        "id": f"{agent}-{worker}-{seq}",
        "agentId": agent,
        "sessionId": f"w{worker}",
        "turn": seq % 1000,
        "timestamp": "2026-03-01T08:00:00Z",
        "state": {"query": f"worker {worker} asks question {seq}", "context": {"n": seq}},
        "action": {"tool": "answer", "arguments": {"seq": seq}},
        "result": "ok " * 50,
    }


def test_every_acknowledged_episode_survives_kill_9_and_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "episodes.db"
    store_url = f"sqlite:///{db}"
    collector = CollectorProcess(store_url).start()
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        seq = 0
        with httpx.Client(base_url=collector.url, timeout=10.0) as http:
            while not stop.is_set():
                batch = [episode(worker, seq + i, "durable-bot") for i in range(50)]
                seq += 50
                try:
                    answer = http.post("/v1/episodes", content=json.dumps(batch).encode(), headers=JSON)
                except httpx.HTTPError:
                    time.sleep(0.01)  # the collector is gone; keep trying until told to stop
                    continue
                if answer.status_code == 200:
                    ids = {
                        r["id"] for r in answer.json()["results"] if r["status"] in ("accepted", "duplicate")
                    }
                    with lock:
                        acknowledged.update(ids)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if len(acknowledged) >= 3000:
                break
        time.sleep(0.02)
    collector.kill()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(acknowledged) >= 3000, collector.log

    with CollectorProcess(store_url) as restarted:
        after = httpx.post(
            f"{restarted.url}/v1/episodes", content=json.dumps([episode(99, 0, "durable-bot")]), headers=JSON
        )
        assert after.status_code == 200 and after.json()["accepted"] == 1
    store = store_mod.open_store(store_url)
    try:
        missing = [i for i in sorted(acknowledged) if store.get(i) is None]
    finally:
        store.close()
    assert not missing, f"{len(missing)} acknowledged episodes lost, e.g. {missing[:5]}"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_sigterm_answers_the_batches_in_flight_then_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "episodes.db"
    collector = CollectorProcess(f"sqlite:///{db}").start()
    answers: dict[int, tuple[int, dict[str, Any]]] = {}

    def send(worker: int) -> None:
        batch = [episode(worker, seq, "drain-bot") for seq in range(1500)]
        answer = httpx.post(
            f"{collector.url}/v1/episodes", content=json.dumps(batch).encode(), headers=JSON, timeout=60
        )
        answers[worker] = (answer.status_code, answer.json())

    threads = [threading.Thread(target=send, args=(w,)) for w in range(6)]
    # With the file's write lock held elsewhere the writer waits, so all six batches are in flight.
    with hold_write_lock(db):
        for thread in threads:
            thread.start()
        wait_for_metric(collector.url, "lightning_collector_batches_pending", 6)
        collector.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert answers == {} and collector.proc.poll() is None
    for thread in threads:
        thread.join(60)
    code = collector.proc.wait(30)

    assert code == 0, collector.log
    assert sorted(answers) == list(range(6))
    assert all(status == 200 and body["accepted"] == 1500 for status, body in answers.values())
    log = collector.log
    assert "collector stopping" in log and "collector stopped" in log and "9000 episodes accepted" in log
    store = store_mod.open_store(f"sqlite:///{db}")
    try:
        assert store.count(agent_id="drain-bot") == 9000
    finally:
        store.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{collector.url}/healthz", timeout=2)
