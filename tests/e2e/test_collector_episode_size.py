"""One episode over 1 MiB as stored is refused alone; the rest of its batch is kept.

Each field of an episode has its own limit (32 KiB of text per message, 128 messages...), which
still adds up to several MiB. The store refuses an episode whose document is over
``MAX_EPISODE_BYTES`` of UTF-8 (Cosmos DB refuses items over 2 MB): the collector answers it
``rejected`` with its size and the limit, and writes the good episodes of the same request. Bytes,
not characters, are counted: 300,000 four-byte characters are over the limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.collector_process import CollectorProcess

from lightning_op import store as store_mod
from lightning_op.api import episode as ep
from lightning_op.store import base as store_base


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('size') / 'episodes.db'}"


@pytest.fixture(scope="module")
def http(store_url: str) -> Iterator[httpx.Client]:
    with CollectorProcess(store_url) as proc, httpx.Client(base_url=proc.url, timeout=30.0) as client:
        yield client


def chat(session: str, messages: int, text: str) -> dict[str, Any]:
    return {
        "agentId": "size-bot",
        "sessionId": session,
        "turn": 0,
        "timestamp": "2026-02-01T12:00:00Z",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": text} for i in range(messages)
        ],
    }


def stored_sessions(store_url: str) -> list[str]:
    store = store_mod.open_store(store_url)
    try:
        return sorted(e.session_id for e in store.iter_episodes(store_base.EpisodeQuery(agent_id="size-bot")))
    finally:
        store.close()


def test_an_episode_over_1_mib_is_refused_alone_with_its_size(http: httpx.Client, store_url: str) -> None:
    batch = [
        chat("small", 2, "where is my order?"),
        chat("ascii-over", 36, "x" * 30_000),  # 1.08 M characters
        chat("near-limit", 30, "y" * 30_000),  # 0.9 MB: kept
        chat("emoji-over", 10, "\N{GRINNING FACE}" * 30_000),  # 300 k characters, 1.2 MB of UTF-8
        chat("accented-under", 12, "\N{LATIN SMALL LETTER E WITH ACUTE}" * 30_000),  # 720 kB of UTF-8
    ]

    answer = http.post(
        "/v1/episodes", content=json.dumps(batch).encode(), headers={"Content-Type": "application/json"}
    )

    assert answer.status_code == 200
    body = answer.json()
    assert [r["status"] for r in body["results"]] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "accepted",
    ]
    for result in (body["results"][1], body["results"][3]):
        reason = result["reason"]
        assert reason.startswith(f"refused by the store: episode {result['id']!r} is ")
        assert f"over the limit of {ep.MAX_EPISODE_BYTES:,} bytes (1 MiB) for one episode" in reason
    size = int(body["results"][3]["reason"].split(" is ")[1].split(" bytes")[0].replace(",", ""))
    assert size > 1_200_000, "counted in UTF-8 bytes, not characters"
    assert stored_sessions(store_url) == ["accented-under", "near-limit", "small"]
