"""Personal data and secrets sent through the collector never reach its logs or the database file.

Covers: emails, payment card numbers, phone numbers, API keys, bearer tokens and passwords planted in
every free-text field (query, context, tool arguments, result, chat messages, error, session id),
sent by the capture client, as a raw JSON batch, as gzip JSON Lines, and inside episodes the
collector rejects: the collector, run with debug logging, writes none of them to stderr; none of
their bytes are in the SQLite files (database and WAL) after shutdown; the stored episodes carry
``[REDACTED:<kind>]`` placeholders and redaction counts instead.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
from support.collector_process import CollectorProcess

from lightning_op import store as store_mod
from lightning_op.collector import capture
from lightning_op.store import base as store_base

PLANTED = {
    "email": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "card-dashed": "5500-0000-0000-0004",
    "phone": "+44 20 7946 0958",
    "openai-key": "sk-proj-Zx81Qw72Er63Ty54Ui45Op36As27",
    "github-token": "ghp_Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "password": "hunter2-Correct-Horse",
}


def pii_episode(n: int, agent: str = "pii-bot") -> dict[str, Any]:
    return {
        "agentId": agent,
        "sessionId": f"session of {PLANTED['email']}",
        "turn": n,
        "state": {
            "query": f"Email {PLANTED['email']} or call {PLANTED['phone']} about card {PLANTED['card']}",
            "context": {"profile": {"email": PLANTED["email"], "card": PLANTED["card-dashed"]}},
        },
        "action": {
            "tool": "charge_card",
            "arguments": {"card": PLANTED["card"], "api_key": PLANTED["openai-key"]},
        },
        "messages": [
            {"role": "user", "content": f"my github token is {PLANTED['github-token']}"},
            {"role": "assistant", "content": f"calling with Authorization: Bearer {PLANTED['jwt']}"},
        ],
        "result": {"receipt": f"sent to {PLANTED['email']}", "password": PLANTED["password"]},
        "error": f"login failed with password={PLANTED['password']}",
    }


def test_planted_personal_data_reaches_neither_logs_nor_the_database_file(tmp_path: Path) -> None:
    db = tmp_path / "episodes.db"
    store_url = f"sqlite:///{db}"
    with CollectorProcess(store_url, verbose=True) as collector:
        recorder = capture.EpisodeRecorder(collector.url, "pii-bot", flush_interval=0.05)
        for turn in range(5):
            with recorder.record(
                query=f"I am {PLANTED['email']}, card {PLANTED['card']}", session_id="capture", turn=turn
            ) as rec:
                rec.action("pay", {"card": PLANTED["card-dashed"], "token": PLANTED["github-token"]})
                rec.result(f"charged; call {PLANTED['phone']}")
        assert recorder.flush(10)
        recorder.close()

        with httpx.Client(base_url=collector.url) as http:
            raw = http.post(
                "/v1/episodes",
                content=json.dumps([pii_episode(n) for n in range(5)]).encode(),
                headers={"Content-Type": "application/json"},
            )
            lines = "\n".join(json.dumps(pii_episode(n)) for n in range(5, 10)).encode()
            packed = http.post(
                "/v1/episodes",
                content=gzip.compress(lines),
                headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
            )
            invalid = [{**pii_episode(n, agent="pii rejected"), "turn": -1} for n in range(3)]
            rejected = http.post(
                "/v1/episodes",
                content=json.dumps(invalid).encode(),
                headers={"Content-Type": "application/json"},
            )
            not_json = http.post(
                "/v1/episodes",
                content=f"{{oops {PLANTED['email']} {PLANTED['jwt']}".encode(),
                headers={"Content-Type": "application/json"},
            )

    assert collector.proc.returncode == 0
    assert recorder.stats["accepted"] == 5
    assert raw.json()["accepted"] == 5 and packed.json()["accepted"] == 5
    assert rejected.status_code == 422 and not_json.status_code == 400
    assert "DEBUG" in collector.log, "the collector should have run with debug logging"
    for kind, value in PLANTED.items():
        assert value not in collector.log, f"{kind} leaked into the collector's log"

    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("episodes.db"))
    assert files and files[0] == db
    data = b"".join(p.read_bytes() for p in files)
    for kind, value in PLANTED.items():
        for form in {value, value.replace(" ", ""), value.replace("-", "")}:
            assert form.encode() not in data, f"{kind} ({form}) is in the database files"

    store = store_mod.open_store(store_url)
    try:
        episodes = list(store.iter_episodes(store_base.EpisodeQuery(agent_id="pii-bot")))
    finally:
        store.close()
    assert len(episodes) == 15
    for episode in episodes:
        assert "[REDACTED:" in episode.state.query
        assert episode.redactions.get("email", 0) + episode.redactions.get("credit_card", 0) >= 1


def test_an_id_derived_by_the_collector_does_not_fingerprint_what_was_redacted(tmp_path: Path) -> None:
    """An episode sent without an id gets one derived from the content the store keeps: a hash of the
    content as sent would let anyone with the stored episode find a redacted phone number again by
    trying numbers. The same body sent again maps to the same id (a duplicate), from the capture
    client too (which sends no id of its own)."""
    from lightning_op.api import episode as ep

    sent = {
        "agentId": "id-bot",
        "sessionId": "s-1",
        "turn": 0,
        "timestamp": "2026-01-10T12:00:00Z",
        "state": {"query": f"please call me back on {PLANTED['phone']}"},
        "action": {"tool": "callback", "arguments": {}},
    }
    raw_content_id = ep.parse_episode(sent).id
    store_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    with CollectorProcess(store_url) as collector:
        with httpx.Client(base_url=collector.url) as http:
            first = http.post("/v1/episodes", json=[sent]).json()
            again = http.post("/v1/episodes", json=[sent]).json()
        recorder = capture.EpisodeRecorder(collector.url, "id-bot", flush_interval=0.05)
        with recorder.record(query=f"call {PLANTED['phone']}", session_id="s-2", turn=0):
            pass
        assert recorder.flush(10)
        recorder.close()

    assert (first["accepted"], again["duplicates"]) == (1, 1)
    stored_id = first["results"][0]["id"]
    assert again["results"][0]["id"] == stored_id != raw_content_id
    store = store_mod.open_store(store_url)
    try:
        episodes = {e.session_id: e for e in store.iter_episodes(store_base.EpisodeQuery(agent_id="id-bot"))}
    finally:
        store.close()
    assert set(episodes) == {"s-1", "s-2"}
    for episode in episodes.values():
        assert "[REDACTED:phone]" in (episode.state.query or "")
        # the id is the hash of what is stored, nothing else
        recomputed = ep.Episode.model_validate({k: v for k, v in episode.to_json_dict().items() if k != "id"})
        assert episode.id == recomputed.id
    assert episodes["s-1"].id == stored_id


def test_sessions_named_by_an_email_stay_apart_once_redaction_makes_them_look_alike(tmp_path: Path) -> None:
    """Two users whose session ids are their emails ask the same first question: redaction turns
    both session ids into the same placeholder, and the derived ids must still differ, or the
    second user's episode is dropped as a duplicate of the first. A resent batch is still a
    duplicate, and the id can still be checked from what the store keeps."""
    from lightning_op.api import episode as ep

    def turn_zero(user: str, when: str) -> dict[str, Any]:
        return {
            "agentId": "mail-bot",
            "sessionId": user,
            "turn": 0,
            "timestamp": when,
            "state": {"query": "what is my order status?"},
            "action": {"tool": "order_status", "arguments": {}},
        }

    alice = turn_zero("alice@example.com", "2026-01-01T09:00:00Z")
    bob = turn_zero("bob@example.com", "2026-01-02T10:30:00Z")
    store_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    with CollectorProcess(store_url) as collector, httpx.Client(base_url=collector.url) as http:
        first = http.post("/v1/episodes", json=[alice]).json()
        second = http.post("/v1/episodes", json=[bob]).json()
        resent = http.post("/v1/episodes", json=[alice, bob]).json()

    assert (first["accepted"], second["accepted"]) == (1, 1), second
    assert first["results"][0]["id"] != second["results"][0]["id"]
    assert (resent["accepted"], resent["duplicates"]) == (0, 2)
    with store_mod.open_store(store_url) as store:
        stored = store.query(store_base.EpisodeQuery(agent_id="mail-bot")).items
    assert sorted(e.session_id or "" for e in stored) == ["[REDACTED:email]"] * 2
    for episode in stored:
        recomputed = ep.Episode.model_validate({k: v for k, v in episode.to_json_dict().items() if k != "id"})
        assert episode.id == recomputed.id


def test_an_episode_that_redaction_grows_past_the_limit_is_refused_alone(tmp_path: Path) -> None:
    """Placeholders are longer than short emails: a result of 25,000 of them grows past the store's
    limit for one field only after redaction. That episode is rejected with a reason naming the
    field; the good episodes of the same batch are stored (an id-less episode, as the capture
    client sends, once made the whole batch a 500)."""
    good = [
        {"agentId": "big-bot", "turn": n, "state": {"query": f"question {n}"}, "result": {"ok": n}}
        for n in range(3)
    ]
    grown = {
        "agentId": "big-bot",
        "turn": 9,
        "state": {"query": "list the emails"},
        "result": ["a@b.co"] * 25_000,
    }
    store_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    with CollectorProcess(store_url) as collector, httpx.Client(base_url=collector.url) as http:
        answer = http.post("/v1/episodes", json=[good[0], grown, *good[1:]])

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["accepted"], body["rejected"]) == (3, 1)
    refused = body["results"][1]
    assert refused["status"] == "rejected"
    assert "result" in refused["reason"] and "after redaction" in refused["reason"]
    with store_mod.open_store(store_url) as store:
        stored = store.query(store_base.EpisodeQuery(agent_id="big-bot")).items
    assert sorted(e.turn for e in stored) == [0, 1, 2]


def test_custom_redaction_patterns_keep_matches_out_of_the_database(tmp_path: Path) -> None:
    """``--redact-pattern`` (EpisodeCapture's spec.redaction.patterns) applies before the write."""
    db = tmp_path / "episodes.db"
    order_id = "ORD-8841-2290"
    with CollectorProcess(f"sqlite:///{db}", "--redact-pattern", r"ORD-\d{4}-\d{4}") as collector:
        episode = {
            "agentId": "orders",
            "turn": 1,
            "state": {"query": f"where is order {order_id}?"},
            "action": {"tool": "track_order", "arguments": {"order": order_id}},
        }
        with httpx.Client(base_url=collector.url) as http:
            answer = http.post("/v1/episodes", json=[episode])
        assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert collector.proc.returncode == 0
    for path in tmp_path.glob("episodes.db*"):
        assert order_id.encode() not in path.read_bytes(), f"{order_id} found in {path.name}"
    with store_mod.open_store(f"sqlite:///{db}") as store:
        (stored,) = store.query(store_base.EpisodeQuery(agent_id="orders")).items
    assert stored.state.query == "where is order [REDACTED:custom]?"
    assert stored.redactions.get("custom") == 2
