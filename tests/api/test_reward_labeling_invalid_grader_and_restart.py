"""A RewardLabeling whose grader is invalid, and one whose operator restarts in the middle of labeling.

Covers: a grader the CRD schema accepts but the graders module refuses (a missing ``reference``, an
unknown template namespace) ends in phase Failed with a condition naming ``spec.grader.<field>``,
writes nothing more (no retry storm), and runs once the spec is fixed; broken again, its verdict and
scores go (they were the fixed grader's); a RewardLabeling whose status
writes the API server refuses (403, as RBAC would) stops trying after its Failed report, and runs to
Completed once the writes are allowed and its spec changes (the daemon is not lost); an operator killed while
labeling 20,000 episodes resumes from the store after a restart: every episode ends with exactly one
label from the grader, and the status counts them all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.trainer_double import labeling_manifest, seed_keyword_episodes

from lightning_op import store as store_mod
from lightning_op.store import base as store_base

pytestmark = pytest.mark.timeout(120)


def _failed(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")


async def test_invalid_grader_fails_naming_the_field(api: Any, operator_process: Any, store_url: str) -> None:
    seed_keyword_episodes(store_url, "bot")
    await operator_process.start()
    missing = labeling_manifest(
        "rl-missing",
        "bot",
        grader={"type": "string_check", "input": "{{episode.state.query}}", "operation": "eq"},
    )
    await api.create(missing)
    template = labeling_manifest(
        "rl-template",
        "bot",
        grader={"type": "string_check", "input": "{{nope.query}}", "reference": "x", "operation": "eq"},
    )
    await api.create(template)
    obj = await api.wait_for_phase("RewardLabeling", "rl-missing", "Failed")
    assert _failed(obj)["reason"] == "InvalidSpec"
    assert "spec.grader.reference: required" in _failed(obj)["message"]
    obj = await api.wait_for_phase("RewardLabeling", "rl-template", "Failed")
    assert (
        "spec.grader.input:" in _failed(obj)["message"]
        and "unknown namespace 'nope'" in _failed(obj)["message"]
    )
    assert (await api.events("rl-missing"))[-1]["type"] == "Warning"

    mark = api.mark()
    await asyncio.sleep(1.0)
    assert api.writes_since(mark) == []

    await api.patch(
        "RewardLabeling", "rl-missing", {"spec": {"grader": {"reference": "alpha", "operation": "like"}}}
    )
    obj = await api.wait_for_phase("RewardLabeling", "rl-missing", "Completed", timeout=20)
    assert obj["status"]["labeled"] == 30
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")["status"] == "False"
    assert obj["status"]["verdict"] and obj["status"]["scores"]

    # broken again: the verdict and scores of the grader that gave them go with it (a FineTuneJob's
    # gate must not open on them)
    await api.patch("RewardLabeling", "rl-missing", {"spec": {"grader": {"input": "{{nope.query}}"}}})
    obj = await api.wait_for_phase("RewardLabeling", "rl-missing", "Failed")
    assert "verdict" not in obj["status"] and "scores" not in obj["status"]


async def test_restart_while_labeling_resumes_from_the_store(
    api: Any, operator_process: Any, store_url: str
) -> None:
    total = seed_keyword_episodes(store_url, "big", per_level=5000, levels=(1, 2, 3, 4))
    await operator_process.start()
    await api.create(labeling_manifest("rl-big", "big"))

    async def labeling_underway() -> dict[str, Any] | None:
        obj = await api.get("RewardLabeling", "rl-big")
        status = (obj or {}).get("status") or {}
        return obj if status.get("phase") == "Labeling" and status.get("labeled") else None

    obj = await api.wait_for(labeling_underway, timeout=30, interval=0.02, what="labeling under way")
    await operator_process.kill()
    assert obj["status"]["labeled"] < total
    await operator_process.start()
    obj = await api.wait_for_phase("RewardLabeling", "rl-big", "Completed", timeout=60)
    assert obj["status"]["labeled"] == total
    assert obj["status"]["failed"] == 0

    store = store_mod.open_store(store_url)
    try:
        episodes = list(store.iter_json(store_base.EpisodeQuery(agent_id="big")))
    finally:
        store.close()
    assert len(episodes) == total
    counts = {len([lb for lb in e["labels"] if lb["grader"] == "keywords"]) for e in episodes}
    assert counts == {1}, "every episode labeled exactly once across the restart"


async def test_a_refused_status_write_fails_the_generation_and_a_spec_change_runs_it(
    api: Any, operator_process: Any, store_url: str
) -> None:
    seed_keyword_episodes(store_url, "bot")
    api.emulator.forbidden.add(("rewardlabelings", "rl-denied", "status"))
    await operator_process.start()
    await api.create(labeling_manifest("rl-denied", "bot"))

    def refused() -> list[Any]:
        return [w for w in api.writes_since(0, "rewardlabelings") if w.refused == 403]

    async def refused_twice() -> bool:
        return len(refused()) >= 2  # the stage's report, then its Failed report

    await api.wait_for(refused_twice, what="the status writes refused")
    await asyncio.sleep(1.0)
    assert len(refused()) == 2, "no retry storm against a refusing API server"

    api.emulator.forbidden.clear()
    await api.patch("RewardLabeling", "rl-denied", {"spec": {"sampleTest": {"size": 3}}})
    obj = await api.wait_for_phase("RewardLabeling", "rl-denied", "Completed", timeout=20)
    assert obj["status"]["labeled"] == 30
