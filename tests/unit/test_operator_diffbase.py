"""The operator's diffbase (``controllers.common.LeanDiffBaseStorage``) builds exactly kopf's essence:
the spec, labels and annotations but kopf's own and kubectl's last-applied. A difference would make
kopf see a change in every object after an operator upgrade, and run change handlers again."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from lightning_op.api import constants
from lightning_op.controllers.common import LeanDiffBaseStorage


def _body() -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {
            "name": "ftj",
            "namespace": "team",
            "uid": "u-1",
            "generation": 3,
            "resourceVersion": "812",
            "labels": {"app": "support-bot"},
            "annotations": {
                "team": "search",
                f"{constants.GROUP}/last-handled-configuration": '{"spec": {}}',
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
            "finalizers": [constants.FINALIZER],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"agentId": "bot", "evaluation": {"threshold": 0.75, "maxRounds": 3}},
        "status": {"phase": "Training", "rounds": [{"round": 1, "score": 0.5}], "conditions": []},
    }


def _storages() -> tuple[kopf.DiffBaseStorage, kopf.DiffBaseStorage]:
    key = {"prefix": constants.GROUP, "key": "last-handled-configuration"}
    return LeanDiffBaseStorage(**key), kopf.AnnotationsDiffBaseStorage(**key)


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: None,
        lambda b: b["metadata"].pop("labels"),
        lambda b: b["metadata"].pop("annotations"),
        lambda b: b.pop("status"),
        lambda b: b.pop("metadata"),
        lambda b: b["spec"].clear(),
    ],
    ids=["full", "no-labels", "no-annotations", "no-status", "no-metadata", "empty-spec"],
)
def test_the_essence_is_kopfs(edit: Any) -> None:
    raw = _body()
    edit(raw)
    lean, kopfs = _storages()
    body = kopf.Body(copy.deepcopy(raw))
    assert lean.build(body=body) == kopfs.build(body=body)


def test_the_essence_keeps_spec_labels_and_user_annotations_only() -> None:
    lean, _ = _storages()
    essence = lean.build(body=kopf.Body(_body()))
    assert essence == {
        "spec": {"agentId": "bot", "evaluation": {"threshold": 0.75, "maxRounds": 3}},
        "metadata": {"labels": {"app": "support-bot"}, "annotations": {"team": "search"}},
    }


def test_extra_fields_still_pick_from_the_status() -> None:
    lean, kopfs = _storages()
    body = kopf.Body(_body())
    picked = lean.build(body=body, extra_fields=["status.phase"])
    assert picked == kopfs.build(body=body, extra_fields=["status.phase"])
    assert picked["status"] == {"phase": "Training"}


def test_the_body_is_not_changed_or_shared() -> None:
    raw = _body()
    lean, _ = _storages()
    essence = lean.build(body=kopf.Body(raw))
    essence["spec"]["agentId"] = "changed"
    essence["metadata"]["labels"]["app"] = "changed"
    assert raw == _body()
