"""How a ModelPromotion reads the target Deployment's rollout (``promotion_flow.rollout_state``).

Covers: complete only when the controller observed the patched generation and every replica is
updated and available with no old ones left; each wait says what it waits for; a progress deadline
exceeded is a failed rollout; a paused Deployment (which no progress deadline ever fails) says it is
paused and how to resume it, instead of looking stuck.
"""

from __future__ import annotations

from typing import Any

import pytest

from lightning_op.pipeline import promotion_flow


def deployment(
    *, observed: int = 2, replicas: int = 2, updated: int = 2, available: int = 2, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "agent", "generation": 2},
        "spec": {"replicas": 2, **spec},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "availableReplicas": available,
        },
    }


@pytest.mark.parametrize(
    ("body", "complete", "phrase"),
    [
        pytest.param(deployment(), True, "rolled out: 2 of 2 replicas updated and available", id="complete"),
        pytest.param(deployment(observed=1), False, "observe generation 2", id="not-observed"),
        pytest.param(
            deployment(replicas=3, updated=1, available=1), False, "1 of 2 replicas updated", id="updating"
        ),
        pytest.param(deployment(replicas=3), False, "1 old replicas pending termination", id="old-pods"),
        pytest.param(deployment(available=1), False, "1 of 2 updated replicas available", id="unavailable"),
        pytest.param(
            deployment(paused=True, replicas=3, updated=1, available=1),
            False,
            "paused (spec.paused): 1 of 2 replicas updated; the rollout waits for kubectl rollout resume "
            "deployment/agent",
            id="paused",
        ),
        pytest.param(deployment(paused=True), True, "rolled out", id="paused-after-it-finished"),
    ],
)
def test_rollout_progress(body: dict[str, Any], complete: bool, phrase: str) -> None:
    state = promotion_flow.rollout_state(body, 2)
    assert state.complete is complete and not state.failed
    assert phrase in state.message
    assert state.status["message"] == state.message


def test_an_exceeded_progress_deadline_is_a_failed_rollout() -> None:
    body = deployment(updated=1, available=1)
    body["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "too slow",
        }
    ]
    state = promotion_flow.rollout_state(body, 2)
    assert state.failed and not state.complete
    assert state.message == "rollout failed: too slow"
