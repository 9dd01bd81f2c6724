"""FineTuneJobs that cannot run: each ends in phase Failed with a condition that says why and what to
change, writes nothing more (no retry storm), and starts over once its spec is fixed (nothing ran).

Covers: a spec the CRD schema would refuse (let in with ``validate=False``, as an older CRD would)
naming ``spec.dataset.minReward``; an evaluation grader the graders module refuses, naming
``spec.evaluation.grader.reference``; the azureOpenAI backend (``BackendNotImplemented``); too few
episodes above ``minReward`` (``NotEnoughEpisodes`` with the exact message); then the fixes. After
trainers ran, an invalid edit keeps the phase (Ready ``InvalidSpec``, the round's Job left running)
until it is fixed, and a Succeeded job ignores it; an operator without a model volume says so in
``Ready`` (``ReconcileError``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.trainer_double import TrainerDouble, finetune_manifest, seed_episodes

pytestmark = pytest.mark.timeout(90)


def _failed(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")


async def test_failed_until_fixed(api: Any, operator_process: Any, store_url: str, tmp_path: Path) -> None:
    seed_episodes(store_url, "bot", 12)
    seed_episodes(store_url, "few", 3, start=200)
    seed_episodes(store_url, "few", 8, reward=0.6, start=300)
    await operator_process.start(LIGHTNING_MODELS_DIR=str(tmp_path / "models"))

    bad = finetune_manifest("bad")
    bad["spec"]["dataset"] = {"minReward": 2}
    await api.create(bad, validate=False)
    azure = finetune_manifest("azure", backend="azureOpenAI", modelVolume=None)
    del azure["spec"]["modelVolume"]
    await api.create(azure)
    few = finetune_manifest("few", agentId="few")
    await api.create(few)
    grader = finetune_manifest("grader")
    grader["spec"]["evaluation"]["grader"] = {
        "type": "string_check",
        "input": "{{episode.state.query}}",
        "operation": "eq",
    }
    await api.create(grader)

    obj = await api.wait_for_phase("FineTuneJob", "bad", "Failed")
    assert _failed(obj)["reason"] == "InvalidSpec"
    assert "spec.dataset.minReward: must be <= 1" in _failed(obj)["message"]
    obj = await api.wait_for_phase("FineTuneJob", "azure", "Failed")
    assert _failed(obj)["reason"] == "BackendNotImplemented"
    assert "backend azureOpenAI is not implemented yet" in _failed(obj)["message"]
    obj = await api.wait_for_phase("FineTuneJob", "few", "Failed")
    assert _failed(obj)["reason"] == "NotEnoughEpisodes"
    assert _failed(obj)["message"] == (
        "dataset has 3 episodes with reward >= 0.7, need at least 10 "
        "(lower spec.dataset.minReward, or label more episodes, then edit the spec to start again)"
    )
    assert (await api.events("few"))[-1]["type"] == "Warning"
    obj = await api.wait_for_phase("FineTuneJob", "grader", "Failed")
    assert _failed(obj)["reason"] == "InvalidSpec"
    assert "spec.evaluation.grader.reference: required" in _failed(obj)["message"]

    mark = api.mark()
    await asyncio.sleep(1.5)  # several timer intervals
    assert api.writes_since(mark) == [], "a failed object must not be retried"
    assert await api.list("Job") == []

    await api.patch("FineTuneJob", "bad", {"spec": {"dataset": {"minReward": 0.8}}})
    await api.patch("FineTuneJob", "few", {"spec": {"dataset": {"minReward": 0.5}}})
    obj = await api.wait_for_phase("FineTuneJob", "bad", "Evaluating")
    assert obj["status"]["dataset"]["episodes"] == 12
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")["status"] == "False"
    obj = await api.wait_for_phase("FineTuneJob", "few", "Evaluating")
    assert obj["status"]["dataset"]["episodes"] == 11
    assert obj["status"]["dataset"]["minReward"] == pytest.approx(0.6)
    assert await api.get("FineTuneJob", "azure") is not None
    assert (await api.get("FineTuneJob", "azure") or {})["status"]["phase"] == "Failed"


async def test_an_invalid_edit_after_trainers_ran_keeps_the_job_and_a_finished_one_ignores_it(
    api: Any, operator_process: Any, kubelet: Any, store_url: str, tmp_path: Path
) -> None:
    """Mid-run, an evaluation grader the graders module refuses does not fail the job (its round's
    Job runs on): the phase stays, Ready says what to fix, and once fixed the job finishes. A
    Succeeded job stays Succeeded whatever its spec becomes."""
    models = tmp_path / "models"
    seed_episodes(store_url, "bot", 12)
    await operator_process.start(LIGHTNING_MODELS_DIR=str(models))
    trainer = TrainerDouble(api, kubelet, models)
    await api.create(finetune_manifest("edited"))
    await api.wait_for(lambda: api.get("Job", "edited-r0"), what="baseline Job")
    await trainer.succeed("edited", 0, 0.3)
    await api.wait_for(lambda: api.get("Job", "edited-r1"), what="round 1 Job")

    broken = {"type": "string_check", "input": "{{episode.state.query}}", "operation": "eq"}
    good = finetune_manifest("x")["spec"]["evaluation"]["grader"]
    await api.patch(
        "FineTuneJob", "edited", [{"op": "replace", "path": "/spec/evaluation/grader", "value": broken}]
    )

    async def refused() -> dict[str, Any] | None:
        obj = await api.get("FineTuneJob", "edited")
        ready = next(
            (c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == "Ready"), {}
        )
        return obj if ready.get("reason") == "InvalidSpec" else None

    obj = await api.wait_for(refused, what="Ready to say the spec is invalid")
    assert obj["status"]["phase"] == "Training"
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "spec.evaluation.grader.reference: required" in ready["message"]
    assert "the job stays Training" in ready["message"]
    assert await api.get("Job", "edited-r1") is not None, "the running round was left alone"

    await api.patch(
        "FineTuneJob", "edited", [{"op": "replace", "path": "/spec/evaluation/grader", "value": good}]
    )
    await trainer.succeed("edited", 1, 0.9)
    obj = await api.wait_for_phase("FineTuneJob", "edited", "Succeeded")
    assert obj["status"]["fineTunedModel"]

    await api.patch(
        "FineTuneJob", "edited", [{"op": "replace", "path": "/spec/evaluation/grader", "value": broken}]
    )
    await asyncio.sleep(1.0)
    obj = await api.get("FineTuneJob", "edited")
    assert obj is not None and obj["status"]["phase"] == "Succeeded"
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["reason"] != "InvalidSpec"


async def test_an_operator_without_a_model_volume_says_so_in_status(
    api: Any, operator_process: Any, store_url: str
) -> None:
    """No --models-dir (the chart's models.enabled false): the job cannot write its dataset, and its
    status says why (Ready False, ReconcileError, naming the option) instead of looking busy."""
    seed_episodes(store_url, "bot", 12)
    await operator_process.start()
    await api.create(finetune_manifest("novolume"))

    async def held() -> dict[str, Any] | None:
        obj = await api.get("FineTuneJob", "novolume")
        conditions = (obj or {}).get("status", {}).get("conditions", [])
        ready = next((c for c in conditions if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "ReconcileError" else None

    ready = await api.wait_for(held, what="Ready to name the error")
    assert ready["status"] == "False"
    assert "no models directory (--models-dir, LIGHTNING_MODELS_DIR)" in ready["message"]
