"""Metrics scraping and the Grafana dashboard follow the metrics the code really exports.

Covers: with serviceMonitor.enabled, one monitoring.coreos.com/v1 ServiceMonitor per component whose
selector picks exactly that component's Service and whose endpoint names a port of it (absent when
disabled; the collector's only when the collector runs); with dashboard.enabled, a ConfigMap with
the sidecar label holding dashboard JSON (absent when disabled), whose panels cover episodes
accepted, labeling, training progress, promotions and rollbacks; every metric a panel queries is
one the operator (``lightning_op.metrics.Metrics``) or the collector
(``collector.server.CollectorMetrics``) exposes, every ``by (...)`` label is one of its labels, and
every ``kind``/``phase`` value is a real kind and phase, so a renamed metric fails here instead of
leaving an empty panel; every metric the code exports is on some panel; a panel of outcomes counts
only the phases a run ends in, never one it passes through.
"""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from lightning_op import metrics
from lightning_op.api import kinds
from lightning_op.collector import server

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric of the operator and the collector."""
    out: dict[str, set[str]] = {}
    for holder in (metrics.Metrics(), server.CollectorMetrics()):
        for metric in vars(holder).values():
            if isinstance(metric, MetricWrapperBase):
                for suffix in SUFFIXES[metric._type]:
                    labels = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
                    out[metric._name + suffix] = labels
    return out


def _dashboard(rendered: Any) -> dict[str, Any] | None:
    maps = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    if not maps:
        return None
    (config_map,) = maps
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    dashboard: dict[str, Any] = json.loads(text)
    return dashboard


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_service_monitors_follow_the_toggle_and_select_their_service(rendered: Any) -> None:
    monitors = rendered.of_kind("ServiceMonitor")
    if not rendered.values.get("serviceMonitor", {}).get("enabled", False):
        assert not monitors
        return
    components = {"operator"} | (
        {"collector"} if rendered.values.get("collector", {}).get("enabled", True) else set()
    )
    assert {m["metadata"]["name"] for m in monitors} == {f"{rendered.release}-{c}" for c in components}
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s for s in rendered.of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert len(services) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
        extra = rendered.values["serviceMonitor"].get("labels", {})
        assert extra.items() <= monitor["metadata"]["labels"].items()


def test_dashboard_follows_the_toggle(rendered: Any) -> None:
    enabled = rendered.values.get("dashboard", {}).get("enabled", False)
    assert (_dashboard(rendered) is not None) == enabled


def test_dashboard_covers_the_loop(render: Any) -> None:
    dashboard = _dashboard(render({"dashboard": {"enabled": True}}))
    assert dashboard is not None and dashboard["uid"] == "lightning-op"
    queried = " ".join(expr for _, expr in _exprs(dashboard))
    for needle in (
        "lightning_collector_episodes_accepted_total",
        'kind="RewardLabeling"',
        "lightning_op_training_progress_percent",
        "lightning_op_promotions_total",
        "lightning_op_rollbacks_total",
    ):
        assert needle in queried, f"no panel queries {needle}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_exported_metric_has_a_panel(render: Any) -> None:
    """A metric the code exports and no panel shows is one an operator of the system never sees."""
    dashboard = _dashboard(render({"dashboard": {"enabled": True}}))
    assert dashboard is not None
    queried = " ".join(expr for _, expr in _exprs(dashboard))
    families: dict[str, list[str]] = {}
    for sample in _exported():
        family = re.sub(r"(_total|_bucket|_sum|_count|_created)$", "", sample)
        families.setdefault(family, []).append(sample)
    unseen = sorted(f for f, samples in families.items() if not any(s in queried for s in samples))
    assert not unseen, f"exported but on no panel: {unseen}"


def test_dashboard_queries_only_exported_metrics_and_labels(render: Any) -> None:
    dashboard = _dashboard(render({"dashboard": {"enabled": True}}))
    assert dashboard is not None
    exported = _exported()
    phases = {info.kind: {str(p) for p in info.phases} for info in kinds.KINDS}
    for title, expr in _exprs(dashboard):
        names = set(re.findall(r"\b(lightning_[a-z_]+)\b", expr))
        assert names, f"{title}: no lightning metric in {expr}"
        unknown = names - set(exported)
        assert not unknown, f"{title}: {sorted(unknown)} are not exported (have: {sorted(exported)})"
        labels = set().union(*(exported[n] for n in names))
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            by = {label.strip() for label in group.split(",")}
            assert by <= labels, f"{title}: grouping by {sorted(by - labels)}, not labels of {sorted(names)}"
        kind = re.search(r'kind="([^"]+)"', expr)
        if kind:
            assert kind.group(1) in phases, f"{title}: unknown kind {kind.group(1)}"
            phase = re.search(r'phase=~?"([^"]+)"', expr)
            if phase:
                assert set(phase.group(1).split("|")) <= phases[kind.group(1)], f"{title}: {phase.group(1)}"


#: the phases a run of each kind ends in (Completed: a RewardLabeling's verdict is given)
FINISHED = {
    "RewardLabeling": {"Completed", "Failed"},
    "FineTuneJob": {"Succeeded", "Failed"},
    "ModelPromotion": {"Promoted", "RolledBack", "Failed"},
}


def test_outcome_panels_count_only_finished_phases(render: Any) -> None:
    dashboard = _dashboard(render({"dashboard": {"enabled": True}}))
    assert dashboard is not None
    outcome_panels = [(t, e) for t, e in _exprs(dashboard) if "outcome" in t.lower() and "phase=" in e]
    assert outcome_panels, "no panel shows labeling outcomes by phase"
    for title, expr in outcome_panels:
        kind = re.search(r'kind="([^"]+)"', expr)
        phase = re.search(r'phase=~?"([^"]+)"', expr)
        assert kind and phase, f"{title}: {expr}"
        passing = set(phase.group(1).split("|")) - FINISHED[kind.group(1)]
        assert not passing, f"{title}: counts {sorted(passing)}, phases a {kind.group(1)} only passes through"
