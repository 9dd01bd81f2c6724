"""Status conditions: Kubernetes shape, and ``set_condition`` moving lastTransitionTime only on a flip.

Covers: a new type is appended; re-setting the same status keeps lastTransitionTime but takes the new
reason, message and observedGeneration; a status change takes the new time; other conditions keep
their order; the input list is not changed; plain dicts (kopf's status) are accepted and duplicates
collapse; the JSON form is metav1.Condition's (camelCase, RFC 3339 seconds); lookups; invalid types
and reasons are refused; a status with conditions round-trips through ``parse_status``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from lightning_op.api import conditions as cond
from lightning_op.api import kinds

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 13, 0, 0, tzinfo=UTC)


def make(
    type_: str, status: str, reason: str = "Reconciled", at: datetime = T0, **kw: object
) -> cond.Condition:
    return cond.Condition(type=type_, status=status, reason=reason, last_transition_time=at, **kw)


def test_new_type_is_appended() -> None:
    ready = make("Ready", "False")
    result = cond.set_condition([ready], make("Progressing", "True", at=T1))
    assert [c.type for c in result] == ["Ready", "Progressing"]


def test_same_status_keeps_transition_time_but_updates_details() -> None:
    old = make("Ready", "False", reason="GateWaiting", message="waiting", observed_generation=1)
    new = make("Ready", "False", reason="Training", message="round 1", at=T1, observed_generation=2)
    (merged,) = cond.set_condition([old], new)
    assert merged.last_transition_time == T0
    assert (merged.reason, merged.message, merged.observed_generation) == ("Training", "round 1", 2)


def test_status_flip_takes_the_new_time() -> None:
    (merged,) = cond.set_condition([make("Ready", "False")], make("Ready", "True", reason="Succeeded", at=T1))
    assert merged.status == cond.ConditionStatus.TRUE and merged.last_transition_time == T1


def test_order_is_kept_and_input_is_not_changed() -> None:
    original = [make("Ready", "False"), make("Progressing", "True"), make("Failed", "False")]
    snapshot = [c.model_copy() for c in original]
    result = cond.set_condition(original, make("Progressing", "False", at=T1))
    assert [c.type for c in result] == ["Ready", "Progressing", "Failed"]
    assert original == snapshot


def test_dicts_are_accepted_and_duplicates_collapse() -> None:
    raw = [
        {"type": "Ready", "status": "False", "reason": "A", "lastTransitionTime": "2026-01-01T12:00:00Z"},
        {"type": "Ready", "status": "True", "reason": "B", "lastTransitionTime": "2026-01-01T12:30:00Z"},
    ]
    result = cond.set_condition(raw, {"type": "Ready", "status": "False", "reason": "C"})
    assert len(result) == 1 and result[0].reason == "C" and result[0].last_transition_time == T0


def test_setting_an_identical_condition_is_a_no_op() -> None:
    current = [make("Ready", "True", reason="Succeeded", message="done")]
    again = cond.set_condition(current, make("Ready", "True", reason="Succeeded", message="done", at=T1))
    assert cond.conditions_to_json(again) == cond.conditions_to_json(current)


def test_json_form_is_metav1_condition() -> None:
    data = make("Ready", "True", reason="Succeeded", observed_generation=3).to_json_dict()
    assert data == {
        "type": "Ready",
        "status": "True",
        "reason": "Succeeded",
        "message": "",
        "lastTransitionTime": "2026-01-01T12:00:00Z",
        "observedGeneration": 3,
    }


def test_default_time_is_now_in_seconds() -> None:
    condition = cond.Condition(type="Ready", status="Unknown", reason="Reconciled")
    assert condition.last_transition_time.microsecond == 0
    assert condition.last_transition_time.tzinfo is not None


def test_lookups() -> None:
    items = [make("Ready", "True"), make("Failed", "False")]
    assert cond.get_condition(items, "Failed") == items[1]
    assert cond.get_condition(items, "Suspended") is None
    assert cond.is_condition_true(items, cond.ConditionType.READY)
    assert not cond.is_condition_true(items, cond.ConditionType.FAILED)


@pytest.mark.parametrize(
    "field, value",
    [("type", "not a type!"), ("reason", "has spaces"), ("reason", ""), ("status", "Maybe")],
    ids=["type-with-spaces", "reason-with-spaces", "empty-reason", "unknown-status"],
)
def test_invalid_conditions_are_refused(field: str, value: str) -> None:
    data = {"type": "Ready", "status": "True", "reason": "Reconciled", field: value}
    with pytest.raises(ValidationError):
        cond.Condition.model_validate(data)


def test_status_round_trips_through_parse_status() -> None:
    conditions = cond.conditions_to_json([make("Ready", "True", reason="Succeeded")])
    body = {"status": {"phase": "Succeeded", "observedGeneration": 2, "conditions": conditions, "future": 1}}
    status = kinds.parse_status("FineTuneJob", body)
    assert status.phase == "Succeeded" and status.observed_generation == 2
    assert cond.conditions_to_json(status.conditions) == conditions
