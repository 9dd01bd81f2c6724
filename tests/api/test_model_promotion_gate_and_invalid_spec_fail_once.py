"""A promotion whose gate fails, or whose spec is invalid, ends in Failed once, without touching the
Deployment and without a retry storm.

Covers: FineTuneJobs that Succeeded with too small an improvement (below ``gate.minImprovement``) or
too many regressed examples (above ``gate.maxRegression``), and one that Failed, end their promotions
in phase Failed with reason GateFailed, a message with the figures and one Warning Event; specs an
older CRD would let through (both ``model.name`` and ``model.fineTuneJobRef``; equal env names) end in
Failed with reason InvalidSpec and a message naming the field. In every case the Deployment is never
patched and, over several timer ticks, the operator writes nothing; fixing an invalid spec starts the
promotion over.
"""

from __future__ import annotations

import asyncio

GATE_CASES = {
    "too-little": (
        {
            "phase": "Succeeded",
            "baseline": {"score": 0.70},
            "fineTunedModel": "/models/a",
            "result": {"score": 0.72, "examples": 50, "regressions": 0},
        },
        "score improved +0.020 (0.700 -> 0.720), less than spec.gate.minImprovement +0.050",
    ),
    "regressed": (
        {
            "phase": "Succeeded",
            "baseline": {"score": 0.40},
            "fineTunedModel": "/models/b",
            "result": {"score": 0.90, "examples": 50, "regressions": 5},
        },
        "5 of 50 examples regressed (0.100), more than spec.gate.maxRegression 0.050",
    ),
    "ft-failed": ({"phase": "Failed"}, "FineTuneJob ft-ft-failed failed"),
}
INVALID_CASES = {
    "two-models": (
        {"model": {"name": "v2", "fineTuneJobRef": {"name": "ft"}}},
        "spec.model",
        {"model": {"name": "v2", "fineTuneJobRef": None}},
    ),
    "same-env": (
        {"model": {"name": "v2"}, "env": {"useTunedModel": "X", "modelName": "X"}},
        "spec.env.modelName",
        {"env": {"modelName": "Y"}},
    ),
}


def promotion(objects, name: str, **spec):
    body = objects.example("ModelPromotion", name)
    body["spec"].update({"targetRef": {"name": "agent"}, "model": {"fineTuneJobRef": {"name": f"ft-{name}"}}})
    body["spec"].update(spec)
    return body


async def _no_writes_for_a_while(api, deployments: int, seconds: float = 1.5) -> None:
    await asyncio.sleep(0.3)  # the Failed statuses and their Events land
    mark = api.mark()
    await asyncio.sleep(seconds)
    assert [str(w) for w in api.writes_since(mark)] == []
    assert [w.method for w in api.writes_since(0, "deployments")] == ["POST"] * deployments


async def test_failed_gates_fail_their_promotions_once(api, operator_process, objects):
    await operator_process.start(LIGHTNING_CONTROLLERS="promotion")  # the FineTuneJob status is the test's
    await api.create(objects.agent_deployment())
    for name, (ft_status, _) in GATE_CASES.items():
        await api.create(objects.example("FineTuneJob", f"ft-{name}"))
        await api.patch("FineTuneJob", f"ft-{name}", {"status": ft_status}, subresource="status")
        await api.create(promotion(objects, name))

    for name, (_, message) in GATE_CASES.items():
        obj = await api.wait_for_phase("ModelPromotion", name, "Failed")
        failed = {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]
        assert failed["reason"] == "GateFailed", name
        assert message in failed["message"], name
    await _no_writes_for_a_while(api, deployments=1)
    for name in GATE_CASES:
        events = await api.events(name)
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "GateFailed")], name


async def test_invalid_specs_fail_once_then_recover_when_fixed(api, operator, objects):
    for name, (bad, _, _) in INVALID_CASES.items():
        await api.create(objects.agent_deployment(f"agent-{name}"))
        await api.create(promotion(objects, name, targetRef={"name": f"agent-{name}"}, **bad), validate=False)
    for name, (_, field, _) in INVALID_CASES.items():
        obj = await api.wait_for_phase("ModelPromotion", name, "Failed")
        failed = {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]
        assert failed["reason"] == "InvalidSpec", name
        assert failed["message"].startswith(f"invalid spec: {field}"), name
    await _no_writes_for_a_while(api, deployments=2)

    for name, (_, _, fix) in INVALID_CASES.items():
        await api.patch("ModelPromotion", name, {"spec": fix})
    for name in INVALID_CASES:
        obj = await api.wait_for_phase("ModelPromotion", name, "Promoting")
        assert {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]["status"] == "False"
