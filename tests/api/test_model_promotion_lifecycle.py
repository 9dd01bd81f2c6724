"""ModelPromotion from creation to Promoted, as a user sees it (the real operator against the emulator).

Covers: a promotion of a FineTuneJob that is still training waits in phase Gated (GatePassed False,
GateWaiting) without touching the Deployment; once the job Succeeded with a result that meets the
gate, the previous model env is recorded in status (both variables absent before) before the
Deployment is patched, ``USE_TUNED_MODEL=true`` and ``TUNED_MODEL_NAME=<fineTunedModel>`` are set on
the agent container only (other env and the sidecar untouched, one Deployment patch), the rollout is
awaited (status.rollout), live episodes of the old and new model are compared during the verification
window (status.comparison) and the promotion ends Promoted with Verified True; the Events tell the
story phase by phase and ``lightning_op_promotions_total{outcome="promoted"}`` counts it; verification
ticks that find no new traffic write nothing; a ``Ready`` left at StoreUnavailable (by an operator
that met a store outage) is put back by the next tick that reads the store. A
promotion of a model named in the spec skips the gate, and with ``windowSeconds: 0`` is Promoted as
soon as the rollout completes.
"""

from __future__ import annotations

import asyncio
import datetime

from support.printer import printed

TUNED = "/models/support-agent/ft-round-2"
SUCCEEDED = {
    "phase": "Succeeded",
    "baseline": {"score": 0.42},
    "result": {"score": 0.91, "improvements": 40, "regressions": 1, "examples": 50, "passed": True},
    "fineTunedModel": TUNED,
}


def promotion_body(objects, **spec):
    body = objects.example("ModelPromotion", "support-agent-promotion")
    body["spec"]["targetRef"]["name"] = "agent"
    body["spec"]["verification"].update(windowSeconds=4, minEpisodes=5)
    body["spec"].update(spec)
    return body


def spec_writes(api):
    """Write calls to the Deployment itself (not its status, which the test kubelet writes)."""
    return [w.method for w in api.writes_since(0, "deployments") if w.subresource is None]


def conditions(obj):
    return {c["type"]: c for c in obj["status"].get("conditions", [])}


async def test_promotion_waits_for_the_gate_then_promotes_and_verifies(
    api, operator_process, objects, store, kubelet
):
    await operator_process.start(LIGHTNING_CONTROLLERS="capture,promotion")
    deployment = await api.create(objects.agent_deployment())
    containers_before = deployment["spec"]["template"]["spec"]["containers"]
    await api.create(objects.example("FineTuneJob", "support-agent-ft"))
    await api.patch(
        "FineTuneJob", "support-agent-ft", {"status": {"phase": "Training"}}, subresource="status"
    )
    earlier = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=10)
    store.insert_many(objects.live_episodes("support-agent", "qwen-base", 10, 0.6, at=earlier))

    await api.create(promotion_body(objects))
    obj = await api.wait_for_phase("ModelPromotion", "support-agent-promotion", "Gated")
    gate = conditions(obj)["GatePassed"]
    assert (gate["status"], gate["reason"]) == ("False", "GateWaiting")
    assert "phase Training" in gate["message"]
    assert spec_writes(api) == ["POST"]  # created, not patched

    async with kubelet.rolling_out("agent"):
        await api.patch("FineTuneJob", "support-agent-ft", {"status": SUCCEEDED}, subresource="status")
        obj = await api.wait_for_phase("ModelPromotion", "support-agent-promotion", "Verifying")
        status = obj["status"]
        assert status["previousEnv"] == [
            {"name": "TUNED_MODEL_NAME", "present": False},
            {"name": "USE_TUNED_MODEL", "present": False},
        ]
        assert (status["previousModel"], status["promotedModel"]) == ("qwen-base", TUNED)
        assert status["rollout"]["complete"] is True
        assert conditions(obj)["RolledOut"]["status"] == "True"
        deployment = await api.get("Deployment", "agent")
        containers = deployment["spec"]["template"]["spec"]["containers"]
        assert containers[0]["env"] == containers_before[0]["env"] + [
            {"name": "USE_TUNED_MODEL", "value": "true"},
            {"name": "TUNED_MODEL_NAME", "value": TUNED},
        ]
        assert containers[1] == containers_before[1]
        assert status["rollout"]["generation"] == deployment["metadata"]["generation"] == 2

        async def compared() -> bool:
            obj = await api.get("ModelPromotion", "support-agent-promotion")
            return "comparison" in obj["status"]

        await api.wait_for(compared, what="the first comparison")
        mark = api.mark()
        await asyncio.sleep(
            1.0
        )  # five verification ticks with no new traffic: nothing changes, nothing written
        assert [str(w) for w in api.writes_since(mark)] == []

        # An operator that met a store outage left Ready at StoreUnavailable: the next tick that
        # reads the store puts back what verification said, word for word.
        obj = await api.get("ModelPromotion", "support-agent-promotion")
        verifying = conditions(obj)["Ready"]
        assert verifying["reason"] == "Verifying" and "comparing live traffic until" in verifying["message"]
        outage = {**verifying, "reason": "StoreUnavailable", "message": "the episode store is unavailable"}
        left = [outage if c["type"] == "Ready" else c for c in obj["status"]["conditions"]]
        status_patch = {"status": {"conditions": left}}
        await api.patch("ModelPromotion", "support-agent-promotion", status_patch, subresource="status")

        async def restored() -> dict | None:
            obj = await api.get("ModelPromotion", "support-agent-promotion")
            return obj if conditions(obj)["Ready"]["reason"] != "StoreUnavailable" else None

        obj = await api.wait_for(restored, what="Ready back from StoreUnavailable")
        assert conditions(obj)["Ready"] == verifying
        assert obj["status"]["phase"] == "Verifying"
        store.insert_many(objects.live_episodes("support-agent", TUNED, 8, 0.9))
        obj = await api.wait_for_phase("ModelPromotion", "support-agent-promotion", "Promoted", timeout=15)

    status = obj["status"]
    assert status["comparison"] == {
        "before": {"model": "qwen-base", "avgReward": 0.6, "errorRate": 0.0, "episodes": 10},
        "after": {"model": TUNED, "avgReward": 0.9, "errorRate": 0.0, "episodes": 8},
    }
    assert conditions(obj)["Verified"]["status"] == "True"
    assert conditions(obj)["Ready"]["status"] == "True"
    assert {k: v for k, v in printed(obj).items() if k != "Age"} == {
        "Phase": "Promoted",
        "Model": TUNED,
        "Target": "agent",
        "Previous": "qwen-base",
        "Reason": "Verified",
    }, "what kubectl get mp -o wide shows"
    assert spec_writes(api) == ["POST", "PATCH"]
    (env_patch,) = [
        w for w in api.writes_since(0, "deployments") if w.method == "PATCH" and not w.subresource
    ]
    assert (
        env_patch.field_manager == "lightning-op"
    )  # created, then one env patch (the kubelet writes /status)
    events = [(e["type"], e["reason"], e["message"]) for e in await api.events("support-agent-promotion")]
    assert [(t, r) for t, r, _ in events] == [
        ("Normal", "GateWaiting"),
        ("Normal", "Promoting"),
        ("Normal", "Promoting"),
        ("Normal", "Verifying"),
        ("Normal", "Verified"),
    ], events
    assert events[2][2] == f"set USE_TUNED_MODEL=true, TUNED_MODEL_NAME={TUNED} on Deployment agent"
    metrics = await operator_process.metrics()
    assert 'lightning_op_promotions_total{namespace="test",outcome="promoted"} 1.0' in metrics


async def test_named_model_without_verification_is_promoted_after_the_rollout(
    api, operator, objects, kubelet
):
    await api.create(objects.agent_deployment())
    body = promotion_body(objects, model={"name": "support-agent-v2"})
    body["spec"]["verification"]["windowSeconds"] = 0
    await api.create(body)
    obj = await api.wait_for_phase("ModelPromotion", "support-agent-promotion", "Promoting")
    assert conditions(obj)["GatePassed"]["message"] == "model support-agent-v2 named in the spec"

    async def patched() -> bool:
        env = objects.env_dict(await api.get("Deployment", "agent"))
        return env.get("TUNED_MODEL_NAME") == "support-agent-v2"

    await api.wait_for(patched, what="the env patch")
    await kubelet.rollout("agent")
    obj = await api.wait_for_phase("ModelPromotion", "support-agent-promotion", "Promoted")
    assert conditions(obj)["Verified"]["message"] == "verification skipped"
