"""NOTES.txt tells the truth about what the release installed and what the next steps will do.

Covers: without the collector (collector.enabled false) the notes say that no collector runs and that
EpisodeCaptures need spec.collectorUrl, unless collector.externalUrl names one, which then is the URL
the operator gives agents (LIGHTNING_COLLECTOR_URL) and the one the notes print; the walkthrough's
namespace (agents) is flagged when operator.watchNamespaces names other namespaces only, since the
operator would never see the examples and the collector's NetworkPolicy would refuse their episodes;
the warning about NetworkPolicies blocking Prometheus names the collector too when its policy admits
only the agent namespaces.
"""

from __future__ import annotations

from typing import Any

import pytest

EXTERNAL = "https://collector.example.com:8443"


def _operator_env(rendered: Any) -> dict[str, Any]:
    container = rendered.named("Deployment", rendered.release)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_without_a_collector_the_notes_ask_for_a_collector_url(render: Any) -> None:
    out = render({"collector": {"enabled": False}})
    in_cluster = f"http://{out.release}-collector.{out.namespace}.svc:8080"
    assert f"Agents send episodes to {in_cluster}" not in out.notes
    assert "runs no collector" in out.notes
    assert "spec.collectorUrl" in out.notes and "collector.externalUrl" in out.notes
    # what an EpisodeCapture without spec.collectorUrl gets: said, so the user knows it is not there
    assert _operator_env(out)["LIGHTNING_COLLECTOR_URL"] == in_cluster
    assert in_cluster in out.notes


def test_an_external_collector_is_what_agents_get(render: Any) -> None:
    out = render({"collector": {"enabled": False, "externalUrl": EXTERNAL}})
    assert _operator_env(out)["LIGHTNING_COLLECTOR_URL"] == EXTERNAL
    assert f"Agents send episodes to {EXTERNAL}/v1/episodes" in out.notes
    assert "spec.collectorUrl" not in out.notes
    # with the chart's own collector running, externalUrl has no say
    running = render({"collector": {"externalUrl": EXTERNAL}})
    assert _operator_env(running)["LIGHTNING_COLLECTOR_URL"].startswith(
        f"http://{running.release}-collector."
    )


@pytest.mark.parametrize(
    "watched, flagged",
    [([], False), (["agents", "support"], False), (["team-a", "team-b"], True), (["team-*"], False)],
    ids=["all-namespaces", "agents-watched", "agents-not-watched", "glob-cannot-tell"],
)
def test_the_walkthrough_namespace_is_flagged_when_not_watched(
    render: Any, watched: list[str], flagged: bool
) -> None:
    notes = render({"operator": {"watchNamespaces": watched}}).notes
    assert ("does not watch the namespace agents" in notes) == flagged, notes


@pytest.mark.parametrize(
    "watched, collector_blocked",
    [([], False), (["agents"], True)],
    ids=["collector-open-to-all", "collector-open-to-agents-only"],
)
def test_the_metrics_warning_names_what_is_blocked(
    render: Any, watched: list[str], collector_blocked: bool
) -> None:
    notes = render(
        {
            "operator": {"watchNamespaces": watched},
            "serviceMonitor": {"enabled": True},
            "networkPolicy": {"enabled": True, "metricsFrom": []},
        }
    ).notes
    assert "WARNING" in notes and "networkPolicy.metricsFrom is empty" in notes
    assert ("the collector" in notes.split("WARNING", 1)[1]) == collector_blocked, notes
