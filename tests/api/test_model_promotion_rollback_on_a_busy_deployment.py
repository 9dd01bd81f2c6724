"""A rollback that keeps losing the race for a busy Deployment is retried until it lands.

During a rollout the deployment controller writes the Deployment's status on every pod change, so
the operator's env patch (which tests the resourceVersion it read) can find the object changed
again and again. The emulator's ``contended`` makes another writer win 7 patches in a row: more than
one tick's 3 tries. The rollback must come back on a later tick and restore the env exactly, never
passing through phase Failed (which would leave the regressed model serving for good); an
EpisodeCapture removed from a Deployment as busy still takes its capture env away.
"""

from __future__ import annotations

import copy
import datetime


async def test_a_contended_rollback_is_retried_until_the_env_is_restored(
    api, operator, objects, store, kubelet
):
    agent = "busy"
    deployment = await api.create(objects.agent_deployment(agent))
    containers_before = copy.deepcopy(deployment["spec"]["template"]["spec"]["containers"])
    earlier = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=5)
    store.insert_many(objects.live_episodes(agent, "qwen-base", 10, 0.8, at=earlier, prefix="old"))
    await api.create(objects.quick_promotion(agent))

    async with kubelet.rolling_out(agent):
        await api.wait_for_phase("ModelPromotion", agent, "Verifying")
        api.emulator.contended[("deployments", agent)] = 7
        store.insert_many(objects.live_episodes(agent, "v2", 8, 0.3, prefix="new"))
        obj = await api.wait_for_phase("ModelPromotion", agent, "RolledBack")

    assert api.emulator.contended[("deployments", agent)] == 0  # every contended patch was tried
    restored = await api.get("Deployment", agent)
    assert restored["spec"]["template"]["spec"]["containers"] == containers_before
    rolled_back = {c["type"]: c for c in obj["status"]["conditions"]}["RolledBack"]
    assert (rolled_back["status"], rolled_back["reason"]) == ("True", "Regression")
    phases = [e["message"].split(":")[0] for e in await api.events(agent)]
    assert not any("Failed" in p for p in phases), phases


async def test_capture_env_leaves_a_busy_deployment_when_the_capture_is_deleted(api, operator, objects):
    deployment = await api.create(objects.agent_deployment("agent"))
    env_before = objects.container_env(deployment)
    capture = objects.example("EpisodeCapture", "capture")
    capture["spec"]["targetRef"] = {"kind": "Deployment", "name": "agent", "container": "agent"}
    await api.create(capture)
    await api.wait_for_phase("EpisodeCapture", "capture", "Active")
    assert objects.container_env(await api.get("Deployment", "agent")) != env_before

    api.emulator.contended[("deployments", "agent")] = 5
    await api.delete("EpisodeCapture", "capture")

    async def gone():
        return await api.get("EpisodeCapture", "capture") is None

    await api.wait_for(gone, timeout=20, what="the EpisodeCapture to be deleted")
    assert objects.container_env(await api.get("Deployment", "agent")) == env_before


async def test_a_refused_rollback_fails_saying_what_to_restore(api, operator, objects, store, kubelet):
    """An API server that refuses the restore for good (RBAC, an admission webhook) ends the promotion
    in Failed with RolledBack False, and the message tells a person which env to put back."""
    agent = "guarded"
    await api.create(objects.agent_deployment(agent))
    earlier = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=5)
    store.insert_many(objects.live_episodes(agent, "qwen-base", 10, 0.8, at=earlier, prefix="old"))
    await api.create(objects.quick_promotion(agent))

    async with kubelet.rolling_out(agent):
        await api.wait_for_phase("ModelPromotion", agent, "Verifying")
        api.emulator.forbidden.add(("deployments", agent, None))
        store.insert_many(objects.live_episodes(agent, "v2", 8, 0.3, prefix="new"))
        obj = await api.wait_for_phase("ModelPromotion", agent, "Failed")

    rolled_back = {c["type"]: c for c in obj["status"]["conditions"]}["RolledBack"]
    assert (rolled_back["status"], rolled_back["reason"]) == ("False", "ApiRejected")
    assert "the promoted model still serves" in rolled_back["message"]
    assert "TUNED_MODEL_NAME (absent), USE_TUNED_MODEL (absent)" in rolled_back["message"]
    assert "403" in obj["status"]["conditions"][0]["message"] or "403" in rolled_back["message"]
