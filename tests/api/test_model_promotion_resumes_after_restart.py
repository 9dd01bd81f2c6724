"""A restarted operator continues a ModelPromotion from its status, and never repeats a Deployment change.

Covers: the operator killed (SIGKILL) while the promotion is Verifying, restarted: it finishes the
verification and ends Promoted with the previous env as first recorded (not re-read from the patched
Deployment), one env patch in all and one Event per phase; restarted again against the finished
promotion it writes nothing at all, and its timer is not even called (it is still counted by
phase). And every crash window the state machine is built for, entered by leaving a status as a
killed operator would and starting a fresh operator on it: the decision to promote recorded but
the Deployment not patched yet (patched once), the Deployment patched but the status not updated
(no second patch), a rollback decided but not done (restored once), and a rollback done but not
recorded (no patch, RolledBack).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime

NOW = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
PREVIOUS_ENV = [{"name": "TUNED_MODEL_NAME", "present": False}, {"name": "USE_TUNED_MODEL", "present": False}]
PROMOTED_ENV = [{"name": "USE_TUNED_MODEL", "value": "true"}, {"name": "TUNED_MODEL_NAME", "value": "v2"}]


def promotion(objects, window: int = 3):
    body = objects.example("ModelPromotion", "promote")
    body["spec"].update(targetRef={"name": "agent"}, model={"name": "v2"})
    body["spec"]["verification"].update(windowSeconds=window, minEpisodes=5)
    return body


def deployment_spec_writes(api):
    return [w.method for w in api.writes_since(0, "deployments") if w.subresource is None]


def _drive_count(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("lightning_op_reconciles_total{") and 'handler="drive_promotion"' in line
    )


async def test_killed_during_verification_then_restarted_finishes_once(
    api, operator, objects, store, kubelet
):
    await api.create(objects.agent_deployment())
    earlier = NOW - datetime.timedelta(minutes=5)
    store.insert_many(objects.live_episodes("support-agent", "qwen-base", 10, 0.7, at=earlier))
    await api.create(promotion(objects, window=4))
    async with kubelet.rolling_out("agent"):
        await api.wait_for_phase("ModelPromotion", "promote", "Verifying")
        await operator.kill()
        store.insert_many(objects.live_episodes("support-agent", "v2", 6, 0.75))
        await operator.start()
        obj = await api.wait_for_phase("ModelPromotion", "promote", "Promoted", timeout=15)

    assert obj["status"]["previousEnv"] == PREVIOUS_ENV
    assert obj["status"]["previousModel"] == "qwen-base"
    assert deployment_spec_writes(api) == ["POST", "PATCH"]
    phases = [e["message"].split(":")[0] for e in await api.events("promote") if "->" in e["message"]]
    assert phases == ["New -> Promoting", "Promoting -> Verifying", "Verifying -> Promoted"]

    await asyncio.sleep(0.3)
    mark = api.mark()
    await operator.restart()

    async def counted() -> bool:  # the restarted operator found it settled
        return 'lightning_op_objects{kind="ModelPromotion",phase="Promoted"} 1.0' in await operator.metrics()

    await api.wait_for(counted, what="the restarted operator counting the Promoted promotion")
    await asyncio.sleep(1.0)  # five poll intervals: a settled promotion's timer is not even called
    assert [str(w) for w in api.writes_since(mark)] == []
    assert _drive_count(await operator.metrics()) == 0


def _condition(type_: str, status: str, reason: str, message: str) -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW.isoformat().replace("+00:00", "Z"),
    }


ROLLOUT = {
    "generation": 2,
    "observedGeneration": 2,
    "replicas": 2,
    "updatedReplicas": 2,
    "availableReplicas": 2,
    "complete": True,
    "message": "rolled out",
}
DECIDED = _condition("RolledBack", "Unknown", "Regression", "rolling back: average reward fell 0.400")
CRASH_WINDOWS = {
    # Promoting recorded (previousEnv), the operator died before patching the Deployment.
    "decided-not-patched": (False, {"phase": "Promoting"}, "Verifying", ["POST", "PATCH"], True),
    # The Deployment was patched, the operator died before recording promotionTime.
    "patched-not-recorded": (True, {"phase": "Promoting"}, "Verifying", ["POST"], True),
    # A regression was decided (RolledBack Unknown), the operator died before restoring the env.
    "rollback-decided": (
        True,
        {"phase": "Verifying", "promotionTime": "now", "rollout": ROLLOUT, "conditions": [DECIDED]},
        "RolledBack",
        ["POST", "PATCH"],
        False,
    ),
    # The env was restored, the operator died before recording RolledBack.
    "rollback-done": (
        False,
        {"phase": "Verifying", "promotionTime": "now", "rollout": ROLLOUT, "conditions": [DECIDED]},
        "RolledBack",
        ["POST"],
        False,
    ),
}


async def test_resumes_from_each_crash_window(api, operator_process, objects, kubelet):
    original_env = objects.container_env(objects.agent_deployment())
    for name, (patched, status, _, _, _) in CRASH_WINDOWS.items():
        deployment = objects.agent_deployment(name)
        if patched:
            deployment["spec"]["template"]["spec"]["containers"][0]["env"] += PROMOTED_ENV
        await api.create(deployment)
        await kubelet.rollout(name)
        body = promotion(objects, window=30)
        body["metadata"]["name"] = name
        body["spec"]["targetRef"]["name"] = name
        await api.create(body)
        left = {
            **status,
            "previousEnv": PREVIOUS_ENV,
            "previousModel": "qwen-base",
            "promotedModel": "v2",
            "observedGeneration": 1,
        }
        if left.get("promotionTime") == "now":
            left["promotionTime"] = NOW.isoformat().replace("+00:00", "Z")
        await api.patch("ModelPromotion", name, {"status": left}, subresource="status")

    async with contextlib.AsyncExitStack() as stack:
        for name in CRASH_WINDOWS:
            await stack.enter_async_context(kubelet.rolling_out(name))
        await operator_process.start()
        for name, (_, _, next_phase, _, _) in CRASH_WINDOWS.items():
            await api.wait_for_phase("ModelPromotion", name, next_phase)

    for name, (_, _, next_phase, spec_writes, promoted_env_after) in CRASH_WINDOWS.items():
        obj = await api.get("ModelPromotion", name)
        env = objects.container_env(await api.get("Deployment", name))
        assert env == (original_env + PROMOTED_ENV if promoted_env_after else original_env), name
        writes = [
            w.method for w in api.writes_since(0, "deployments") if w.name == name and not w.subresource
        ]
        assert writes == spec_writes, name
        assert obj["status"]["previousEnv"] == PREVIOUS_ENV, name
        if next_phase == "RolledBack":
            rolled_back = {c["type"]: c for c in obj["status"]["conditions"]}["RolledBack"]
            assert (rolled_back["status"], rolled_back["reason"]) == ("True", "Regression"), name
