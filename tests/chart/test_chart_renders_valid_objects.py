"""The chart lints clean and renders objects a real API server accepts, with every value set.

Covers, for the defaults, every toggle on, every toggle off, the claim, identity and placement variants
(``VALUE_SETS`` in conftest.py): Helm's lint finds no warning or error (strict, against the oldest
Kubernetes the chart supports); every rendered object validates against the Kubernetes OpenAPI
schemas (``kubernetes-validate``, strict: an unknown or misspelt field fails) for the oldest supported
and the newest known Kubernetes; ServiceMonitor, a CRD-typed object those schemas do not know, is
checked structurally; the chart's CRDs validate as CustomResourceDefinitions; object names are unique
and fit Kubernetes' limits; namespaced objects land in the release namespace; a release named other
than the chart prefixes every name; settings that cannot work fail the render with a message that
says what to change: among them store.type cosmos (planned: this build's operator and collector refuse
cosmos:// URLs and would crash-loop), and the plain defaults, whose model volume would need a
ReadWriteMany claim from the cluster's default StorageClass (Pending on AKS, EKS, GKE and kind): they
ask for a StorageClass or an existing claim, or models.enabled=false.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

CHART_YAML = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "charts/lightning-op/Chart.yaml").read_text()
)
#: the floor of the chart's kubeVersion (">=1.28.0-0"), and the newest schemas kubernetes-validate ships
OLDEST = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", CHART_YAML["kubeVersion"]).group(1)  # type: ignore[union-attr]
KUBE_VERSIONS = [OLDEST, kubernetes_validate.utils.latest_version()]
#: kinds kubernetes-validate has no schema for (CRD-typed); each is checked structurally below
CRD_TYPED = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_lint_finds_no_warning_or_error(chart_dir: Path, values_case: str, rendered: Any) -> None:
    report = helm_python.lint(chart_dir, rendered.values, strict=True, kube_version=f"v{OLDEST}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, f"helm lint ({values_case}): {report}"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(rendered: Any, kube_version: str) -> None:
    assert rendered.objects
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_TYPED:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid for Kubernetes {kube_version} at {path}: {exc.message}")


def test_service_monitors_are_well_formed(rendered: Any) -> None:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor the Prometheus Operator needs."""
    for sm in rendered.of_kind("ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
        assert DNS_LABEL.match(sm["metadata"]["name"])
        spec = sm["spec"]
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert spec["selector"]["matchLabels"] and all(
            isinstance(v, str) for v in spec["selector"]["matchLabels"].values()
        )
        assert spec["namespaceSelector"] == {"matchNames": [rendered.namespace]}
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
            assert isinstance(endpoint["port"], str) and endpoint["path"] == "/metrics"
            for key in ("interval", "scrapeTimeout"):
                assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint[key]), endpoint


def test_names_are_unique_and_fit(rendered: Any) -> None:
    keys = [(o["apiVersion"].split("/")[0], o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(keys) == len(set(keys)), f"duplicate objects: {rendered.names()}"
    for obj in rendered.objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), name


def test_namespaced_objects_are_in_the_release_namespace(rendered: Any) -> None:
    for obj in rendered.objects:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None, f"{obj['kind']}/{obj['metadata']['name']} is cluster-scoped"
        else:
            assert namespace == rendered.namespace, f"{obj['kind']}/{obj['metadata']['name']}: {namespace}"


def test_every_object_carries_the_chart_labels(rendered: Any) -> None:
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == rendered.release, obj["metadata"]
        assert labels.get("app.kubernetes.io/part-of") == "lightning-op"
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_crds_validate_as_custom_resource_definitions(chart_dir: Path, kube_version: str) -> None:
    files = sorted((chart_dir / "crds").glob("*.yaml"))
    assert len(files) == 4
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert [d["kind"] for d in docs] == ["CustomResourceDefinition"], path.name
        kubernetes_validate.validate(docs[0], kube_version, strict=True)


def test_another_release_name_prefixes_every_name(render: Any) -> None:
    out = render({"collector": {"enabled": True}}, name="prod", namespace="ml-platform")
    names = {o["metadata"]["name"] for o in out.objects}
    assert {"prod-lightning-op", "prod-lightning-op-collector", "prod-lightning-op-store"} <= names
    assert all(name.startswith("prod-lightning-op") for name in names), names
    operator = out.named("Deployment", "prod-lightning-op")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LIGHTNING_COLLECTOR_URL"] == "http://prod-lightning-op-collector.ml-platform.svc:8080"


COSMOS_PLANNED = "store.type cosmos is planned: the Azure Cosmos DB store is not available in this build yet"
MODELS_NEED_A_CLASS = (
    "models.persistence.storageClass or models.persistence.existingClaim is required"
    " while models.enabled is true"
)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"collector": {"replicas": 2}}, "store.type sqlite allows one writer: set collector.replicas=1"),
        ({"store": {"type": "cosmos"}}, COSMOS_PLANNED),
        (
            {
                "store": {"type": "cosmos", "cosmos": {"existingSecret": {"name": "lightning-store"}}},
                "collector": {"replicas": 3},
            },
            COSMOS_PLANNED,
        ),
        (
            {
                "store": {
                    "type": "cosmos",
                    "cosmos": {"url": "cosmos://acct.documents.azure.com/lightning/ep"},
                },
                "podLabels": {"azure.workload.identity/use": "true"},
            },
            COSMOS_PLANNED,
        ),
        (
            {"store": {"type": "postgres"}},
            'store.type "postgres" is not supported: use sqlite (cosmos is planned)',
        ),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        ({"models": {"persistence": {"storageClass": ""}}}, MODELS_NEED_A_CLASS),
        (
            {"store": {"cosmos": {"url": "cosmos://acct.documents.azure.com/lightning/ep"}}},
            "store.cosmos is set but store.type is sqlite",
        ),
        (
            {"store": {"cosmos": {"existingSecret": {"name": "lightning-store"}}}},
            "store.cosmos is set but store.type is sqlite",
        ),
        (
            {"collector": {"maxBodyBytes": 67108864, "maxInflightBytes": 33554432}},
            "collector.maxInflightBytes 33554432 is below collector.maxBodyBytes 67108864",
        ),
        (
            {"collector": {"redaction": {"builtins": ["email", "ssn"]}}},
            'collector.redaction.builtins: unknown detector "ssn": use email, phone, credit_card, ip',
        ),
        (
            {"collector": {"enabled": False, "externalUrl": "collector.example.com:8080"}},
            'collector.externalUrl "collector.example.com:8080" is not an http(s) URL',
        ),
    ],
    ids=[
        "sqlite-with-two-collectors",
        "cosmos-without-url-or-secret",
        "cosmos-secret",
        "cosmos-workload-identity",
        "unknown-store",
        "no-service-account",
        "models-without-class-or-claim",
        "cosmos-url-with-sqlite",
        "cosmos-secret-with-sqlite",
        "inflight-budget-below-body-limit",
        "unknown-redaction-detector",
        "external-collector-not-a-url",
    ],
)
def test_settings_that_cannot_work_fail_the_render(render: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError) as caught:
        render(values)
    assert message in str(caught.value)


def test_cosmos_is_marked_planned_in_values(chart_dir: Path) -> None:
    lines = (chart_dir / "values.yaml").read_text(encoding="utf-8").splitlines()
    cosmos = lines.index("  cosmos:")
    assert "Planned, not available in this build" in lines[cosmos - 1]
    assert any(
        "cosmos (Azure Cosmos DB) is planned" in line for line in lines[lines.index("store:") : cosmos]
    )


def test_plain_defaults_ask_for_a_read_write_many_volume(render: Any) -> None:
    """The cluster's default StorageClass (AKS managed-csi, EKS gp2/gp3, GKE pd, kind local-path)
    cannot provide the ReadWriteMany model volume: the plain defaults would leave the models claim,
    the operator that mounts it and the collector pinned to the operator Pending."""
    with pytest.raises(helm_python.HelmError) as caught:
        render({}, bare=True)
    message = str(caught.value)
    assert MODELS_NEED_A_CLASS in message
    for hint in ("azurefile-csi", "NFS", "examples/models-volume.yaml", "models.enabled=false"):
        assert hint in message, hint


@pytest.mark.parametrize(
    "values",
    [
        {"models": {"persistence": {"storageClass": "azurefile-csi"}}},
        {"models": {"persistence": {"existingClaim": "lightning-op-models"}}},
        {"models": {"enabled": False}},
    ],
    ids=["rwx-class", "existing-claim", "models-off"],
)
def test_a_class_a_claim_or_no_models_renders(render: Any, values: dict[str, Any]) -> None:
    out = render(values, bare=True)
    claims = {c["metadata"]["name"]: c for c in out.of_kind("PersistentVolumeClaim")}
    storage_class = values["models"].get("persistence", {}).get("storageClass")
    if storage_class:
        models = claims[f"{out.release}-models"]["spec"]
        assert models["storageClassName"] == storage_class
        assert models["accessModes"] == ["ReadWriteMany"]
    else:
        assert f"{out.release}-models" not in claims
    models_off = values["models"].get("enabled") is False
    assert ("FineTuneJobs cannot run" in out.notes) == models_off
    assert ("examples/finetune.yaml" in out.notes) != models_off
