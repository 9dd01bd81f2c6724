"""A model promoted again after a rollback is judged on its new traffic only.

v2 was promoted half an hour ago, regressed and was rolled back: its bad live episodes are still
in the store, inside the window the operator reads the previous model's traffic from. Promoted
again (fixed, say, behind the same name), it must be compared on episodes since this promotion:
the new ones are good, so the promotion ends Promoted with ``status.comparison`` counting only them,
and the Deployment keeps the new model.
"""

from __future__ import annotations

import datetime


async def test_a_repromoted_model_is_judged_on_episodes_since_this_promotion(
    api, operator, objects, store, kubelet
):
    agent = "again"
    await api.create(objects.agent_deployment(agent))
    now = datetime.datetime.now(tz=datetime.UTC)
    store.insert_many(objects.live_episodes(agent, "v2", 10, 0.1, at=now - datetime.timedelta(minutes=30)))
    store.insert_many(
        objects.live_episodes(agent, "qwen-base", 10, 0.8, at=now - datetime.timedelta(minutes=20))
    )
    await api.create(objects.quick_promotion(agent, window_seconds=3))

    async with kubelet.rolling_out(agent):
        await api.wait_for_phase("ModelPromotion", agent, "Verifying")
        store.insert_many(objects.live_episodes(agent, "v2", 6, 0.85, prefix="v2-new"))
        obj = await api.wait_for_phase("ModelPromotion", agent, "Promoted", timeout=15)

    assert obj["status"]["comparison"]["after"] == {
        "model": "v2",
        "avgReward": 0.85,
        "errorRate": 0.0,
        "episodes": 6,
    }
    assert obj["status"]["comparison"]["before"]["episodes"] == 10
    env = {e["name"]: e.get("value") for e in objects.container_env(await api.get("Deployment", agent))}
    assert (env["USE_TUNED_MODEL"], env["TUNED_MODEL_NAME"]) == ("true", "v2")
