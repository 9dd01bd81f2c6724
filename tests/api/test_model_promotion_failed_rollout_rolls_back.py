"""A promotion whose rollout fails (Progressing False, ProgressDeadlineExceeded) is rolled back.

Covers, with two promotions on two Deployments: after the env patch the Deployment never becomes
ready; with ``rollback.automatic: true`` the operator records the decision (RolledBack condition
Unknown) and then restores the previous env exactly (the variables were absent: they are removed
again, the container list equals the original), ending in RolledBack with reason RolloutFailed and
status.rollout showing the stuck rollout; with ``rollback.automatic: false`` it ends in Failed (reason
RolloutFailed) and leaves the Deployment as it is. Either way a Warning Event says why.
"""

from __future__ import annotations

import copy

CASES = {"auto": (True, "RolledBack"), "manual": (False, "Failed")}


async def test_failed_rollouts(api, operator, objects, kubelet):
    containers_before = {}
    for name, (automatic, _) in CASES.items():
        deployment = await api.create(objects.agent_deployment(name))
        containers_before[name] = copy.deepcopy(deployment["spec"]["template"]["spec"]["containers"])
        body = objects.example("ModelPromotion", name)
        body["spec"].update(targetRef={"name": name}, model={"name": "v2"}, rollback={"automatic": automatic})
        await api.create(body)

    for name in CASES:

        async def patched(name: str = name) -> bool:
            return objects.env_dict(await api.get("Deployment", name)).get("USE_TUNED_MODEL") == "true"

        await api.wait_for(patched, what=f"the env patch of {name}")
        await kubelet.rollout_stuck(name)

    for name, (automatic, final_phase) in CASES.items():
        obj = await api.wait_for_phase("ModelPromotion", name, final_phase)
        status = obj["status"]
        assert status["rollout"]["complete"] is False
        assert "has timed out progressing" in status["rollout"]["message"]
        conditions = {c["type"]: c for c in status["conditions"]}
        deployment = await api.get("Deployment", name)
        events = await api.events(name)
        assert (events[-1]["type"], events[-1]["reason"]) == ("Warning", "RolloutFailed")
        if automatic:
            assert deployment["spec"]["template"]["spec"]["containers"] == containers_before[name]
            assert (conditions["RolledBack"]["status"], conditions["RolledBack"]["reason"]) == (
                "True",
                "RolloutFailed",
            )
            # the decision was written before the env was restored, so a crash in between resumes it
            assert _rollback_order(api, name) == ["Unknown", "restore", "True"]
        else:
            assert objects.env_dict(deployment)["USE_TUNED_MODEL"] == "true"
            assert (conditions["Failed"]["status"], conditions["Failed"]["reason"]) == (
                "True",
                "RolloutFailed",
            )
            assert "rollback.automatic is false" in conditions["Failed"]["message"]
            assert "RolledBack" not in conditions


def _rollback_order(api, name: str) -> list[str]:
    """The RolledBack condition's status in each status write, and the restoring Deployment patch
    (the one that removes USE_TUNED_MODEL), in the order the API server received them."""
    order = []
    for write in api.writes_since(0):
        if write.name != name or write.refused:
            continue
        if write.plural == "deployments" and isinstance(write.data, list):
            if any(op["op"] == "remove" for op in write.data):
                order.append("restore")
        elif write.plural == "modelpromotions" and write.subresource == "status":
            for condition in (write.data.get("status") or {}).get("conditions") or []:
                if condition["type"] == "RolledBack":
                    order.append(condition["status"])
    return order
