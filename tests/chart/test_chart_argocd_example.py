"""The Argo CD example installs this chart.

Covers: examples/argocd-application.yaml holds an Application whose Helm source is this repository's
charts/lightning-op (a directory with the Chart.yaml of chart lightning-op), with the release name
the chart's object names assume, into the namespace the operator's default collector URL names; any
values it sets are keys of values.yaml and render on their own (they name the model volume's claim,
which the chart requires); the Application that syncs the walkthrough's custom resources comes after
it (a later sync wave) and points at files that exist; since the waves do not make it wait for the
CRDs (not without a parent app-of-apps and an Application health check, which the comment says), it
retries a failed sync with a backoff, as automated sync does not retry a failed commit by itself.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TEXT = (REPO / "examples" / "argocd-application.yaml").read_text(encoding="utf-8")
APPS = [d for d in yaml.safe_load_all(TEXT) if d]


def _constant(module: Path, name: str) -> str:
    """A module-level string constant, read without importing the module (importing the controllers
    registers kopf handlers)."""
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            return node.value.value
    raise AssertionError(f"{module}: no constant {name}")


def _chart_app() -> dict[str, Any]:
    (app,) = [a for a in APPS if "helm" in a["spec"]["source"]]
    return app


def _missing_keys(given: Any, defaults: Any, prefix: str = "") -> list[str]:
    if not isinstance(given, dict) or not isinstance(defaults, dict):
        return []
    missing = []
    for key, value in given.items():
        if key not in defaults:
            missing.append(prefix + key)
        else:
            missing += _missing_keys(value, defaults[key], f"{prefix}{key}.")
    return missing


def test_application_points_at_this_chart(chart_dir: Path) -> None:
    app = _chart_app()
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (REPO / source["path"]).resolve() == chart_dir.resolve()
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["name"] == "lightning-op"
    assert source["helm"]["releaseName"] == chart["name"]


def test_application_installs_where_the_operator_expects_the_collector() -> None:
    app = _chart_app()
    namespace = app["spec"]["destination"]["namespace"]
    release = app["spec"]["source"]["helm"]["releaseName"]
    default_url = _constant(REPO / "src/lightning_op/controllers/common.py", "DEFAULT_COLLECTOR_URL")
    assert default_url == f"http://{release}-collector.{namespace}.svc:8080"
    assert "CreateNamespace=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_application_values_are_chart_values(render: Any, chart_dir: Path) -> None:
    helm = _chart_app()["spec"]["source"]["helm"]
    given = helm.get("valuesObject") or yaml.safe_load(helm.get("values") or "{}") or {}
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8"))
    assert not _missing_keys(given, defaults), "the Application sets values the chart does not have"
    assert render(given, bare=True).objects


def test_walkthrough_application_syncs_after_the_chart() -> None:
    chart_app = _chart_app()
    others = [a for a in APPS if a is not chart_app]
    assert others
    wave = int(chart_app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
    for app in others:
        assert int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) > wave
        source = app["spec"]["source"]
        assert (REPO / source["path"]).is_dir()
        include = source.get("directory", {}).get("include")
        if include:
            names = re.fullmatch(r"\{(.+)\}\.yaml", include)
            assert names, include
            for name in names.group(1).split(","):
                assert (REPO / source["path"] / f"{name}.yaml").is_file(), name


def _walkthrough_app() -> dict[str, Any]:
    (app,) = [a for a in APPS if a is not _chart_app()]
    return app


def test_walkthrough_application_retries_until_the_crds_exist() -> None:
    retry = _walkthrough_app()["spec"]["syncPolicy"]["retry"]
    assert retry["limit"] < 0 or retry["limit"] >= 5, retry
    backoff = retry["backoff"]
    assert re.fullmatch(r"\d+[smh]", backoff["duration"]) and re.fullmatch(
        r"\d+[smh]", backoff["maxDuration"]
    )
    assert int(backoff["factor"]) >= 2
    assert "SkipDryRunOnMissingResource=true" in _walkthrough_app()["spec"]["syncPolicy"]["syncOptions"]


def test_comment_does_not_promise_that_the_wave_waits() -> None:
    header = "\n".join(line for line in TEXT.splitlines() if line.startswith("#"))
    assert "waits for them" not in header
    for needed in ("app-of-apps", "health", "syncPolicy.retry"):
        assert needed in header, needed
