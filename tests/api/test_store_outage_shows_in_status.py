"""A store that refuses writes shows in the status of the objects waiting on it, and nothing is lost.

The real operator runs against a SQLite store whose write lock the test holds (as a second writer
would; ``?timeout=0.3`` bounds the operator's wait for it). While it is held:

- a RewardLabeling stays in phase Labeling with ``Ready`` False, reason ``StoreUnavailable`` and the
  store's own message (what ``kubectl get rl -o wide`` shows in its Reason column), with one Warning
  Event however often the labeling is retried, and no status writes between retries;
- an EpisodeCapture whose retention purge the store refuses keeps phase Active with the same
  ``Ready``, and its figures are not touched.

Once the lock is released, the labeling finishes with every episode labeled and the capture's
``Ready`` is back to ``CaptureEnabled``, without a change to either spec. A FineTuneJob that an
earlier operator left at ``StoreUnavailable`` while building its dataset moves on once the store
answers. (A held write lock does not stop SQLite's readers, so the FineTuneJob's and the
ModelPromotion's outages, which happen on reads, are not produced here.)
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.printer import printed
from support.trainer_double import (
    TrainerDouble,
    finetune_manifest,
    labeling_manifest,
    seed_episodes,
    seed_keyword_episodes,
)

from lightning_op import store as store_mod
from lightning_op.api import constants
from lightning_op.api import episode as ep

pytestmark = pytest.mark.timeout(120)

CAPTURE = {
    "apiVersion": constants.API_VERSION,
    "kind": "EpisodeCapture",
    "metadata": {"name": "shop"},
    "spec": {
        "targetRef": {"kind": "Deployment", "name": "agent", "container": "agent"},
        "retention": {"ttlDays": 30},
    },
}


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"].get("conditions", []) if c["type"] == "Ready")


@pytest.fixture
def write_lock(store_url: str) -> Iterator[sqlite3.Connection]:
    """A second connection to the store that holds its write lock until the test rolls it back."""
    seed_keyword_episodes(store_url, "bot")  # the labeling's agent: 30 unlabeled episodes
    now = datetime.now(UTC)
    shop = [  # the capture's agent: one episode past its 30-day retention, two within
        ep.Episode(
            id=f"e-shop-{age}",
            agent_id="shop",
            timestamp=now - timedelta(days=age),
            state=ep.State(query=f"{age} days ago"),
            result="ok",
        )
        for age in (40, 2, 1)
    ]
    store = store_mod.open_store(store_url)
    try:
        store.insert_many(shop)
    finally:
        store.close()
    holder = sqlite3.connect(Path(store_url.removeprefix("sqlite:///")), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.rollback()
        holder.close()


async def test_a_locked_store_shows_in_ready_and_the_work_resumes_when_it_is_free(
    api: Any, operator_process: Any, objects: Any, store_url: str, write_lock: sqlite3.Connection
) -> None:
    operator_process.store_url = f"{store_url}?timeout=0.3"
    await operator_process.start()
    await api.create(objects.agent_deployment())
    await api.create(CAPTURE)
    await api.create(labeling_manifest("rl", "bot"))

    async def outage(kind: str, name: str) -> dict[str, Any] | None:
        obj = await api.get(kind, name)
        conditions = (obj or {}).get("status", {}).get("conditions") or []
        found = any(c["type"] == "Ready" and c["reason"] == "StoreUnavailable" for c in conditions)
        return obj if found else None

    labeling = await api.wait_for(lambda: outage("RewardLabeling", "rl"), timeout=30, what="rl outage")
    ready = _ready(labeling)
    assert labeling["status"]["phase"] == "Labeling"
    assert ready["status"] == "False"
    assert "the episode store is unavailable" in ready["message"]
    assert "database is locked" in ready["message"] and "retrying every 1 s" in ready["message"]
    assert printed(labeling)["Reason"] == "StoreUnavailable", "kubectl get rl -o wide"

    capture = await api.wait_for(lambda: outage("EpisodeCapture", "shop"), timeout=30, what="ec outage")
    assert capture["status"]["phase"] == "Active"
    assert _ready(capture)["status"] == "False" and "database is locked" in _ready(capture)["message"]
    assert "episodesCaptured" not in capture["status"], "no figures from a store that failed the purge"

    # Labeling is retried every second (each try waits out four refused writes): the status and the
    # Warning stay as they are, instead of flipping between Labeling and StoreUnavailable.
    mark = api.mark()
    await asyncio.sleep(8)
    assert api.writes_since(mark, "rewardlabelings") == []
    assert api.writes_since(mark, "episodecaptures") == []
    for name in ("rl", "shop"):
        warnings = [e for e in await api.events(name) if e["type"] == "Warning"]
        assert [(e["reason"], "database is locked" in e["message"]) for e in warnings] == [
            ("StoreUnavailable", True)
        ], name

    write_lock.rollback()
    labeling = await api.wait_for_phase("RewardLabeling", "rl", "Completed", timeout=30)
    assert labeling["status"]["labeled"] == 30 and labeling["status"]["verdict"] == "GO"
    assert _ready(labeling)["reason"] == "VerdictGo"

    async def back(name: str) -> dict[str, Any] | None:
        obj = await api.get("EpisodeCapture", name)
        return obj if obj and _ready(obj)["reason"] == "CaptureEnabled" else None

    capture = await api.wait_for(lambda: back("shop"), timeout=15, what="ec back to CaptureEnabled")
    assert _ready(capture)["status"] == "True" and capture["status"]["phase"] == "Active"
    assert capture["status"]["episodesCaptured"] == 2, "the purge ran: the episode past retention is gone"


async def test_a_fine_tune_job_left_at_store_unavailable_moves_on_once_the_store_answers(
    api: Any, operator_process: Any, kubelet: Any, store_url: str, tmp_path: Path
) -> None:
    """An operator that met a store outage while building the dataset left the FineTuneJob at
    BuildingDataset with ``Ready`` StoreUnavailable; the next operator, with the store back, builds
    the dataset, and ``Ready`` says what the job does next instead of the old outage."""
    seed_episodes(store_url, "bot", 12)
    models = tmp_path / "models"
    models.mkdir()
    await api.create(finetune_manifest("ftj"))
    left = {
        "phase": "BuildingDataset",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "StoreUnavailable",
                "message": "the episode store is unavailable: disk I/O error; retrying every 1 s",
                "lastTransitionTime": "2026-12-01T10:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }
    await api.patch("FineTuneJob", "ftj", {"status": left}, subresource="status")
    await operator_process.start(LIGHTNING_MODELS_DIR=str(models))

    obj = await api.wait_for_phase("FineTuneJob", "ftj", "Evaluating", timeout=20)
    assert obj["status"]["dataset"]["episodes"] == 12
    ready = _ready(obj)
    assert (ready["status"], ready["reason"]) == ("False", "Evaluating")
    assert "store" not in ready["message"]
    assert printed(obj)["Reason"] == "Evaluating"
    assert [e["type"] for e in await api.events("ftj")] == ["Normal"], "no new Warning: the outage is over"

    # later writes in the new phase (the baseline's progress) keep Ready as the job says
    await TrainerDouble(api, kubelet, models).progress("ftj", 0, 50.0)

    async def progressed() -> dict[str, Any] | None:
        obj = await api.get("FineTuneJob", "ftj")
        return obj if ((obj or {}).get("status", {}).get("progress") or {}).get("percent") == 50 else None

    obj = await api.wait_for(progressed, timeout=10, what="the baseline's progress")
    assert _ready(obj)["reason"] == "Evaluating"
