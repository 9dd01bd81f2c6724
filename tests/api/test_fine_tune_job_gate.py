"""The FineTuneJob gate: training waits for its RewardLabeling's verdict.

Covers, with both real controllers: a gate naming a RewardLabeling that does not exist yet keeps the
FineTuneJob in WaitingForGate (``GateNotFound``); once the labeling exists and completes with GO, the
FineTuneJob builds its dataset from the labels it wrote and starts the baseline; a NO-GO verdict keeps
another FineTuneJob waiting (``GateFailed``, the message says which verdict and what it waits for);
(WARNING with and without ``allowWarning`` is covered by the flow's unit tests).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.trainer_double import finetune_manifest, labeling_manifest, seed_keyword_episodes

pytestmark = pytest.mark.timeout(90)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_training_waits_for_the_verdict(
    api: Any, operator_process: Any, store_url: str, tmp_path: Path
) -> None:
    seed_keyword_episodes(store_url, "bot")
    seed_keyword_episodes(store_url, "perfect", levels=(4,), per_level=30)
    await operator_process.start(LIGHTNING_MODELS_DIR=str(tmp_path / "models"))

    gated = finetune_manifest("gated", gate={"labelingRef": {"name": "rl-bot"}})
    await api.create(gated)
    blocked = finetune_manifest("blocked", agentId="perfect", gate={"labelingRef": {"name": "rl-perfect"}})
    await api.create(blocked)
    obj = await api.wait_for_phase("FineTuneJob", "gated", "WaitingForGate")
    assert _condition(obj, "GatePassed")["reason"] == "GateNotFound"
    assert "RewardLabeling rl-bot not found" in _condition(obj, "GatePassed")["message"]
    await asyncio.sleep(0.5)
    assert (await api.get("FineTuneJob", "gated") or {})["status"]["phase"] == "WaitingForGate"

    await api.create(labeling_manifest("rl-bot", "bot"))
    await api.create(labeling_manifest("rl-perfect", "perfect"))
    obj = await api.wait_for_phase("FineTuneJob", "gated", "Evaluating", timeout=20)
    assert _condition(obj, "GatePassed")["status"] == "True"
    assert "verdict is GO" in _condition(obj, "GatePassed")["message"]
    # The keyword grader scored 10 of the 30 episodes 0.75: the ones at or above minReward 0.7.
    assert obj["status"]["dataset"]["episodes"] == 10
    assert obj["status"]["dataset"]["minReward"] == 0.75

    await api.wait_for_phase("RewardLabeling", "rl-perfect", "Completed", timeout=20)
    await asyncio.sleep(0.6)
    obj = await api.get("FineTuneJob", "blocked")
    assert obj is not None and obj["status"]["phase"] == "WaitingForGate"
    gate = _condition(obj, "GatePassed")
    assert gate["status"] == "False" and gate["reason"] == "GateFailed"
    assert gate["message"] == "RewardLabeling rl-perfect verdict is NO-GO; training waits for GO"
    assert await api.get("Job", "blocked-r0") is None
