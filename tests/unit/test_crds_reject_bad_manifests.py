"""Bad manifests are rejected by the CRD schemas and CEL rules with a message that names the field.

Covers: 70+ broken variants of the walkthrough's example manifests (ranges, enums, patterns, types,
required fields, unknown fields, and every CEL rule: exactly one model source, threshold within the
grader's range, since before until, toleration values, distinct env names, modelVolume for the
local backend, a grader type or preset, range ordering), each validated as the API server would
(defaults, strict unknown fields, the OpenAPI schema through ``jsonschema``, CEL through ``celpy``;
see ``tests/support/crd_validation.py``) and each refused at the field the case names; the same
manifests refused by the operator's own ``parse_spec`` at that same field (the path where no CEL
runs); updates that change ``backend`` or ``baseModel`` refused by the transition rules
while other updates pass; and good variants accepted by both.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import crd_validation as cv

from lightning_op.api import kinds
from lightning_op.api.common import SpecError
from lightning_op.manifests import crds

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in crds.build_crds()}
FILES = {"ec": "capture.yaml", "rl": "labeling.yaml", "ftj": "finetune.yaml", "mp": "promotion.yaml"}
DELETE = object()

SCORE_JUDGE = {
    "type": "score_model",
    "model": "gpt-4o-mini",
    "input": [{"role": "user", "content": "Rate 1 to 10: {{sample.output_text}}"}],
}


def example(short: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / FILES[short]).read_text(encoding="utf-8"))


def _split(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    return parts


def mutate(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with ``path: value`` set (``DELETE`` removes the field)."""
    out = copy.deepcopy(obj)
    for path, value in changes.items():
        *parents, last = _split(path)
        node: Any = out
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return out


# (id, example, changes, field path named in the rejection, message fragment)
BAD: list[tuple[str, str, dict[str, Any], str, str]] = [
    # EpisodeCapture
    ("ec-sampling-rate-above-1", "ec", {"spec.samplingRate": 1.5}, "spec.samplingRate", "maximum"),
    ("ec-sampling-rate-negative", "ec", {"spec.samplingRate": -0.1}, "spec.samplingRate", "minimum"),
    ("ec-sampling-rate-not-a-number", "ec", {"spec.samplingRate": "half"}, "spec.samplingRate", "type"),
    ("ec-no-spec", "ec", {"spec": DELETE}, "spec", "Required value"),
    ("ec-no-target-ref", "ec", {"spec.targetRef": DELETE}, "spec.targetRef", "Required value"),
    ("ec-no-target-name", "ec", {"spec.targetRef.name": DELETE}, "spec.targetRef.name", "Required value"),
    (
        "ec-target-statefulset",
        "ec",
        {"spec.targetRef.kind": "StatefulSet"},
        "spec.targetRef.kind",
        "Unsupported",
    ),
    (
        "ec-target-name-not-dns",
        "ec",
        {"spec.targetRef.name": "Support_Agent"},
        "spec.targetRef.name",
        "match",
    ),
    (
        "ec-container-too-long",
        "ec",
        {"spec.targetRef.container": "a" * 64},
        "spec.targetRef.container",
        "long",
    ),
    (
        "ec-unknown-redaction",
        "ec",
        {"spec.redaction.builtins": ["email", "ssn"]},
        "spec.redaction.builtins[1]",
        "Unsupported value: 'ssn'",
    ),
    ("ec-empty-pattern", "ec", {"spec.redaction.patterns": [""]}, "spec.redaction.patterns[0]", "non-empty"),
    ("ec-ttl-zero", "ec", {"spec.retention.ttlDays": 0}, "spec.retention.ttlDays", "minimum"),
    ("ec-enabled-string", "ec", {"spec.enabled": "yes"}, "spec.enabled", "type"),
    ("ec-agent-id-space", "ec", {"spec.agentId": "support agent"}, "spec.agentId", "match"),
    ("ec-typo-field", "ec", {"spec.samplingRatio": 0.5}, "spec.samplingRatio", "unknown field"),
    ("ec-collector-not-http", "ec", {"spec.collectorUrl": "ftp://collector"}, "spec.collectorUrl", "match"),
    # RewardLabeling
    ("rl-no-grader", "rl", {"spec.grader": DELETE}, "spec.grader", "Required value"),
    ("rl-grader-type-unknown", "rl", {"spec.grader.type": "regex"}, "spec.grader.type", "Unsupported"),
    ("rl-grader-no-type-or-preset", "rl", {"spec.grader": {"name": "x"}}, "spec.grader.type", "needs a type"),
    (
        "rl-grader-range-reversed",
        "rl",
        {"spec.grader": {**SCORE_JUDGE, "range": [10, 0]}},
        "spec.grader.range",
        "min < max",
    ),
    (
        "rl-grader-range-3-items",
        "rl",
        {"spec.grader": {**SCORE_JUDGE, "range": [0, 5, 10]}},
        "spec.grader.range",
        "too long",
    ),
    (
        "rl-grader-preset-bad",
        "rl",
        {"spec.grader": {"preset": "Tool Selection"}},
        "spec.grader.preset",
        "match",
    ),
    ("rl-sample-size-zero", "rl", {"spec.sampleTest.size": 0}, "spec.sampleTest.size", "minimum"),
    ("rl-sample-size-101", "rl", {"spec.sampleTest.size": 101}, "spec.sampleTest.size", "maximum"),
    ("rl-dry-run-negative", "rl", {"spec.dryRun.sampleSize": -1}, "spec.dryRun.sampleSize", "minimum"),
    (
        "rl-healthy-mean-min-above-max",
        "rl",
        {"spec.dryRun.healthyRanges.meanMin": 0.9},
        "spec.dryRun.healthyRanges.meanMax",
        "meanMin must not be greater than meanMax",
    ),
    (
        "rl-healthy-std-above-half",
        "rl",
        {"spec.dryRun.healthyRanges.stdMax": 0.6},
        "spec.dryRun.healthyRanges.stdMax",
        "maximum",
    ),
    ("rl-mode-unknown", "rl", {"spec.mode": "Daily"}, "spec.mode", "Unsupported"),
    ("rl-interval-too-short", "rl", {"spec.intervalSeconds": 10}, "spec.intervalSeconds", "minimum"),
    (
        "rl-since-after-until",
        "rl",
        {"spec.selector.since": "2025-02-01T00:00:00Z", "spec.selector.until": "2025-01-01T00:00:00Z"},
        "spec.selector.until",
        "since must be before until",
    ),
    ("rl-since-not-a-time", "rl", {"spec.selector.since": "yesterday"}, "spec.selector.since", "date-time"),
    ("rl-limit-zero", "rl", {"spec.selector.limit": 0}, "spec.selector.limit", "minimum"),
    (
        "rl-unlabeled-only-string",
        "rl",
        {"spec.selector.unlabeledOnly": "true"},
        "spec.selector.unlabeledOnly",
        "type",
    ),
    ("rl-concurrency-65", "rl", {"spec.concurrency": 65}, "spec.concurrency", "maximum"),
    ("rl-typo-field", "rl", {"spec.sampletest": {"size": 3}}, "spec.sampletest", "unknown field"),
    # FineTuneJob
    ("ftj-min-reward-above-1", "ftj", {"spec.dataset.minReward": 1.5}, "spec.dataset.minReward", "maximum"),
    ("ftj-min-reward-negative", "ftj", {"spec.dataset.minReward": -1}, "spec.dataset.minReward", "minimum"),
    (
        "ftj-validation-fraction-1",
        "ftj",
        {"spec.dataset.validationFraction": 1},
        "spec.dataset.validationFraction",
        "maximum",
    ),
    ("ftj-max-episodes-zero", "ftj", {"spec.dataset.maxEpisodes": 0}, "spec.dataset.maxEpisodes", "minimum"),
    ("ftj-no-base-model", "ftj", {"spec.baseModel": DELETE}, "spec.baseModel", "Required value"),
    ("ftj-empty-base-model", "ftj", {"spec.baseModel": ""}, "spec.baseModel", "non-empty"),
    ("ftj-backend-unknown", "ftj", {"spec.backend": "vertex"}, "spec.backend", "Unsupported"),
    ("ftj-method-grpo", "ftj", {"spec.method": "grpo"}, "spec.method", "Unsupported"),
    (
        "ftj-local-without-volume",
        "ftj",
        {"spec.modelVolume": DELETE},
        "spec.modelVolume",
        "required for the local",
    ),
    (
        "ftj-claim-name-bad",
        "ftj",
        {"spec.modelVolume.claimName": "Models!"},
        "spec.modelVolume.claimName",
        "match",
    ),
    (
        "ftj-gate-ref-without-name",
        "ftj",
        {"spec.gate.labelingRef": {}},
        "spec.gate.labelingRef.name",
        "Required",
    ),
    ("ftj-allow-warning-string", "ftj", {"spec.gate.allowWarning": "no"}, "spec.gate.allowWarning", "type"),
    (
        "ftj-threshold-above-1",
        "ftj",
        {"spec.evaluation.threshold": 1.2},
        "spec.evaluation.threshold",
        "within the grader's range",
    ),
    (
        "ftj-threshold-outside-grader-range",
        "ftj",
        {"spec.evaluation.grader": {**SCORE_JUDGE, "range": [1, 10]}, "spec.evaluation.threshold": 0.75},
        "spec.evaluation.threshold",
        "within the grader's range",
    ),
    ("ftj-no-eval-grader", "ftj", {"spec.evaluation.grader": DELETE}, "spec.evaluation.grader", "Required"),
    ("ftj-max-rounds-zero", "ftj", {"spec.evaluation.maxRounds": 0}, "spec.evaluation.maxRounds", "minimum"),
    ("ftj-max-rounds-21", "ftj", {"spec.evaluation.maxRounds": 21}, "spec.evaluation.maxRounds", "maximum"),
    ("ftj-lr-decay-zero", "ftj", {"spec.evaluation.lrDecay": 0}, "spec.evaluation.lrDecay", "minimum"),
    ("ftj-lr-decay-above-1", "ftj", {"spec.evaluation.lrDecay": 1.5}, "spec.evaluation.lrDecay", "maximum"),
    (
        "ftj-learning-rate-zero",
        "ftj",
        {"spec.hyperparameters.learningRate": 0},
        "spec.hyperparameters.learningRate",
        "minimum",
    ),
    (
        "ftj-epochs-fraction",
        "ftj",
        {"spec.hyperparameters.epochs": 2.5},
        "spec.hyperparameters.epochs",
        "type",
    ),
    ("ftj-epochs-zero", "ftj", {"spec.hyperparameters.epochs": 0}, "spec.hyperparameters.epochs", "minimum"),
    (
        "ftj-lora-dropout-1",
        "ftj",
        {"spec.hyperparameters.loraDropout": 1},
        "spec.hyperparameters.loraDropout",
        "maximum",
    ),
    (
        "ftj-lora-rank-zero",
        "ftj",
        {"spec.hyperparameters.loraRank": 0},
        "spec.hyperparameters.loraRank",
        "minimum",
    ),
    ("ftj-seed-negative", "ftj", {"spec.hyperparameters.seed": -1}, "spec.hyperparameters.seed", "minimum"),
    ("ftj-gpu-negative", "ftj", {"spec.resources.gpu": -1}, "spec.resources.gpu", "minimum"),
    ("ftj-memory-not-quantity", "ftj", {"spec.resources.memory": "lots"}, "spec.resources.memory", "match"),
    ("ftj-memory-number", "ftj", {"spec.resources.memory": 24}, "spec.resources.memory", "type"),
    (
        "ftj-node-selector-int",
        "ftj",
        {"spec.resources.nodeSelector": {"agentpool": 1}},
        "spec.resources.nodeSelector.agentpool",
        "type",
    ),
    (
        "ftj-toleration-exists-with-value",
        "ftj",
        {"spec.resources.tolerations[0].operator": "Exists"},
        "spec.resources.tolerations[0].value",
        "value must be empty when operator is Exists",
    ),
    (
        "ftj-toleration-no-key-not-exists",
        "ftj",
        {"spec.resources.tolerations[0].key": DELETE},
        "spec.resources.tolerations[0].operator",
        "operator must be Exists when key is empty",
    ),
    (
        "ftj-toleration-seconds-without-no-execute",
        "ftj",
        {"spec.resources.tolerations[0].tolerationSeconds": 60},
        "spec.resources.tolerations[0].tolerationSeconds",
        "tolerationSeconds needs effect NoExecute",
    ),
    (
        "ftj-node-selector-bad-key",
        "ftj",
        {"spec.resources.nodeSelector": {"bad key!": "gpu"}},
        "spec.resources.nodeSelector",
        "label key",
    ),
    (
        "ftj-node-selector-bad-value",
        "ftj",
        {"spec.resources.nodeSelector": {"agentpool": "a b"}},
        "spec.resources.nodeSelector.agentpool",
        "match",
    ),
    (
        "ftj-toleration-bad-effect",
        "ftj",
        {"spec.resources.tolerations[0].effect": "NoRun"},
        "spec.resources.tolerations[0].effect",
        "Unsupported",
    ),
    (
        "ftj-image-pull-secret-bare-string",
        "ftj",
        {"spec.resources.imagePullSecrets": ["ghcr-pull"]},
        "spec.resources.imagePullSecrets[0]",
        "type",
    ),
    (
        "ftj-secret-ref-without-key",
        "ftj",
        {"spec.credentials": {"secretRef": {"name": "azure-openai"}}},
        "spec.credentials.secretRef.key",
        "Required value",
    ),
    (
        "ftj-endpoint-plain-http",
        "ftj",
        {"spec.credentials": {"endpoint": "http://example.openai.azure.com"}},
        "spec.credentials.endpoint",
        "match",
    ),
    ("ftj-deadline-zero", "ftj", {"spec.activeDeadlineSeconds": 0}, "spec.activeDeadlineSeconds", "minimum"),
    ("ftj-suspend-string", "ftj", {"spec.suspend": "no"}, "spec.suspend", "type"),
    (
        "ftj-typo-field",
        "ftj",
        {"spec.hyperparameters.learning_rate": 0.1},
        "spec.hyperparameters.learning_rate",
        "unknown field",
    ),
    # ModelPromotion
    (
        "mp-model-both",
        "mp",
        {"spec.model": {"fineTuneJobRef": {"name": "support-agent-ft"}, "name": "tuned-1"}},
        "spec.model",
        "exactly one of model.fineTuneJobRef or model.name",
    ),
    (
        "mp-model-neither",
        "mp",
        {"spec.model": {}},
        "spec.model",
        "exactly one of model.fineTuneJobRef or model.name",
    ),
    ("mp-no-model", "mp", {"spec.model": DELETE}, "spec.model", "Required value"),
    ("mp-no-target-ref", "mp", {"spec.targetRef": DELETE}, "spec.targetRef", "Required value"),
    ("mp-target-daemonset", "mp", {"spec.targetRef.kind": "DaemonSet"}, "spec.targetRef.kind", "Unsupported"),
    (
        "mp-ftj-ref-bad-name",
        "mp",
        {"spec.model.fineTuneJobRef.name": "FT_1"},
        "spec.model.fineTuneJobRef.name",
        "match",
    ),
    ("mp-env-same-names", "mp", {"spec.env.modelName": "USE_TUNED_MODEL"}, "spec.env.modelName", "different"),
    ("mp-env-bad-name", "mp", {"spec.env.useTunedModel": "USE TUNED"}, "spec.env.useTunedModel", "match"),
    ("mp-min-improvement-2", "mp", {"spec.gate.minImprovement": 2}, "spec.gate.minImprovement", "maximum"),
    (
        "mp-max-regression-above-1",
        "mp",
        {"spec.gate.maxRegression": 1.5},
        "spec.gate.maxRegression",
        "maximum",
    ),
    (
        "mp-window-negative",
        "mp",
        {"spec.verification.windowSeconds": -1},
        "spec.verification.windowSeconds",
        "minimum",
    ),
    (
        "mp-min-episodes-zero",
        "mp",
        {"spec.verification.minEpisodes": 0},
        "spec.verification.minEpisodes",
        "minimum",
    ),
    (
        "mp-reward-drop-above-1",
        "mp",
        {"spec.verification.maxRewardDrop": 1.5},
        "spec.verification.maxRewardDrop",
        "maximum",
    ),
    ("mp-rollback-string", "mp", {"spec.rollback.automatic": "yes"}, "spec.rollback.automatic", "type"),
    ("mp-typo-field", "mp", {"spec.verfication": {"windowSeconds": 60}}, "spec.verfication", "unknown field"),
]


def test_there_are_at_least_fifty_bad_manifests() -> None:
    assert len(BAD) >= 50
    assert len({case[0] for case in BAD}) == len(BAD), "case ids must be unique"


@pytest.mark.parametrize("short, changes, path, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_api_server_rejects_and_names_the_field(
    short: str, changes: dict[str, Any], path: str, fragment: str
) -> None:
    obj = mutate(example(short), changes)
    errors = cv.validate(CRDS[obj["kind"]], obj)
    assert errors, "the manifest was accepted"
    at_field = [e for e in errors if e.path == path]
    assert at_field, f"no error names {path}; got {[str(e) for e in errors]}"
    assert fragment, "each case names the message it expects"
    assert any(fragment in e.message for e in at_field), f"{path}: expected {fragment!r} in {at_field}"


@pytest.mark.parametrize("short, changes, path", [c[1:4] for c in BAD], ids=[c[0] for c in BAD])
def test_operator_parse_spec_rejects_and_names_the_field(
    short: str, changes: dict[str, Any], path: str
) -> None:
    """Where no CEL runs (the emulator, a stale CRD), parse_spec refuses the manifest at the same field."""
    obj = mutate(example(short), changes)
    with pytest.raises(SpecError) as caught:
        kinds.parse_spec(obj["kind"], obj)
    reported = [p.path for p in caught.value.problems]
    assert path in reported, f"expected {path}, got {caught.value}"


# (id, example, old changes, new changes, field path or None when the update is allowed)
UPDATES: list[tuple[str, str, dict[str, Any], dict[str, Any], str | None]] = [
    (
        "backend-changed",
        "ftj",
        {},
        {"spec.backend": "azureOpenAI", "spec.modelVolume": DELETE},
        "spec.backend",
    ),
    ("base-model-changed", "ftj", {}, {"spec.baseModel": "/models/base/other"}, "spec.baseModel"),
    ("hyperparameters-changed", "ftj", {}, {"spec.hyperparameters.epochs": 5}, None),
    ("suspend-toggled", "ftj", {}, {"spec.suspend": True}, None),
    ("backend-defaulted-then-explicit", "ftj", {"spec.backend": DELETE}, {"spec.backend": "local"}, None),
    (
        "backend-defaulted-then-changed",
        "ftj",
        {"spec.backend": DELETE},
        {"spec.backend": "azureOpenAI"},
        "spec.backend",
    ),
]


@pytest.mark.parametrize(
    "short, old_changes, new_changes, path", [u[1:] for u in UPDATES], ids=[u[0] for u in UPDATES]
)
def test_transition_rules_guard_immutable_fields(
    short: str, old_changes: dict[str, Any], new_changes: dict[str, Any], path: str | None
) -> None:
    base = example(short)
    old = mutate(base, old_changes)
    new = mutate(base, new_changes)
    errors = cv.validate(CRDS[new["kind"]], new, old=old)
    if path is None:
        assert errors == []
    else:
        assert [e.path for e in errors] == [path]
        assert "immutable" in errors[0].message


GOOD: list[tuple[str, str, dict[str, Any]]] = [
    ("ec-minimal", "ec", {"spec": {"targetRef": {"name": "support-agent"}}}),
    ("ec-disabled-no-redaction", "ec", {"spec.enabled": False, "spec.redaction": {"builtins": []}}),
    ("rl-preset-grader", "rl", {"spec.grader": {"preset": "tool_selection"}}),
    ("rl-score-model-range", "rl", {"spec.grader": {**SCORE_JUDGE, "range": [0, 10]}}),
    (
        "rl-continuous-window",
        "rl",
        {
            "spec.mode": "Continuous",
            "spec.intervalSeconds": 600,
            "spec.selector.since": "2025-01-01T00:00:00Z",
            "spec.selector.until": "2025-02-01T00:00:00+01:00",
        },
    ),
    ("ftj-azure-without-volume", "ftj", {"spec.backend": "azureOpenAI", "spec.modelVolume": DELETE}),
    ("ftj-no-evaluation", "ftj", {"spec.evaluation": DELETE}),
    (
        "ftj-threshold-inside-grader-range",
        "ftj",
        {"spec.evaluation.grader": {**SCORE_JUDGE, "range": [0, 1]}, "spec.evaluation.threshold": 0.8},
    ),
    (
        "ftj-threshold-in-judge-units",
        "ftj",
        {"spec.evaluation.grader": {**SCORE_JUDGE, "range": [0, 10]}, "spec.evaluation.threshold": 7.5},
    ),
    ("ftj-toleration-exists-no-value", "ftj", {"spec.resources.tolerations": [{"operator": "Exists"}]}),
    ("mp-model-by-name", "mp", {"spec.model": {"name": "support-agent-tuned-v2"}}),
    ("mp-defaults-only", "mp", {"spec": {"targetRef": {"name": "support-agent"}, "model": {"name": "m"}}}),
]


@pytest.mark.parametrize("short, changes", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_variants_are_accepted(short: str, changes: dict[str, Any]) -> None:
    obj = mutate(example(short), changes)
    assert cv.validate(CRDS[obj["kind"]], obj) == []
    kinds.parse_spec(obj["kind"], obj)
