"""A RewardLabeling from creation to Completed, as a user sees it in status and Events.

Covers, with the real operator against the API-server emulator and the operator's SQLite store: the
sample test (records with episode, score and reason), labeling (every selected episode labeled in the
store by the grader), the dry run's statistics, verdict and diagnosis (GO for data with spread, NO-GO
for all-perfect scores, with the diagnosis saying why), an Event per phase change whose reason is the
verdict; an agent with no episodes yet waits in Pending (``NoEpisodes``) and completes once episodes
arrive; Continuous mode records when the next run starts; an unchanged Completed object costs no
write calls, nor does a restarted operator; each stage counts as a reconcile in the metrics, the
phase gauge counts settled objects after a restart and drops a deleted one.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from support.printer import printed
from support.trainer_double import labeling_manifest, seed_keyword_episodes

from lightning_op import store as store_mod
from lightning_op.store import base as store_base

pytestmark = pytest.mark.timeout(90)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_labeling_runs_to_a_verdict(api: Any, operator_process: Any, store_url: str) -> None:
    seed_keyword_episodes(store_url, "bot")
    seed_keyword_episodes(store_url, "perfect", levels=(4,), per_level=30)
    await operator_process.start()
    await api.create(labeling_manifest("rl-go", "bot"))
    await api.create(labeling_manifest("rl-nogo", "perfect", mode="Continuous", intervalSeconds=600))
    await api.create(labeling_manifest("rl-empty", "nobody-yet"))

    obj = await api.wait_for_phase("RewardLabeling", "rl-go", "Completed", timeout=20)
    status = obj["status"]
    assert status["verdict"] == "GO"
    assert status["labeled"] == 30 and status["failed"] == 0
    scores = status["scores"]
    assert scores["mean"] == pytest.approx(0.5)
    assert scores["std"] == pytest.approx(0.2041, abs=1e-3)
    assert scores["fractionAboveZero"] == 1.0 and scores["fractionPerfect"] == 0.0
    assert scores["count"] == 30
    assert len(status["sample"]) == 5
    assert all(r["score"] in (0.25, 0.5, 0.75) and r["episodeId"] for r in status["sample"])
    assert status["diagnosis"] == []
    assert _condition(obj, "Ready")["reason"] == "VerdictGo"
    assert {k: v for k, v in printed(obj).items() if k != "Age"} == {
        "Phase": "Completed",
        "Verdict": "GO",
        "Labeled": 30,
        "Mean": scores["mean"],
        "Failed": 0,
        "Grader": obj["spec"]["grader"]["type"],
        "Reason": "VerdictGo",
    }, "what kubectl get rl -o wide shows"
    assert _condition(obj, "SampleTested")["status"] == "True"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert "nextRunTime" not in status
    transitions = [e["message"].split(":")[0] for e in await api.events("rl-go")]
    assert transitions == ["New -> SampleTested", "SampleTested -> Labeling", "Labeling -> Completed"]

    store = store_mod.open_store(store_url)
    try:
        episodes = list(store.iter_episodes(store_base.EpisodeQuery(agent_id="bot")))
    finally:
        store.close()
    assert len(episodes) == 30 and all(e.labeled and e.reward in (0.25, 0.5, 0.75) for e in episodes)
    assert all(len([lb for lb in e.labels if lb.grader == "keywords"]) == 1 for e in episodes)

    obj = await api.wait_for_phase("RewardLabeling", "rl-nogo", "Completed", timeout=20)
    status = obj["status"]
    assert status["verdict"] == "NO-GO"
    assert status["scores"]["fractionPerfect"] == 1.0
    assert "GraderTooLenient" in {d["code"] for d in status["diagnosis"]}
    last = datetime.fromisoformat(status["lastRunTime"].replace("Z", "+00:00"))
    upcoming = datetime.fromisoformat(status["nextRunTime"].replace("Z", "+00:00"))
    assert (upcoming - last).total_seconds() == 600
    event = (await api.events("rl-nogo"))[-1]
    assert event["type"] == "Normal" and event["reason"] == "VerdictNoGo"

    obj = await api.wait_for_phase("RewardLabeling", "rl-empty", "Pending")
    assert _condition(obj, "SampleTested")["reason"] == "NoEpisodes"
    seed_keyword_episodes(store_url, "nobody-yet")
    await api.wait_for_phase("RewardLabeling", "rl-empty", "Completed", timeout=20)

    mark = api.mark()
    await asyncio.sleep(1.0)
    assert api.writes_since(mark) == []
    metrics = await operator_process.metrics()
    for stage in ("sample_test", "label_and_dry_run"):  # each stage counts as a reconcile
        assert (
            f'lightning_op_reconciles_total{{handler="{stage}",kind="RewardLabeling",outcome="ok"}}'
            in metrics
        )
    assert 'lightning_op_objects{kind="RewardLabeling",phase="Completed"} 3.0' in metrics
    go = 'name="rl-go",namespace="test"'
    assert f'lightning_op_labeling_verdict{{{go},verdict="GO"}} 1.0' in metrics
    assert f'lightning_op_labeling_score{{{go},statistic="mean"}} 0.5' in metrics
    assert 'lightning_op_labeling_verdict{name="rl-nogo",namespace="test",verdict="NO-GO"} 1.0' in metrics

    # a restarted operator resumes every daemon (Once and Continuous) at its settled stage: no write,
    # and the objects it found settled are counted by phase again
    await operator_process.restart()
    await asyncio.sleep(1.5)  # several labeling polls of every resumed daemon
    assert api.writes_since(mark) == []
    restarted = await operator_process.metrics()
    assert 'lightning_op_objects{kind="RewardLabeling",phase="Completed"} 3.0' in restarted
    assert f'lightning_op_labeling_verdict{{{go},verdict="GO"}} 1.0' in restarted, "figures restored too"

    # a deleted one leaves the gauge
    await api.delete("RewardLabeling", "rl-go")
    await api.wait_for(lambda: _gone(api, "rl-go"), what="rl-go deleted")

    async def uncounted() -> bool:
        return (
            'lightning_op_objects{kind="RewardLabeling",phase="Completed"} 2.0'
            in await operator_process.metrics()
        )

    await api.wait_for(uncounted, what="rl-go out of the phase gauge")
    assert go not in await operator_process.metrics(), "its figures leave with it"


async def _gone(api: Any, name: str) -> bool:
    return await api.get("RewardLabeling", name) is None
