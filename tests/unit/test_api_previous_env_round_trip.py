"""ModelPromotion's status.previousEnv records the target's env exactly and gives it back.

Covers: a snapshot from ``manifests.workload_env`` (plain value, valueFrom, absent variable) goes into
``status.previousEnv`` and, through the status's JSON form, back into the same snapshot; the absent
variable survives as ``present: false`` (a map with a null would be deleted by a merge patch); the
restore patch built from the recovered snapshot returns the Deployment's env to what it was.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from lightning_op.api import promotion
from lightning_op.manifests import workload_env

NAMES = ["USE_TUNED_MODEL", "TUNED_MODEL_NAME", "MODEL_NAME"]


def deployment(env: list[dict[str, Any]]) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "a:1", "env": env}]}}}}


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(doc), ops)  # RFC 6902, as the API server
    return result


ORIGINAL_ENV = [
    {"name": "LOG_LEVEL", "value": "info"},
    {"name": "TUNED_MODEL_NAME", "valueFrom": {"configMapKeyRef": {"name": "models", "key": "tuned"}}},
    {"name": "MODEL_NAME", "value": "base-7b"},
]


@pytest.mark.parametrize("env", [ORIGINAL_ENV, []], ids=["mixed-entries", "no-env-vars"])
def test_snapshot_survives_status_round_trip_and_restores_env(env: list[dict[str, Any]]) -> None:
    before = deployment(env)
    snapshot = workload_env.snapshot_env(before, "agent", NAMES)
    status = promotion.ModelPromotionStatus(
        previous_env=promotion.previous_env_from_snapshot(snapshot.entries)
    )
    stored = promotion.parse_status({"status": status.to_json_dict()})
    recovered = workload_env.EnvSnapshot(promotion.snapshot_from_previous_env(stored.previous_env))
    assert recovered == snapshot

    promoted = apply_json_patch(
        before,
        workload_env.env_patch(before, "agent", {"USE_TUNED_MODEL": "true", "TUNED_MODEL_NAME": "ft-1"}),
    )
    restored = apply_json_patch(promoted, workload_env.restore_patch(promoted, "agent", recovered))
    assert restored == before


def test_absent_variable_is_recorded_as_not_present() -> None:
    items = promotion.previous_env_from_snapshot({"USE_TUNED_MODEL": None})
    assert [i.to_json_dict() for i in items] == [{"name": "USE_TUNED_MODEL", "present": False}]
