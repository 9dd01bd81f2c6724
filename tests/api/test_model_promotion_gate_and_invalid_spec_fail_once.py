"""A promotion whose gate fails, or whose spec is invalid, ends in Failed once, without touching the
Deployment and without a retry storm.

Covers: a FineTuneJob that Succeeded with too small an improvement (below ``gate.minImprovement``) or
too many regressed examples (above ``gate.maxRegression``), and one that Failed, end the promotion in
phase Failed with reason GateFailed and a message with the figures; a spec an older CRD would let
through (both ``model.name`` and ``model.fineTuneJobRef``; equal env names) ends in Failed with reason
InvalidSpec and a message naming the field. In every case the Deployment is never patched and, over
ten timer ticks, the operator writes nothing; fixing the invalid spec starts the promotion over.
"""

from __future__ import annotations

import asyncio

import pytest


def promotion(objects, **spec):
    body = objects.example("ModelPromotion", "promote")
    body["spec"].update({"targetRef": {"name": "agent"}, "model": {"fineTuneJobRef": {"name": "ft"}}, **spec})
    return body


async def _no_writes_for_a_while(api, seconds: float = 2.0) -> None:
    await asyncio.sleep(0.3)  # the Failed status and its Event land
    mark = api.mark()
    await asyncio.sleep(seconds)
    assert [str(w) for w in api.writes_since(mark)] == []
    assert [w.method for w in api.writes_since(0, "deployments")] == ["POST"]


@pytest.mark.parametrize(
    ("ft_status", "message"),
    [
        pytest.param(
            {"phase": "Succeeded", "baseline": {"score": 0.70}, "result": {"score": 0.72, "examples": 50,
             "regressions": 0}, "fineTunedModel": "/models/ft"},
            "score improved +0.020 (0.700 -> 0.720), less than spec.gate.minImprovement +0.050",
            id="improvement-too-small",
        ),
        pytest.param(
            {"phase": "Succeeded", "baseline": {"score": 0.40}, "result": {"score": 0.90, "examples": 50,
             "regressions": 5}, "fineTunedModel": "/models/ft"},
            "5 of 50 examples regressed (0.100), more than spec.gate.maxRegression 0.050",
            id="too-many-regressions",
        ),
        pytest.param({"phase": "Failed"}, "FineTuneJob ft failed", id="finetune-failed"),
    ],
)
async def test_failed_gate_fails_the_promotion_once(api, operator_process, objects, ft_status, message):
    await operator_process.start(LIGHTNING_CONTROLLERS="promotion")
    await api.create(objects.agent_deployment())
    await api.create(objects.example("FineTuneJob", "ft"))
    await api.patch("FineTuneJob", "ft", {"status": ft_status}, subresource="status")
    await api.create(promotion(objects))
    obj = await api.wait_for_phase("ModelPromotion", "promote", "Failed")
    failed = {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]
    assert failed["reason"] == "GateFailed"
    assert message in failed["message"]
    await _no_writes_for_a_while(api)
    events = await api.events("promote")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "GateFailed")]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        pytest.param({"model": {"name": "v2", "fineTuneJobRef": {"name": "ft"}}}, "spec.model", id="two-models"),
        pytest.param({"env": {"useTunedModel": "X", "modelName": "X"}}, "spec.env.modelName", id="same-env-names"),
    ],
)
async def test_invalid_spec_fails_once_then_recovers_when_fixed(api, operator, objects, kubelet, bad, field):
    await api.create(objects.agent_deployment())
    await api.create(promotion(objects, **bad), validate=False)
    obj = await api.wait_for_phase("ModelPromotion", "promote", "Failed")
    failed = {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith(f"invalid spec: {field}")
    await _no_writes_for_a_while(api)

    fixed = {"model": {"name": "v2", "fineTuneJobRef": None}} if "model" in bad else {"env": {"modelName": "Y"}}
    if "env" in bad:
        fixed["model"] = {"name": "v2", "fineTuneJobRef": None}
    await api.patch("ModelPromotion", "promote", {"spec": fixed})
    obj = await api.wait_for_phase("ModelPromotion", "promote", "Promoting")
    assert {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]["status"] == "False"
