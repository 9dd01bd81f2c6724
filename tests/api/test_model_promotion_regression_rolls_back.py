"""A promotion that regresses on live traffic is rolled back, and the Deployment's env is restored exactly.

Covers: the target container already has both model variables (``USE_TUNED_MODEL=false`` as a plain
value, ``TUNED_MODEL_NAME`` from a ConfigMap through ``valueFrom``) between other env; the promotion
replaces them in place; during the verification window the promoted model's live episodes show a
reward drop, or an error-rate rise, beyond the spec's limits, and the operator restores both entries
exactly as they were (``valueFrom`` included, same positions: the whole container list equals the one
before the promotion, the sidecar untouched), ends in phase RolledBack with a RolledBack condition
naming the regression, status.comparison showing it, a Warning Event, and the rollback counted in
``lightning_op_rollbacks_total``; nothing is written after that.
"""

from __future__ import annotations

import asyncio
import copy
import datetime

import pytest


def deployment_with_model_env(objects):
    body = objects.agent_deployment()
    env = body["spec"]["template"]["spec"]["containers"][0]["env"]
    env.insert(1, {"name": "USE_TUNED_MODEL", "value": "false"})
    env.insert(2, {"name": "TUNED_MODEL_NAME",
                   "valueFrom": {"configMapKeyRef": {"name": "agent-models", "key": "tuned"}}})
    return body


@pytest.mark.parametrize(
    ("after_reward", "after_errors", "reason_text"),
    [
        pytest.param(0.3, 0, "average reward fell", id="reward-drop"),
        pytest.param(0.8, 4, "error rate rose", id="error-rate-rise"),
    ],
)
async def test_regression_rolls_back_to_the_exact_previous_env(
    api, operator, objects, store, kubelet, after_reward, after_errors, reason_text
):
    deployment = await api.create(deployment_with_model_env(objects))
    containers_before = copy.deepcopy(deployment["spec"]["template"]["spec"]["containers"])
    earlier = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=5)
    store.insert_many(objects.live_episodes("support-agent", "qwen-base", 10, 0.8, at=earlier))
    body = objects.example("ModelPromotion", "promote-v2")
    body["spec"].update(targetRef={"name": "agent", "container": "agent"}, model={"name": "support-agent-v2"})
    body["spec"]["verification"].update(windowSeconds=60, minEpisodes=5)
    await api.create(body)

    async with kubelet.rolling_out("agent"):
        obj = await api.wait_for_phase("ModelPromotion", "promote-v2", "Verifying")
        assert obj["status"]["previousModel"] == "qwen-base"
        env = objects.container_env(await api.get("Deployment", "agent"))
        assert env[1:3] == [
            {"name": "USE_TUNED_MODEL", "value": "true"},
            {"name": "TUNED_MODEL_NAME", "value": "support-agent-v2"},
        ]
        store.insert_many(
            objects.live_episodes("support-agent", "support-agent-v2", 8, after_reward, errors=after_errors)
        )
        obj = await api.wait_for_phase("ModelPromotion", "promote-v2", "RolledBack")

    deployment = await api.get("Deployment", "agent")
    assert deployment["spec"]["template"]["spec"]["containers"] == containers_before
    status = obj["status"]
    rolled_back = {c["type"]: c for c in status["conditions"]}["RolledBack"]
    assert (rolled_back["status"], rolled_back["reason"]) == ("True", "Regression")
    assert reason_text in rolled_back["message"]
    assert "restored TUNED_MODEL_NAME, USE_TUNED_MODEL on Deployment agent" in rolled_back["message"]
    assert status["comparison"]["after"]["episodes"] == 8
    assert status["comparison"]["before"]["avgReward"] == 0.8
    events = await api.events("promote-v2")
    assert (events[-1]["type"], events[-1]["reason"]) == ("Warning", "Regression")
    assert events[-1]["message"].startswith("Verifying -> RolledBack: restored")
    metrics = await operator.metrics()
    assert 'lightning_op_rollbacks_total{namespace="test",reason="Regression"} 1.0' in metrics
    assert 'lightning_op_promotions_total{namespace="test",outcome="rolled_back"} 1.0' in metrics

    await asyncio.sleep(0.3)
    mark = api.mark()
    await asyncio.sleep(1.0)  # five timer ticks on a finished promotion
    assert api.writes_since(mark) == []
