"""The walkthrough's example manifests are valid, and the Argo CD Application points at the chart.

Covers: examples/capture.yaml, labeling.yaml, finetune.yaml and promotion.yaml pass the generated
CRD schemas and CEL rules (as the API server would check them) and the operator's ``parse_spec``;
they form one walkthrough (one agent, one namespace, the FineTuneJob gated on the RewardLabeling,
the promotion naming the FineTuneJob); their embedded graders load with ``graders.spec`` as the
operator will load them; examples/argocd-application.yaml deploys charts/lightning-op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support import crd_validation as cv

from lightning_op.api import constants, kinds
from lightning_op.graders import spec as grader_spec
from lightning_op.manifests import crds

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in crds.build_crds()}
FILES = ["capture.yaml", "labeling.yaml", "finetune.yaml", "promotion.yaml"]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", FILES)
def test_example_passes_schema_and_cel(name: str) -> None:
    obj = load(name)
    assert obj["apiVersion"] == constants.API_VERSION
    assert cv.validate(CRDS[obj["kind"]], obj) == []


@pytest.mark.parametrize("name", FILES)
def test_example_parses_with_the_operator_models(name: str) -> None:
    obj = load(name)
    spec = kinds.parse_spec(obj["kind"], obj)
    assert spec.model_dump(by_alias=True)["agentId"] == "support-agent"


def test_examples_form_one_walkthrough() -> None:
    capture, labeling, finetune, promotion = (load(name) for name in FILES)
    assert {o["metadata"]["namespace"] for o in (capture, labeling, finetune, promotion)} == {"agents"}
    assert finetune["spec"]["gate"]["labelingRef"]["name"] == labeling["metadata"]["name"]
    assert promotion["spec"]["model"]["fineTuneJobRef"]["name"] == finetune["metadata"]["name"]
    assert promotion["spec"]["targetRef"] == capture["spec"]["targetRef"]


@pytest.mark.parametrize(
    "name, path",
    [("labeling.yaml", ("spec", "grader")), ("finetune.yaml", ("spec", "evaluation", "grader"))],
    ids=["labeling-grader", "evaluation-grader"],
)
def test_embedded_graders_load_with_the_graders_module(name: str, path: tuple[str, ...]) -> None:
    node: Any = load(name)
    for key in path:
        node = node[key]
    grader_spec.load_grader_spec(node)


def test_argocd_application_deploys_the_chart() -> None:
    docs = [
        d for d in yaml.safe_load_all((EXAMPLES / "argocd-application.yaml").read_text(encoding="utf-8")) if d
    ]
    assert all(d["apiVersion"] == "argoproj.io/v1alpha1" and d["kind"] == "Application" for d in docs)
    operator_app = docs[0]
    assert operator_app["spec"]["source"]["path"] == "charts/lightning-op"
    assert operator_app["spec"]["destination"]["server"] == "https://kubernetes.default.svc"
    assert "ServerSideApply=true" in operator_app["spec"]["syncPolicy"]["syncOptions"]
    walkthrough = docs[1]
    assert walkthrough["spec"]["source"]["path"] == "examples"
    assert "argocd" not in walkthrough["spec"]["source"]["directory"]["include"]
