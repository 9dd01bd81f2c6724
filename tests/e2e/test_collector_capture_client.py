"""The capture client (``collector.capture.EpisodeRecorder``) against a real collector process.

Covers: an agent process configured only by ``EpisodeCapture``'s env vars records with the context
manager, the decorator and ``submit`` and exits without flushing, and every episode reaches the store
at exit with ``modelVersion`` from ``TUNED_MODEL_NAME`` and errors recorded (and re-raised); sampling
keeps or drops whole sessions; a collector that is down never blocks the agent (10,000 ``record()``
calls return within a second, drops are counted, ``close`` and interpreter exit are bounded); 429 and
503 with ``Retry-After`` are honoured, per-item rejections are final, a refused token is not retried;
gzip bodies; a disabled recorder does nothing. Redaction from ``EpisodeCapture``'s env
(``EPISODE_REDACT_BUILTINS``, ``EPISODE_REDACT_PATTERNS``) is applied in the agent: an order number
(a custom pattern the collector does not know) and an email land redacted in the store and never
appear in what the agent sends; redaction env the client cannot use turns capture off with an error
logged, and an episode the redactor fails on is dropped and counted: nothing leaves unredacted.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.collector_process import CollectorProcess, hold_write_lock, wait_for_metric

from lightning_op import store as store_mod
from lightning_op.collector import capture
from lightning_op.store import base as store_base
from lightning_op.store import redaction

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('capture') / 'episodes.db'}"


@pytest.fixture(scope="module")
def collector(store_url: str) -> Iterator[CollectorProcess]:
    with CollectorProcess(store_url) as proc:
        yield proc


def stored(store_url: str, agent: str) -> list[Any]:
    store = store_mod.open_store(store_url)
    try:
        return list(store.iter_episodes(store_base.EpisodeQuery(agent_id=agent)))
    finally:
        store.close()


AGENT_SCRIPT = textwrap.dedent(
    """
    from lightning_op.collector.capture import EpisodeRecorder

    recorder = EpisodeRecorder.from_env(flush_interval=30.0)  # only the exit flush sends

    for n in range(50):
        try:
            with recorder.record(query=f"order {n}?", session_id=f"s{n // 10}", turn=n % 10) as rec:
                rec.action("lookup_order", {"order": n})
                if n % 10 == 9:
                    raise KeyError(f"order {n} not found")
                rec.result({"status": "shipped"})
        except KeyError:
            pass

    @recorder.capture
    def get_weather(city: str, query: str = "") -> dict:
        return {"city": city, "forecast": "sunny"}

    for city in ("Paris", "Oslo", "Lima"):
        get_weather(city, query=f"weather in {city}?")

    recorder.submit({"state": {"query": "submitted"}, "sessionId": "x", "turn": 0, "result": "ok"})
    print("agent done")
    """
)


def send_turns(recorder: capture.EpisodeRecorder, turns: int, session: str = "s") -> None:
    """Record ``turns`` empty turns of one session, wait until the recorder delivered them, close it."""
    for turn in range(turns):
        with recorder.record(query="q", session_id=session, turn=turn):
            pass
    assert recorder.flush(10)
    recorder.close()


def run_agent(
    collector: CollectorProcess, tmp_path: Path, script: str, agent: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as an agent process with the capture env an EpisodeCapture sets (plus ``env``)."""
    capture_env = {
        "ENABLE_EPISODE_CAPTURE": "true",
        "EPISODE_COLLECTOR_URL": collector.url,
        "EPISODE_AGENT_ID": agent,
        "EPISODE_SAMPLING_RATE": "1",
        **env,
    }
    (tmp_path / "agent.py").write_text(script)
    return subprocess.run(
        [sys.executable, str(tmp_path / "agent.py")],
        env={**collector.env, **capture_env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_agent_configured_by_env_delivers_every_episode_at_exit(
    collector: CollectorProcess, store_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    done = run_agent(
        collector,
        tmp_path,
        AGENT_SCRIPT,
        "shop-bot",
        USE_TUNED_MODEL="true",
        TUNED_MODEL_NAME="shop-tuned-v2",
        MODEL_NAME="shop-base",
    )

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20
    episodes = stored(store_url, "shop-bot")
    assert len(episodes) == 54
    assert {e.model_version for e in episodes} == {"shop-tuned-v2"}
    failed = sorted(e.state.query for e in episodes if e.error)
    assert failed == [f"order {n}?" for n in (19, 29, 39, 49, 9)]
    assert all(e.error and e.error.startswith("KeyError") for e in episodes if e.error)
    weather = [e for e in episodes if e.action and e.action.tool == "get_weather"]
    assert sorted(e.action.arguments["city"] for e in weather if e.action) == ["Lima", "Oslo", "Paris"]
    assert all(e.result["forecast"] == "sunny" and e.state.query.startswith("weather in") for e in weather)
    assert [e.result for e in episodes if e.state.query == "submitted"] == ["ok"]


REDACTING_AGENT_SCRIPT = textwrap.dedent(
    """
    from lightning_op.collector.capture import EpisodeRecorder

    recorder = EpisodeRecorder.from_env(flush_interval=30.0)
    with recorder.record(query="where is ORD-12345678?", session_id="s1", turn=0) as rec:
        rec.set_context({"customer": "ann@example.com"})
        rec.action("lookup_order", {"order": "ORD-12345678", "notify": "ann@example.com"})
        rec.result("ORD-12345678 shipped, mail sent to ann@example.com")
    recorder.submit({"state": {"query": "status of ORD-87654321"}, "sessionId": "s2", "result": "ok"})
    print("agent done")
    """
)
REDACTION_ENV = {
    "EPISODE_REDACT_BUILTINS": "email,phone",
    "EPISODE_REDACT_PATTERNS": json.dumps(["ORD-[0-9]{8}"]),
}


def test_an_agent_redacts_order_numbers_and_emails_before_they_reach_the_store(
    collector: CollectorProcess, store_url: str, tmp_path: Path
) -> None:
    done = run_agent(collector, tmp_path, REDACTING_AGENT_SCRIPT, "order-bot", **REDACTION_ENV)

    assert done.returncode == 0, done.stderr
    episodes = {e.session_id: e for e in stored(store_url, "order-bot")}
    assert set(episodes) == {"s1", "s2"}
    raw = json.dumps([e.to_json_dict() for e in episodes.values()])
    assert "ORD-" not in raw and "ann@example.com" not in raw
    first = episodes["s1"]
    assert first.state.query == "where is [REDACTED:custom]?"
    assert first.state.context == {"customer": "[REDACTED:email]"}
    assert first.action is not None
    assert first.action.arguments == {"order": "[REDACTED:custom]", "notify": "[REDACTED:email]"}
    assert first.result == "[REDACTED:custom] shipped, mail sent to [REDACTED:email]"
    assert first.redactions == {"custom": 3, "email": 3}
    assert episodes["s2"].state.query == "status of [REDACTED:custom]"


def test_redaction_happens_before_an_episode_leaves_the_agent() -> None:
    env = {
        "ENABLE_EPISODE_CAPTURE": "true",
        "EPISODE_AGENT_ID": "order-bot",
        # no builtins at the agent: what it sends shows the custom pattern alone was applied
        "EPISODE_REDACT_BUILTINS": "",
        "EPISODE_REDACT_PATTERNS": REDACTION_ENV["EPISODE_REDACT_PATTERNS"],
    }
    with ScriptedCollector([(200, {}, None)]) as server:
        recorder = capture.EpisodeRecorder.from_env(
            {**env, "EPISODE_COLLECTOR_URL": server.url}, flush_interval=0.01
        )
        with recorder.record(query="ORD-12345678 for bob@example.com", session_id="s", turn=0):
            pass
        assert recorder.flush(10)
        recorder.close()

    [[sent]] = server.bodies
    assert sent["state"]["query"] == "[REDACTED:custom] for bob@example.com"
    assert sent["redactions"] == {"custom": 1}


@pytest.mark.parametrize(
    "redaction_env",
    [
        pytest.param({"EPISODE_REDACT_PATTERNS": "(unclosed"}, id="not-json"),
        pytest.param({"EPISODE_REDACT_PATTERNS": '["(unclosed"]'}, id="bad-regex"),
        pytest.param(
            {"EPISODE_REDACT_PATTERNS": '["(ORD-)?[0-9]*"]', "EPISODE_REDACT_BUILTINS": ""}, id="empty-match"
        ),
        pytest.param({"EPISODE_REDACT_PATTERNS": '{"p": "ORD"}'}, id="not-a-list"),
        pytest.param({"EPISODE_REDACT_BUILTINS": "email,ssn"}, id="unknown-builtin"),
    ],
)
def test_unusable_redaction_env_turns_capture_off(
    redaction_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    env = {"ENABLE_EPISODE_CAPTURE": "true", "EPISODE_AGENT_ID": "order-bot", **redaction_env}
    with ScriptedCollector([(200, {}, None)]) as server, caplog.at_level(logging.ERROR):
        recorder = capture.EpisodeRecorder.from_env({**env, "EPISODE_COLLECTOR_URL": server.url})
        with recorder.record(query="ORD-12345678", session_id="s", turn=0) as rec:
            rec.result("x")
        assert recorder.submit({"state": {"query": "ORD-12345678"}}) is False
        recorder.close()

    assert not recorder.enabled and not rec.sampled
    assert server.bodies == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "capture is off" in errors[0] and "EPISODE_REDACT" in errors[0]


def test_an_episode_the_redactor_fails_on_is_dropped_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(redaction.Redactor):
        def redacted_episode(self, episode: Any) -> Any:
            if "ORD-" in episode.state.query:
                raise RuntimeError(f"boom on {episode.state.query}")
            return super().redacted_episode(episode)

    with ScriptedCollector([(200, {}, None)]) as server, caplog.at_level(logging.WARNING):
        recorder = capture.EpisodeRecorder(server.url, "order-bot", redactor=Failing(), flush_interval=0.01)
        for turn, query in enumerate(["ORD-12345678", "hello", "ORD-87654321"]):
            with recorder.record(query=query, session_id="s", turn=turn):
                pass
        assert recorder.flush(10)
        recorder.close()

    assert [e["state"]["query"] for body in server.bodies for e in body] == ["hello"]
    assert recorder.stats["redaction_failed"] == 2 and recorder.stats["accepted"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not be redacted" in m for m in messages) == 1
    assert not any("ORD-" in m for m in messages), "the log must not quote what was not redacted"


def test_sampling_keeps_or_drops_whole_sessions(collector: CollectorProcess, store_url: str) -> None:
    recorder = capture.EpisodeRecorder(collector.url, "sampled-bot", sampling_rate=0.5, flush_interval=0.05)
    for session in range(40):
        for turn in range(5):
            with recorder.record(query=f"q{session}-{turn}", session_id=f"sess-{session}", turn=turn) as rec:
                rec.result(turn)
    assert recorder.flush(10)
    recorder.close()

    per_session: dict[str | None, int] = {}
    for episode in stored(store_url, "sampled-bot"):
        per_session[episode.session_id] = per_session.get(episode.session_id, 0) + 1
    assert set(per_session.values()) == {5}
    assert 8 <= len(per_session) <= 32
    stats = recorder.stats
    assert stats["recorded"] == 5 * len(per_session)
    assert stats["recorded"] + stats["sampled_out"] == 200
    assert stats["accepted"] == stats["recorded"]


def test_the_decorator_keeps_whole_sessions_named_by_a_uuid(
    collector: CollectorProcess, store_url: str
) -> None:
    """A session argument that is not a string (a UUID, a number) still names the session: its calls
    are sampled together and stored with the session id (it was dropped: sessions came out split)."""
    recorder = capture.EpisodeRecorder(collector.url, "uuid-bot", sampling_rate=0.5, flush_interval=0.05)

    @recorder.capture
    def lookup(query: str, session_id: uuid.UUID) -> str:
        return query.upper()

    sessions = [uuid.UUID(int=n) for n in range(30)]
    for session in sessions:
        for turn in range(4):
            lookup(f"question {turn}", session)
    assert recorder.flush(10)
    recorder.close()

    per_session: dict[str | None, int] = {}
    for episode in stored(store_url, "uuid-bot"):
        per_session[episode.session_id] = per_session.get(episode.session_id, 0) + 1
    assert set(per_session) <= {str(s) for s in sessions}, "stored with the session id"
    assert set(per_session.values()) == {4}, "each session kept or dropped whole"


def test_gzip_batches_and_exceptions_in_the_with_block(collector: CollectorProcess, store_url: str) -> None:
    recorder = capture.EpisodeRecorder(collector.url, "gzip-bot", gzip=True, flush_interval=0.05)
    with pytest.raises(ZeroDivisionError):
        with recorder.record(query="divide", session_id="s", turn=0) as rec:
            rec.action("divide", {"a": 1, "b": 0})
            rec.result(1 / 0)
    for turn in range(1, 150):
        with recorder.record(query="hello", session_id="s", turn=turn) as rec:
            rec.message("user", "hello")
            rec.message("assistant", "hi there")
    assert recorder.flush(10)
    recorder.close()

    episodes = stored(store_url, "gzip-bot")
    assert len(episodes) == 150
    errors = [e.error for e in episodes if e.error]
    assert errors == ["ZeroDivisionError: division by zero"]
    assert recorder.stats["accepted"] == 150


def test_a_dead_collector_never_blocks_the_agent(free_port: int) -> None:
    recorder = capture.EpisodeRecorder(
        f"http://127.0.0.1:{free_port}", "offline-bot", max_buffer=1000, backoff_base=0.05
    )

    started = time.perf_counter()
    for n in range(10_000):
        with recorder.record(query="where is my parcel?", session_id=f"s{n}", turn=0) as rec:
            rec.action("track_parcel", {"parcel": n})
            rec.result({"status": "in transit"})
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0, f"10,000 record() calls took {elapsed:.2f} s"
    stats = recorder.stats
    assert stats["recorded"] + stats["dropped"] == 10_000
    assert stats["dropped"] >= 8_000
    closing = time.perf_counter()
    recorder.close(timeout=0.5)
    assert time.perf_counter() - closing < 5.0
    assert recorder.stats["accepted"] == 0
    assert recorder.stats["failed"] == recorder.stats["recorded"]


def test_an_agent_exits_promptly_when_the_collector_is_down(free_port: int, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from lightning_op.collector.capture import EpisodeRecorder
        recorder = EpisodeRecorder("http://127.0.0.1:{free_port}", "offline-bot", exit_timeout=1.0)
        for n in range(100):
            with recorder.record(query="q", session_id="s", turn=n):
                pass
        """
    )
    (tmp_path / "agent.py").write_text(script)

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(tmp_path / "agent.py")], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 8.0
    assert "not sent" in done.stderr


def test_a_refused_token_is_not_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "token").write_text("right-token-123456")
    store_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    with CollectorProcess(store_url, "--token-file", str(tmp_path / "token")) as proc:
        wrong = capture.EpisodeRecorder(proc.url, "auth-bot", token="wrong-token", flush_interval=0.05)
        right = capture.EpisodeRecorder(proc.url, "auth-bot", token="right-token-123456", flush_interval=0.05)
        with caplog.at_level(logging.WARNING, logger="lightning_op.collector.capture"):
            for recorder in (wrong, right):
                send_turns(recorder, 3, session="auth")

    assert wrong.stats["failed"] == 3 and wrong.stats["retries"] == 0
    assert right.stats["accepted"] == 3
    assert any("HTTP 401" in r.getMessage() for r in caplog.records)
    assert len(stored(store_url, "auth-bot")) == 3


def test_a_disabled_recorder_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_EPISODE_CAPTURE", "false")
    monkeypatch.setenv("EPISODE_COLLECTOR_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("EPISODE_AGENT_ID", "off-bot")
    recorder = capture.EpisodeRecorder.from_env()

    with recorder.record(query="q") as rec:
        rec.result("x")
    assert not rec.sampled
    assert recorder.submit({"state": {"query": "q"}}) is False
    assert recorder.stats["recorded"] == 0
    assert recorder.flush(0.1)


def test_a_full_write_queue_answers_429_and_the_client_waits_it_out(tmp_path: Path) -> None:
    db = tmp_path / "episodes.db"
    store_url = f"sqlite:///{db}"

    def body(offset: int) -> bytes:
        return json.dumps(
            [{"agentId": "queue-bot", "state": {"query": f"q{offset}-{n}"}} for n in range(10)]
        ).encode()

    answers: list[int] = []
    with CollectorProcess(store_url, "--queue-size", "1") as proc:
        recorder = capture.EpisodeRecorder(proc.url, "queue-bot", backoff_base=0.01, flush_interval=0.01)

        def post(offset: int) -> None:
            answer = httpx.post(f"{proc.url}/v1/episodes", content=body(offset), headers=JSON, timeout=30)
            answers.append(answer.status_code)

        with hold_write_lock(db):
            # One batch waits in the writer for the lock, one in the queue of size 1: the queue is full.
            threads = [threading.Thread(target=post, args=(n,)) for n in range(2)]
            for pending, thread in enumerate(threads, start=1):
                thread.start()
                wait_for_metric(proc.url, "lightning_collector_batches_pending", pending)
                time.sleep(0.1)  # the writer takes the first batch off the queue
            full = httpx.post(f"{proc.url}/v1/episodes", content=body(2), headers=JSON)
            ready_while_full = httpx.get(f"{proc.url}/readyz")
            for turn in range(5):
                with recorder.record(query="q", session_id="queued", turn=turn):
                    pass
            time.sleep(0.5)
            during = recorder.stats
        assert recorder.flush(15)
        recorder.close()
        for thread in threads:
            thread.join(30)

    assert full.status_code == 429 and full.headers["Retry-After"] == "1"
    assert "queue is full" in full.json()["error"]
    assert ready_while_full.status_code == 200, "backpressure is 429 on ingest, not an unready pod"
    assert ready_while_full.json()["queueFull"] is True
    assert during["retries"] >= 1 and during["accepted"] == 0
    assert recorder.stats["accepted"] == 5
    assert answers == [200, 200]
    assert len(stored(store_url, "queue-bot")) == 25


# --- 429 / 503 / per-item rejections, from a scripted HTTP server ----------------------------------


class ScriptedCollector:
    """Answers each POST with the next scripted (status, headers, body) and records arrival times.

    It stands in for the collector where the test needs exact control of the answers (a real
    collector's 429 depends on timing); the client must handle them as the real ones.
    """

    def __init__(self, script: list[tuple[int, dict[str, str], dict[str, Any] | None]]) -> None:
        self.script = script
        self.arrivals: list[float] = []
        self.bodies: list[Any] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.arrivals.append(time.monotonic())
                outer.bodies.append(json.loads(data))
                status, headers, body = outer.script[min(len(outer.arrivals), len(outer.script)) - 1]
                if body is None:
                    items = outer.bodies[-1]
                    body = {
                        "accepted": len(items),
                        "duplicates": 0,
                        "rejected": 0,
                        "results": [
                            {"index": i, "id": e.get("id"), "status": "accepted", "reason": None}
                            for i, e in enumerate(items)
                        ],
                    }
                raw = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [429, 503], ids=["queue-full", "store-unavailable"])
def test_retry_after_is_honoured(status: int) -> None:
    wait = {"Retry-After": "1"}
    script = [(status, wait, {"error": "busy"}), (status, wait, {"error": "busy"}), (200, {}, None)]
    with ScriptedCollector(script) as server:
        recorder = capture.EpisodeRecorder(server.url, "busy-bot", backoff_base=0.01, flush_interval=0.01)
        send_turns(recorder, 5)

    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
    assert len(server.arrivals) == 3
    assert all(gap >= 0.95 for gap in gaps), gaps
    assert server.bodies[0] == server.bodies[2], "a retry must resend the same episodes (same ids)"
    assert recorder.stats["accepted"] == 5 and recorder.stats["retries"] == 2


def test_waits_the_collector_asks_for_are_not_failed_attempts() -> None:
    """A collector that answers 503 with Retry-After (its store restarting) more times than
    max_retries: the batch is still delivered (it was dropped after max_retries)."""
    busy = (503, {"Retry-After": "0"}, {"error": "store unavailable"})
    with ScriptedCollector([busy] * 5 + [(200, {}, None)]) as server:
        recorder = capture.EpisodeRecorder(server.url, "patient-bot", max_retries=2, flush_interval=0.01)
        send_turns(recorder, 3)
    assert len(server.arrivals) == 6
    assert recorder.stats["accepted"] == 3 and recorder.stats["failed"] == 0


def test_per_item_rejections_are_final(caplog: pytest.LogCaptureFixture) -> None:
    rejected = {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 2,
        "results": [
            {"index": 0, "id": "a", "status": "rejected", "reason": "state.query: too long"},
            {"index": 1, "id": "b", "status": "rejected", "reason": "state.query: too long"},
        ],
    }
    with ScriptedCollector([(422, {}, rejected)]) as server, caplog.at_level(logging.WARNING):
        recorder = capture.EpisodeRecorder(server.url, "reject-bot", flush_interval=0.01)
        send_turns(recorder, 2)

    assert len(server.arrivals) == 1
    assert recorder.stats["rejected"] == 2 and recorder.stats["retries"] == 0
    assert sum("rejected 2 episodes" in r.getMessage() for r in caplog.records) == 1
