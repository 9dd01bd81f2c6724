"""NetworkPolicies: the operator takes no ingress, the collector takes episodes from agent namespaces.

Covers: with networkPolicy.enabled, a policy selects the operator's pods and denies all ingress (or
allows only the metrics port from networkPolicy.metricsFrom), and one selects the collector's pods
and allows only its port, from the agent namespaces: networkPolicy.agentNamespaceSelector when
given, else the watched namespaces by name, else every namespace (also when a watched namespace is a
kopf pattern rather than a name: a glob, a negation ``!ns`` or a comma-separated list, which no label
selector can express); every policy selects exactly one component's pods; with
networkPolicy.enabled false (or the collector off) the policies are absent.
"""

from __future__ import annotations

from typing import Any

import pytest

MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def _pod_labels(rendered: Any, name: str) -> dict[str, str]:
    labels: dict[str, str] = rendered.named("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}
    return bool(selector["matchLabels"].items() <= labels.items())


def test_policies_present_only_when_enabled(rendered: Any) -> None:
    policies = {p["metadata"]["name"] for p in rendered.of_kind("NetworkPolicy")}
    if not rendered.values.get("networkPolicy", {}).get("enabled", True):
        assert not policies
        return
    collector = rendered.values.get("collector", {}).get("enabled", True)
    assert policies == {rendered.release} | ({f"{rendered.release}-collector"} if collector else set())


def test_operator_ingress_is_denied(rendered: Any) -> None:
    if not rendered.of_kind("NetworkPolicy"):
        return
    policy = rendered.named("NetworkPolicy", rendered.release)
    assert _selects(policy, _pod_labels(rendered, rendered.release))
    if rendered.values.get("collector", {}).get("enabled", True):
        assert not _selects(policy, _pod_labels(rendered, f"{rendered.release}-collector"))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    metrics_from = rendered.values.get("networkPolicy", {}).get("metricsFrom", [])
    if metrics_from:
        assert policy["spec"]["ingress"] == [
            {"from": metrics_from, "ports": [{"port": "metrics", "protocol": "TCP"}]}
        ]
    else:
        assert policy["spec"]["ingress"] == []


def test_collector_accepts_only_its_port(rendered: Any) -> None:
    if not rendered.of_kind("NetworkPolicy") or not rendered.values.get("collector", {}).get("enabled", True):
        return
    name = f"{rendered.release}-collector"
    policy = rendered.named("NetworkPolicy", name)
    assert _selects(policy, _pod_labels(rendered, name))
    assert not _selects(policy, _pod_labels(rendered, rendered.release))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])


@pytest.mark.parametrize(
    "values, agents",
    [
        ({}, {}),
        (
            {"operator": {"watchNamespaces": ["agents", "support"]}},
            {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["agents", "support"]}
                ]
            },
        ),
        ({"operator": {"watchNamespaces": ["team-*", "agents"]}}, {}),
        ({"operator": {"watchNamespaces": ["!kube-system"]}}, {}),
        ({"operator": {"watchNamespaces": ["agents, support"]}}, {}),
        (
            {
                "operator": {"watchNamespaces": ["agents"]},
                "networkPolicy": {
                    "agentNamespaceSelector": {"matchLabels": {"lightning-op.dev/agents": "true"}}
                },
            },
            {"matchLabels": {"lightning-op.dev/agents": "true"}},
        ),
    ],
    ids=[
        "all-namespaces",
        "watched-namespaces",
        "glob-falls-back-to-all",
        "negation-falls-back-to-all",
        "comma-list-falls-back-to-all",
        "explicit-selector",
    ],
)
def test_agent_namespaces(render: Any, values: dict[str, Any], agents: dict[str, Any]) -> None:
    out = render(values)
    (rule,) = out.named("NetworkPolicy", f"{out.release}-collector")["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": agents}]


def test_metrics_peers_may_scrape_the_collector(render: Any) -> None:
    out = render({"networkPolicy": {"metricsFrom": [MONITORING]}})
    (rule,) = out.named("NetworkPolicy", f"{out.release}-collector")["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {}}, MONITORING]
