"""The walkthrough's RewardLabeling (examples/labeling.yaml) on an agent that picks the right tool
two times in three, labeling one time window.

Covers: the example's pass/fail grader with the example's ``spec.dryRun.healthyRanges`` reaches GO
(with the default ranges, made for graded scores, the same data is NO-GO "too lenient": the share of
perfect scores of a pass/fail grader is its pass rate); ``selector.since``/``until`` hold for every
stage: the sample test grades episodes of the window, the labeling labels only them and counts only
them in ``total``, and the dry run's statistics describe only them (all-perfect episodes outside the
window would change every figure).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lightning_op import store as store_mod
from lightning_op.api import episode as ep
from lightning_op.store import base as store_base

pytestmark = pytest.mark.timeout(90)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
QUERIES = {
    "get_weather": "weather in Oslo {n}?",
    "search_flights": "a flight to Rome {n}",
    "lookup_order": "refund order {n}",
}


def _episodes(agent: str, count: int, wrong_every: int, start: datetime, prefix: str) -> list[ep.Episode]:
    """``count`` episodes from ``start`` on, a minute apart; every ``wrong_every``-th picks a wrong tool."""
    tools = list(QUERIES)
    out = []
    for n in range(count):
        right = tools[n % 3]
        tool = tools[(n + 1) % 3] if wrong_every and n % wrong_every == wrong_every - 1 else right
        out.append(
            ep.Episode(
                id=f"{prefix}-{n}",
                agent_id=agent,
                session_id=f"{prefix}-s{n}",
                timestamp=start + timedelta(minutes=n),
                state=ep.State(query=QUERIES[right].format(n=n)),
                action=ep.Action(tool=tool, arguments={}),
            )
        )
    return out


async def test_the_walkthrough_grader_reaches_go_on_its_window(
    api: Any, operator_process: Any, store_url: str, objects: Any
) -> None:
    store = store_mod.open_store(store_url)
    try:
        for agent, prefix in (("support-agent", ""), ("twin-agent", "twin-")):
            store.insert_many(_episodes(agent, 30, 3, T0, f"{prefix}in"))  # 20 right, 10 wrong
            store.insert_many(_episodes(agent, 40, 0, T0 - timedelta(days=2), f"{prefix}before"))  # all right
    finally:
        store.close()
    await operator_process.start()
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat(), "unlabeledOnly": True}
    body = objects.example("RewardLabeling", "walkthrough")
    body["spec"]["selector"] = window
    defaults = copy.deepcopy(body)
    defaults["metadata"]["name"] = "default-ranges"
    defaults["spec"]["agentId"] = "twin-agent"  # the same data, labeled apart
    del defaults["spec"]["dryRun"]["healthyRanges"]
    await api.create(body)
    await api.create(defaults)

    obj = await api.wait_for_phase("RewardLabeling", "walkthrough", "Completed", timeout=30)
    status = obj["status"]
    assert status["verdict"] == "GO", status.get("diagnosis")
    assert status["scores"]["count"] == 30
    assert status["scores"]["mean"] == pytest.approx(2 / 3, abs=1e-4)
    assert status["scores"]["fractionPerfect"] == pytest.approx(2 / 3, abs=1e-4)
    assert (status["labeled"], status["total"]) == (30, 30)
    in_window = {f"in-{n}" for n in range(30)}
    assert {r["episodeId"] for r in status["sample"]} <= in_window

    other = await api.wait_for_phase("RewardLabeling", "default-ranges", "Completed", timeout=30)
    assert other["status"]["verdict"] == "NO-GO"
    assert any("too lenient" in d["message"] for d in other["status"]["diagnosis"])

    store = store_mod.open_store(store_url)
    try:
        labeled = {
            e.id for e in store.iter_episodes(store_base.EpisodeQuery(agent_id="support-agent", labeled=True))
        }
    finally:
        store.close()
    assert labeled == in_window, "episodes outside the window stay unlabeled"
