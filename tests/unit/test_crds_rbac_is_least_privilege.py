"""The operator's generated RBAC grants what the controllers need and nothing broader.

Covers: no '*' anywhere (verbs, resources, API groups); no access to Secrets at all while nothing
reads one (and never list or watch, which would expose every Secret in the cluster); the four kinds
with their status and finalizers subresources; Deployments, Jobs, pods and pod logs, Events,
namespaces and CRDs with exactly the verbs the code and kopf use (k8s.py: Deployments get and JSON
patch, Jobs create, get, delete and patch, pods list by the Job's selector, pod logs get; kopf: list
and watch of the Jobs it watches, namespaces and CRDs, Events create), so none nobody uses
(Deployments list/watch, pods get/watch, Events patch); every verb a real Kubernetes verb; the
aggregated user roles only touch our API group; rbac.yaml holds exactly these objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_op.api import constants, kinds
from lightning_op.manifests import crds

ROLE = crds.build_cluster_role()
ALL_ROLES = crds.build_rbac()
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
PLURALS = [info.plural for info in kinds.KINDS]


def verbs_for(role: dict[str, Any], group: str, resource: str) -> set[str]:
    return {
        verb
        for rule in role["rules"]
        if group in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("role", ALL_ROLES, ids=[r["metadata"]["name"] for r in ALL_ROLES])
def test_no_wildcards(role: dict[str, Any]) -> None:
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert all("*" not in item for item in rule[key]), f"wildcard in {key}: {rule}"
        assert set(rule["verbs"]) <= VERBS, f"unknown verbs in {rule}"
        assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("role", ALL_ROLES, ids=[r["metadata"]["name"] for r in ALL_ROLES])
def test_secrets_are_never_listed_or_watched(role: dict[str, Any]) -> None:
    assert verbs_for(role, "", "secrets") <= {"get"}


@pytest.mark.parametrize("plural", PLURALS)
def test_operator_can_reconcile_each_kind(plural: str) -> None:
    group = constants.GROUP
    assert verbs_for(ROLE, group, plural) == {"get", "list", "watch", "patch"}
    assert verbs_for(ROLE, group, f"{plural}/status") == {"get", "patch"}
    assert verbs_for(ROLE, group, f"{plural}/finalizers") == {"update"}


@pytest.mark.parametrize(
    "group, resource, verbs",
    [
        ("apps", "deployments", {"get", "patch"}),
        ("batch", "jobs", {"create", "get", "list", "watch", "delete", "patch"}),
        ("", "pods", {"list"}),
        ("", "pods/log", {"get"}),
        ("", "events", {"create", "list"}),
        ("", "namespaces", {"list", "watch"}),
        ("", "secrets", set()),
        ("apiextensions.k8s.io", "customresourcedefinitions", {"get", "list", "watch"}),
    ],
    ids=["deployments", "jobs", "pods", "pod-logs", "events", "namespaces", "secrets", "crds"],
)
def test_operator_has_what_the_controllers_need(group: str, resource: str, verbs: set[str]) -> None:
    assert verbs_for(ROLE, group, resource) == verbs


def test_nothing_can_escalate() -> None:
    for rule in ROLE["rules"]:
        assert not {"roles", "clusterroles", "rolebindings", "clusterrolebindings"} & set(rule["resources"])
        assert not {"bind", "escalate", "impersonate"} & set(rule["verbs"])


def test_user_roles_only_touch_our_group() -> None:
    for role in ALL_ROLES[1:]:
        assert role["rules"] and all(rule["apiGroups"] == [constants.GROUP] for rule in role["rules"])
        assert any(
            label.startswith("rbac.authorization.k8s.io/aggregate-to-")
            for label in role["metadata"]["labels"]
        )


def test_checked_in_rbac_file_holds_the_roles() -> None:
    path = Path(__file__).resolve().parents[2] / "crds" / crds.RBAC_FILE
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert docs == ALL_ROLES
