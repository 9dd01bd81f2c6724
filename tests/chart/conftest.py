"""Fixtures for the Helm chart tests: the chart in charts/lightning-op rendered offline with Helm's own
Go library (``helm-python-sdk``, no helm binary, no cluster), parsed into Kubernetes objects.

A test that takes the ``rendered`` fixture runs once per entry of ``VALUE_SETS`` (the defaults, every
toggle on, every toggle off, and the claim, namespace and placement variants), ids from the keys;
``render`` renders any other values. Both lay the given values over ``REQUIRED_VALUES``, the one
setting the chart cannot default (a ReadWriteMany StorageClass for the model volume); ``render(...,
bare=True)`` renders the given values alone. Renders are cached for the session: Helm renders in
milliseconds, but the same values are asked for by many tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "lightning-op"
RELEASE = "lightning-op"
NAMESPACE = "lightning-op"

#: what every install must choose: the chart fails the render while models are enabled without a
#: StorageClass or an existing claim (the cluster's default class rarely provides ReadWriteMany)
REQUIRED_VALUES: dict[str, Any] = {"models": {"persistence": {"storageClass": "azurefile-csi"}}}

MONITORING_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

#: the value sets every ``rendered`` test runs with
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-toggles-on": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "networkPolicy": {"enabled": True, "metricsFrom": [MONITORING_PEER]},
        "dashboard": {"enabled": True},
        "collector": {
            "enabled": True,
            "token": {"existingSecret": "collector-token"},
            "maxInflightBytes": 33554432,
            "redaction": {"builtins": ["email", "ip"], "patterns": ["ORD-[0-9]{8}", 'it\'s "quoted"']},
        },
        "models": {"enabled": True},
        "rbac": {"create": True, "aggregateToUserRoles": True},
        "operator": {"watchNamespaces": ["agents", "support"]},
    },
    "all-toggles-off": {
        "serviceMonitor": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "dashboard": {"enabled": False},
        "collector": {"enabled": False},
        "models": {"enabled": False},
        "rbac": {"create": False, "aggregateToUserRoles": False},
        "serviceAccount": {"create": False, "name": "platform-operator"},
    },
    "existing-claims": {
        "store": {"sqlite": {"persistence": {"existingClaim": "episodes-data"}}},
        "models": {"persistence": {"existingClaim": "shared-models", "storageClass": ""}},
    },
    "workload-identity": {
        "serviceAccount": {
            "annotations": {"azure.workload.identity/client-id": "00000000-0000-0000-0000-0000000000"}
        },
        "podLabels": {"azure.workload.identity/use": "true"},
    },
    "watch-globs": {"operator": {"watchNamespaces": ["team-*", "agents"]}},
    "placement": {
        "imagePullSecrets": [{"name": "ghcr-pull"}],
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "operator": {
            "image": {"tag": "0.1.1"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "agentpool", "operator": "In", "values": ["system"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "extraEnv": [{"name": "LIGHTNING_RETRY_DELAY_SECONDS", "value": "10"}],
        },
        "collector": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
        },
        "trainer": {"image": {"repository": "myregistry.azurecr.io/lightning-trainer", "tag": "cu128"}},
    },
}


@dataclass(frozen=True)
class Rendered:
    """One render of the chart: the files Helm produced and the objects in them."""

    values: dict[str, Any]
    release: str
    namespace: str
    files: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def notes(self) -> str:
        return next((text for name, text in self.files.items() if name.endswith("NOTES.txt")), "")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return [f"{obj['kind']}/{obj['metadata']['name']}" for obj in self.objects]

    def pod_templates(self) -> list[tuple[str, dict[str, Any]]]:
        """(workload name, pod template) of every Deployment, StatefulSet, DaemonSet and Job."""
        return [
            (obj["metadata"]["name"], obj["spec"]["template"])
            for obj in self.objects
            if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
        ]


def parse(files: dict[str, str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for name in sorted(files):
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(files[name]):
            if doc:
                assert isinstance(doc, dict) and "kind" in doc, f"{name}: not a Kubernetes object: {doc!r}"
                objects.append(doc)
    return objects


Renderer = Callable[..., Rendered]


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``, maps merged key by key (as Helm merges values files)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    loaded = helm_python.Chart.load(CHART_DIR)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> Renderer:
    cache: dict[str, Rendered] = {}

    def _render(
        values: dict[str, Any] | None = None,
        *,
        name: str = RELEASE,
        namespace: str = NAMESPACE,
        bare: bool = False,
    ) -> Rendered:
        given = (values or {}) if bare else merged(REQUIRED_VALUES, values or {})
        key = json.dumps([given, name, namespace], sort_keys=True)
        if key not in cache:
            files = chart.render(given, name=name, namespace=namespace)
            cache[key] = Rendered(given, name, namespace, files, parse(files))
        return cache[key]

    return _render


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "values_case" in metafunc.fixturenames:
        metafunc.parametrize("values_case", list(VALUE_SETS), ids=list(VALUE_SETS))


@pytest.fixture
def rendered(render: Renderer, values_case: str) -> Rendered:
    return render(VALUE_SETS[values_case])


@pytest.fixture(scope="session")
def value_sets() -> dict[str, dict[str, Any]]:
    return VALUE_SETS


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
