"""A promotion that regresses on live traffic is rolled back, and the Deployment's env is restored exactly.

Covers, with four agents on four Deployments: the target container already has both model variables
(``USE_TUNED_MODEL=false`` as a plain value, ``TUNED_MODEL_NAME`` from a ConfigMap through
``valueFrom``) between other env; the promotion replaces them in place; during the verification
window the promoted model's live episodes show a reward drop (one agent) or an error-rate rise (the
other) beyond the spec's limits; a third agent takes its ``MODEL_NAME`` from a ConfigMap too (no
previous model the operator can read: it compares with the version its live traffic showed before)
and its new model's episodes fail before anyone labeled them; a fourth already serves an earlier
tuned model (``USE_TUNED_MODEL=1``, which the capture client reads as on, as it does yes and on),
so its live traffic before was recorded as that model and the comparison must use it. The operator
restores both entries
exactly as they were
(``valueFrom`` included, same positions: the whole container list equals the one before the
promotion, the sidecar untouched), ends in phase RolledBack with a RolledBack condition naming the
regression, status.comparison showing it, a Warning Event, and the rollback counted in
``lightning_op_rollbacks_total``; nothing is written after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime

# agent: (reward of the new model's episodes (None: unlabeled), how many of its 8 episodes failed,
# what the message says)
CASES = {
    "reward-drop": (0.3, 0, "average reward fell"),
    "error-rise": (0.8, 4, "error rate rose"),
    "model-from-configmap": (None, 5, "error rate rose"),
    "tuned-already": (0.3, 0, "average reward fell"),
}
# agent: the model version its live traffic was recorded as before the promotion (None: not readable
# from the Deployment, a ConfigMap holds it)
SERVED_BEFORE = {"model-from-configmap": None, "tuned-already": "v1"}


def deployment_with_model_env(objects, name: str):
    body = objects.agent_deployment(name)
    env = body["spec"]["template"]["spec"]["containers"][0]["env"]
    if name == "model-from-configmap":
        env[0] = {
            "name": "MODEL_NAME",
            "valueFrom": {"configMapKeyRef": {"name": "agent-models", "key": "base"}},
        }
    if name == "tuned-already":
        env[1:1] = [{"name": "USE_TUNED_MODEL", "value": "1"}, {"name": "TUNED_MODEL_NAME", "value": "v1"}]
        return body
    env.insert(1, {"name": "USE_TUNED_MODEL", "value": "false"})
    env.insert(
        2,
        {
            "name": "TUNED_MODEL_NAME",
            "valueFrom": {"configMapKeyRef": {"name": "agent-models", "key": "tuned"}},
        },
    )
    return body


async def test_regressions_roll_back_to_the_exact_previous_env(api, operator, objects, store, kubelet):
    containers_before = {}
    earlier = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=5)
    for agent in CASES:
        deployment = await api.create(deployment_with_model_env(objects, agent))
        containers_before[agent] = copy.deepcopy(deployment["spec"]["template"]["spec"]["containers"])
        served = SERVED_BEFORE.get(agent, "qwen-base") or "qwen-base"
        store.insert_many(objects.live_episodes(agent, served, 10, 0.8, at=earlier, prefix=f"{agent}-old"))
        body = objects.example("ModelPromotion", agent)
        body["spec"].update(
            agentId=agent, targetRef={"name": agent, "container": "agent"}, model={"name": "v2"}
        )
        body["spec"]["verification"].update(windowSeconds=60, minEpisodes=5)
        await api.create(body)

    async with contextlib.AsyncExitStack() as rollouts:
        for agent in CASES:
            await rollouts.enter_async_context(kubelet.rolling_out(agent))
        for agent, (reward, errors, _) in CASES.items():
            obj = await api.wait_for_phase("ModelPromotion", agent, "Verifying")
            assert obj["status"].get("previousModel") == SERVED_BEFORE.get(agent, "qwen-base")
            env = objects.container_env(await api.get("Deployment", agent))
            assert env[1:3] == [
                {"name": "USE_TUNED_MODEL", "value": "true"},
                {"name": "TUNED_MODEL_NAME", "value": "v2"},
            ]
            store.insert_many(
                objects.live_episodes(agent, "v2", 8, reward, errors=errors, prefix=f"{agent}-new")
            )
        for agent in CASES:
            await api.wait_for_phase("ModelPromotion", agent, "RolledBack")

    for agent, (_, _, reason_text) in CASES.items():
        deployment = await api.get("Deployment", agent)
        assert deployment["spec"]["template"]["spec"]["containers"] == containers_before[agent], agent
        status = (await api.get("ModelPromotion", agent))["status"]
        rolled_back = {c["type"]: c for c in status["conditions"]}["RolledBack"]
        assert (rolled_back["status"], rolled_back["reason"]) == ("True", "Regression")
        assert reason_text in rolled_back["message"]
        assert f"restored TUNED_MODEL_NAME, USE_TUNED_MODEL on Deployment {agent}" in rolled_back["message"]
        assert status["comparison"]["after"]["episodes"] == 8
        assert status["comparison"]["before"]["avgReward"] == 0.8
        assert status["comparison"]["before"]["model"] == (
            SERVED_BEFORE.get(agent, "qwen-base") or "qwen-base"
        )
        events = await api.events(agent)
        assert (events[-1]["type"], events[-1]["reason"]) == ("Warning", "Regression")
        assert events[-1]["message"].startswith("Verifying -> RolledBack: restored")
    metrics = await operator.metrics()
    assert 'lightning_op_rollbacks_total{namespace="test",reason="Regression"} 4.0' in metrics
    assert 'lightning_op_promotions_total{namespace="test",outcome="rolled_back"} 4.0' in metrics

    await asyncio.sleep(0.3)
    mark = api.mark()
    await asyncio.sleep(1.0)  # five timer ticks on each finished promotion
    assert api.writes_since(mark) == []
