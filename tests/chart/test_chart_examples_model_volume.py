"""The walkthrough's FineTuneJob names a model volume claim that the examples make, on the operator's storage.

Covers: examples/finetune.yaml's spec.modelVolume.claimName is a PersistentVolumeClaim of
examples/models-volume.yaml in the FineTuneJob's namespace (claims are namespaced, and the chart's
models claim lives in the release namespace); the Argo CD Application's chart values mount a claim
of that file in the release namespace; both claims carry the chart's models claim name for the
release, are ReadWriteMany and pre-bound to PersistentVolumes that bind them back and reach one
and the same share; the objects validate against the Kubernetes schemas; finetune.yaml says what the
claim must be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
VOLUME_OBJECTS = [
    d for d in yaml.safe_load_all((EXAMPLES / "models-volume.yaml").read_text(encoding="utf-8")) if d
]
FINETUNE_TEXT = (EXAMPLES / "finetune.yaml").read_text(encoding="utf-8")
FINETUNE = yaml.safe_load(FINETUNE_TEXT)
(CHART_APP,) = [
    d
    for d in yaml.safe_load_all((EXAMPLES / "argocd-application.yaml").read_text(encoding="utf-8"))
    if d and "helm" in d["spec"]["source"]
]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in VOLUME_OBJECTS if o["kind"] == kind]


def _claim(namespace: str, name: str) -> dict[str, Any]:
    found = [
        c
        for c in _of_kind("PersistentVolumeClaim")
        if c["metadata"]["namespace"] == namespace and c["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"examples/models-volume.yaml has no claim {namespace}/{name}"
    return found[0]


def test_finetune_claim_exists_in_its_namespace() -> None:
    claim = _claim(FINETUNE["metadata"]["namespace"], FINETUNE["spec"]["modelVolume"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_argocd_chart_values_mount_a_claim_of_the_examples(render: Any) -> None:
    values = CHART_APP["spec"]["source"]["helm"]["valuesObject"]
    namespace = CHART_APP["spec"]["destination"]["namespace"]
    release = CHART_APP["spec"]["source"]["helm"]["releaseName"]
    name = values["models"]["persistence"]["existingClaim"]
    _claim(namespace, name)
    out = render(values, name=release, namespace=namespace, bare=True)
    operator = out.named("Deployment", release)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in operator["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == name


def test_claims_are_named_like_the_charts_models_claim() -> None:
    release = CHART_APP["spec"]["source"]["helm"]["releaseName"]
    names = {c["metadata"]["name"] for c in _of_kind("PersistentVolumeClaim")}
    assert names == {f"{release}-models"}
    namespaces = {c["metadata"]["namespace"] for c in _of_kind("PersistentVolumeClaim")}
    assert namespaces == {CHART_APP["spec"]["destination"]["namespace"], FINETUNE["metadata"]["namespace"]}


def test_every_claim_is_bound_to_its_own_volume_on_one_share() -> None:
    volumes = {v["metadata"]["name"]: v for v in _of_kind("PersistentVolume")}
    claims = _of_kind("PersistentVolumeClaim")
    assert len(volumes) == len(claims) == 2
    shares = set()
    for claim in claims:
        volume = volumes[claim["spec"]["volumeName"]]
        ref = volume["spec"]["claimRef"]
        assert (ref["namespace"], ref["name"]) == (claim["metadata"]["namespace"], claim["metadata"]["name"])
        # "" on both sides: no dynamic provisioning, the claim binds the pre-made volume.
        assert claim["spec"]["storageClassName"] == volume["spec"]["storageClassName"] == ""
        assert volume["spec"]["accessModes"] == claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        shares.add((volume["spec"]["nfs"]["server"], volume["spec"]["nfs"]["path"]))
    assert len(shares) == 1, f"the volumes reach different storage: {shares}"


# The floor of the chart's kubeVersion, and the newest schemas kubernetes-validate ships.
@pytest.mark.parametrize("kube_version", ["1.28.0", kubernetes_validate.utils.latest_version()])
def test_objects_validate_against_kubernetes_schemas(kube_version: str) -> None:
    for obj in VOLUME_OBJECTS:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_finetune_says_what_the_claim_must_be() -> None:
    lines = FINETUNE_TEXT.splitlines()
    at = lines.index("  modelVolume:")
    comment = " ".join(line.strip("# ") for line in lines[at - 3 : at])
    for needed in ("this namespace", "same ReadWriteMany share", "examples/models-volume.yaml"):
        assert needed in comment, needed
