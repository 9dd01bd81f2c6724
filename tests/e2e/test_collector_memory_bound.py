"""The collector's memory is bounded by ``--max-inflight-bytes``, not by how many agents upload.

Two slow uploads hold 1.8 MB of a 2 MiB budget: a third request (with a Content-Length, or chunked
with none) gets 429 with Retry-After at once and nothing of it is written; the held uploads finish
and are stored; the refused batch sent again is stored. A budget below the largest body is a
one-line error before the collector listens.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from support.collector_process import CollectorProcess

from lightning_op import store as store_mod
from lightning_op.store import base as store_base

MAX_BODY = 1024 * 1024
BUDGET = 2 * 1024 * 1024
HELD_BODY = 900_000


def episode(session: str) -> dict[str, Any]:
    return {
        "agentId": "budget-bot",
        "sessionId": session,
        "turn": 0,
        "timestamp": "2026-02-01T12:00:00Z",
        "state": {"query": f"status of order {session}?"},
        "action": {"tool": "lookup_order", "arguments": {"order": session}},
    }


def padded(session: str, size: int) -> bytes:
    """A one-episode JSON array padded with trailing whitespace to exactly ``size`` bytes."""
    raw = json.dumps([episode(session)]).encode()
    return raw + b" " * (size - len(raw))


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('budget') / 'episodes.db'}"


@pytest.fixture(scope="module")
def collector(store_url: str) -> Iterator[CollectorProcess]:
    args = ("--max-body-bytes", str(MAX_BODY), "--max-inflight-bytes", str(BUDGET))
    with CollectorProcess(store_url, *args) as proc:
        yield proc


class HeldUpload:
    """A POST whose headers and first bytes are sent, and whose rest is sent when ``finish`` is."""

    def __init__(self, url: str, body: bytes) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.body = body
        head = (
            f"POST /v1/episodes HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body[:1000])

    def finish(self) -> tuple[int, dict[str, Any]]:
        self.sock.sendall(self.body[1000:])
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)


def inflight(http: httpx.Client, timeout: float = 10.0) -> tuple[int, int]:
    """The collector's held and most body bytes, from /metrics, once the held figure stops moving
    (the collector reads an upload's headers a moment after they were sent)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    while True:
        values = {}
        for line in http.get("/metrics").text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("lightning_collector_inflight_bytes", "lightning_collector_inflight_limit_bytes"):
                values[name] = int(float(value))
        now = (
            values["lightning_collector_inflight_bytes"],
            values["lightning_collector_inflight_limit_bytes"],
        )
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.2)


def stored_sessions(store_url: str) -> list[str]:
    store = store_mod.open_store(store_url)
    try:
        return sorted(
            e.session_id for e in store.iter_episodes(store_base.EpisodeQuery(agent_id="budget-bot"))
        )
    finally:
        store.close()


def test_uploads_beyond_the_budget_get_429_and_the_held_ones_are_stored(
    collector: CollectorProcess, store_url: str
) -> None:
    held = [HeldUpload(collector.url, padded(name, HELD_BODY)) for name in ("held-1", "held-2")]
    refused_body = padded("refused", 400_000)
    with httpx.Client(base_url=collector.url, timeout=10.0) as http:
        assert inflight(http) == (2 * HELD_BODY, BUDGET)
        sized = http.post("/v1/episodes", content=refused_body, headers={"Content-Type": "application/json"})
        chunked = http.post(
            "/v1/episodes",
            content=(refused_body[i : i + 65536] for i in range(0, len(refused_body), 65536)),
            headers={"Content-Type": "application/json"},
        )
        small = http.post("/v1/episodes", json=[episode("small")])

        for answer in (sized, chunked):
            assert answer.status_code == 429
            assert answer.headers["Retry-After"] == "1"
            assert f"holding {BUDGET} bytes of request bodies" in answer.json()["error"]
        assert small.status_code == 200, "what fits in the budget is still taken"
        assert stored_sessions(store_url) == ["small"]

        for upload, name in zip(held, ("held-1", "held-2"), strict=True):
            status, body = upload.finish()
            assert status == 200 and body["accepted"] == 1, name
        again = http.post("/v1/episodes", content=refused_body, headers={"Content-Type": "application/json"})
        assert again.status_code == 200 and again.json()["accepted"] == 1
        assert inflight(http) == (0, BUDGET), "every answered request gave its bytes back"
    assert stored_sessions(store_url) == ["held-1", "held-2", "refused", "small"]


def test_a_budget_below_the_largest_body_is_a_one_line_error(store_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_op.cli", "collector", "--store", store_url, "--port", "0",
         "--max-body-bytes", "2000000", "--max-inflight-bytes", "1000000"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--max-inflight-bytes 1000000 is below --max-body-bytes 2000000" in result.stderr
