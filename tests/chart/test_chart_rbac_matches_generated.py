"""The chart grants the operator exactly the generated RBAC, and nothing broader.

Covers: the chart's files/rbac.yaml is byte-identical to the generated crds/rbac.yaml (the template
reads its rules from there); the rendered operator ClusterRole's rules equal those of crds/rbac.yaml
and of ``manifests.crds.operator_rules()``; the view and edit roles equal the generated ones and keep
their aggregation labels; no wildcard anywhere; Secrets are never listed or watched; the
ClusterRoleBinding binds the rendered ServiceAccount in the release namespace; with rbac.create and
aggregateToUserRoles off, the chart renders none of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_op.manifests import crds

SYNC_HINT = "run `make crds`, then: cp crds/rbac.yaml charts/lightning-op/files/rbac.yaml"


def _generated(repo_root: Path) -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((repo_root / "crds" / "rbac.yaml").read_text(encoding="utf-8"))
    return {d["metadata"]["name"]: d for d in docs if d}


def test_chart_copy_of_rbac_is_identical(repo_root: Path, chart_dir: Path) -> None:
    generated = (repo_root / "crds" / "rbac.yaml").read_text(encoding="utf-8")
    copy = (chart_dir / "files" / "rbac.yaml").read_text(encoding="utf-8")
    assert copy == generated, f"charts/lightning-op/files/rbac.yaml drifted from crds/rbac.yaml: {SYNC_HINT}"


def _names(rendered: Any, kind: str) -> set[str]:
    return {obj["metadata"]["name"] for obj in rendered.of_kind(kind)}


def test_operator_role_has_the_generated_rules(rendered: Any, repo_root: Path) -> None:
    if not rendered.values.get("rbac", {}).get("create", True):
        assert rendered.release not in _names(rendered, "ClusterRole")
        return
    role = rendered.named("ClusterRole", rendered.release)
    assert role["rules"] == _generated(repo_root)["lightning-op"]["rules"]
    assert role["rules"] == crds.operator_rules()


@pytest.mark.parametrize("suffix", ["view", "edit"])
def test_user_roles_have_the_generated_rules_and_aggregate(
    rendered: Any, repo_root: Path, suffix: str
) -> None:
    if not rendered.values.get("rbac", {}).get("aggregateToUserRoles", True):
        assert f"{rendered.release}-{suffix}" not in _names(rendered, "ClusterRole")
        return
    generated = _generated(repo_root)[f"lightning-op-{suffix}"]
    role = rendered.named("ClusterRole", f"{rendered.release}-{suffix}")
    assert role["rules"] == generated["rules"]
    aggregation = {
        k: v for k, v in generated["metadata"]["labels"].items() if k.startswith("rbac.authorization")
    }
    assert aggregation and aggregation.items() <= role["metadata"]["labels"].items()


def test_no_wildcards_and_no_secret_listing(rendered: Any) -> None:
    for role in rendered.of_kind("ClusterRole") + rendered.of_kind("Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert all("*" not in item for item in rule.get(key, [])), (
                    f"wildcard in {role['metadata']['name']}"
                )
            assert "nonResourceURLs" not in rule
            if "" in rule["apiGroups"] and "secrets" in rule["resources"]:
                assert not {"list", "watch"} & set(rule["verbs"]), f"{role['metadata']['name']} lists Secrets"


def test_binding_grants_the_operator_role_to_the_service_account(rendered: Any) -> None:
    if not rendered.values.get("rbac", {}).get("create", True):
        assert not rendered.of_kind("ClusterRoleBinding")
        return
    binding = rendered.named("ClusterRoleBinding", rendered.release)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": rendered.release,
    }
    operator = rendered.named("Deployment", rendered.release)
    account = operator["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": rendered.namespace}
    ]
    if rendered.values.get("serviceAccount", {}).get("create", True):
        assert rendered.named("ServiceAccount", account)
