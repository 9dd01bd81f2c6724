"""A promotion whose rollout fails (Progressing False, ProgressDeadlineExceeded) is rolled back.

Covers: after the env patch the Deployment never becomes ready; with ``rollback.automatic: true`` the
operator records the decision (RolledBack condition Unknown) and then restores the previous env
exactly (the variables were absent: they are removed again, the container list equals the original),
ending in RolledBack with reason RolloutFailed and status.rollout showing the stuck rollout; with
``rollback.automatic: false`` it ends in Failed (reason RolloutFailed) and leaves the Deployment as it
is. Either way a Warning Event says why.
"""

from __future__ import annotations

import copy

import pytest


@pytest.mark.parametrize(
    ("automatic", "final_phase"),
    [pytest.param(True, "RolledBack", id="automatic-rollback"), pytest.param(False, "Failed", id="no-rollback")],
)
async def test_failed_rollout(api, operator, objects, kubelet, automatic, final_phase):
    deployment = await api.create(objects.agent_deployment())
    containers_before = copy.deepcopy(deployment["spec"]["template"]["spec"]["containers"])
    body = objects.example("ModelPromotion", "promote-v2")
    body["spec"].update(targetRef={"name": "agent"}, model={"name": "support-agent-v2"}, rollback={"automatic": automatic})
    await api.create(body)

    async def patched() -> bool:
        return objects.env_dict(await api.get("Deployment", "agent")).get("USE_TUNED_MODEL") == "true"

    await api.wait_for(patched, what="the promotion's env patch")
    await kubelet.rollout_stuck("agent")
    obj = await api.wait_for_phase("ModelPromotion", "promote-v2", final_phase)

    status = obj["status"]
    assert status["rollout"]["complete"] is False
    assert "has timed out progressing" in status["rollout"]["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    containers = (await api.get("Deployment", "agent"))["spec"]["template"]["spec"]["containers"]
    events = await api.events("promote-v2")
    assert (events[-1]["type"], events[-1]["reason"]) == ("Warning", "RolloutFailed")
    if automatic:
        assert containers == containers_before
        assert (conditions["RolledBack"]["status"], conditions["RolledBack"]["reason"]) == ("True", "RolloutFailed")
    else:
        assert objects.env_dict({"spec": {"template": {"spec": {"containers": containers}}}})["USE_TUNED_MODEL"] == "true"
        assert (conditions["Failed"]["status"], conditions["Failed"]["reason"]) == ("True", "RolloutFailed")
        assert "rollback.automatic is false" in conditions["Failed"]["message"]
        assert "RolledBack" not in conditions
