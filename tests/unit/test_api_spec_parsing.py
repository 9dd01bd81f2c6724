"""Parsing a custom resource's spec: defaults, agentId, and errors that name the field.

Covers: DESIGN.md's defaults (minReward 0.7, threshold 0.75, maxRounds 3, lrDecay 0.6, sampleTest.size
5, dryRun.sampleSize 200, the env var names) come out of ``parse_spec``; the CRD's defaults agree
with the models' (a minimal object defaulted by the CRD parses to the same spec as without); agentId
falls back to metadata.name; errors read ``spec.dataset.minReward: must be <= 1`` and list every bad
field; kinds are found by kind, plural or short name; the JSON form is camelCase; an embedded grader
keeps its grader-specific keys for the graders module; a redaction pattern that does not compile or
matches the empty string is refused, naming the field.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import crd_validation as cv

from lightning_op.api import capture, finetune, kinds, labeling, promotion
from lightning_op.api.common import SpecError
from lightning_op.manifests import crds

MINIMAL: dict[str, dict[str, Any]] = {
    "EpisodeCapture": {"targetRef": {"name": "agent"}},
    "RewardLabeling": {"grader": {"preset": "tool_selection"}},
    "FineTuneJob": {"baseModel": "/models/base", "modelVolume": {"claimName": "models"}},
    "ModelPromotion": {"targetRef": {"name": "agent"}, "model": {"name": "tuned"}},
}


def body(kind: str, spec: dict[str, Any], name: str = "demo") -> dict[str, Any]:
    return {"apiVersion": "lightning-op.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_design_defaults() -> None:
    ftj = kinds.parse_spec(
        "FineTuneJob",
        body(
            "FineTuneJob", {**MINIMAL["FineTuneJob"], "evaluation": {"grader": {"preset": "tool_selection"}}}
        ),
    )
    assert ftj.dataset.min_reward == 0.7
    assert ftj.evaluation is not None
    assert (ftj.evaluation.threshold, ftj.evaluation.max_rounds, ftj.evaluation.lr_decay) == (0.75, 3, 0.6)
    assert ftj.backend == finetune.Backend.LOCAL and ftj.method == finetune.Method.SFT
    rl = kinds.parse_spec("RewardLabeling", body("RewardLabeling", MINIMAL["RewardLabeling"]))
    assert (rl.sample_test.size, rl.dry_run.sample_size, rl.mode) == (5, 200, labeling.LabelingMode.ONCE)
    mp = kinds.parse_spec("ModelPromotion", body("ModelPromotion", MINIMAL["ModelPromotion"]))
    assert (mp.env.use_tuned_model, mp.env.model_name) == ("USE_TUNED_MODEL", "TUNED_MODEL_NAME")
    ec = kinds.parse_spec("EpisodeCapture", body("EpisodeCapture", MINIMAL["EpisodeCapture"]))
    assert ec.enabled and ec.sampling_rate == 1.0 and ec.target_ref.kind == "Deployment"
    assert capture.RedactionBuiltin.EMAIL in ec.redaction.builtins


@pytest.mark.parametrize("kind", list(MINIMAL))
def test_crd_defaults_agree_with_model_defaults(kind: str) -> None:
    crd = next(c for c in crds.build_crds() if c["spec"]["names"]["kind"] == kind)
    plain = body(kind, MINIMAL[kind])
    defaulted = cv.apply_defaults(cv.openapi_schema(crd), plain)
    assert defaulted["spec"] != plain["spec"], "the CRD should fill in defaults"
    assert kinds.parse_spec(kind, defaulted) == kinds.parse_spec(kind, plain)


def test_agent_id_defaults_to_metadata_name() -> None:
    assert (
        kinds.parse_spec("EpisodeCapture", body("EpisodeCapture", MINIMAL["EpisodeCapture"], "shop")).agent_id
        == "shop"
    )
    explicit = {**MINIMAL["EpisodeCapture"], "agentId": "shop-agent"}
    assert (
        kinds.parse_spec("EpisodeCapture", body("EpisodeCapture", explicit, "shop")).agent_id == "shop-agent"
    )


def test_error_names_the_field_path() -> None:
    spec = {**MINIMAL["FineTuneJob"], "dataset": {"minReward": 1.5}}
    with pytest.raises(SpecError) as caught:
        kinds.parse_spec("FineTuneJob", body("FineTuneJob", spec))
    assert str(caught.value) == "spec.dataset.minReward: must be <= 1"
    assert (caught.value.path, caught.value.message) == ("spec.dataset.minReward", "must be <= 1")


def test_every_bad_field_is_listed() -> None:
    spec = {"targetRef": {"name": "agent", "kind": "Pod"}, "samplingRate": 2, "extra": True}
    with pytest.raises(SpecError) as caught:
        kinds.parse_spec("EpisodeCapture", body("EpisodeCapture", spec))
    paths = [p.path for p in caught.value.problems]
    assert sorted(paths) == ["spec.extra", "spec.samplingRate", "spec.targetRef.kind"]


@pytest.mark.parametrize(
    "spec, message",
    [(None, "spec: Required value"), ([1], "spec: must be an object")],
    ids=["no-spec", "spec-not-an-object"],
)
def test_missing_or_malformed_spec(spec: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        kinds.parse_spec("EpisodeCapture", {"metadata": {"name": "x"}, "spec": spec})


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("(unclosed", "patterns[1] is not a valid regular expression"),
        ("(ORD-)?[0-9]*", "patterns[1] '(ORD-)?[0-9]*' matches the empty string"),
    ],
    ids=["not-a-regex", "matches-empty"],
)
def test_a_redaction_pattern_the_capture_client_would_refuse_is_refused(pattern: str, message: str) -> None:
    spec = {**MINIMAL["EpisodeCapture"], "redaction": {"patterns": ["ORD-[0-9]{8}", pattern]}}
    with pytest.raises(SpecError) as caught:
        kinds.parse_spec("EpisodeCapture", body("EpisodeCapture", spec))
    assert caught.value.path == "spec.redaction.patterns"
    assert message in caught.value.message


@pytest.mark.parametrize("name", ["FineTuneJob", "finetunejobs", "ftj", "FTJ", "finetunejob"])
def test_kinds_are_found_by_any_name(name: str) -> None:
    assert kinds.kind_info(name).kind == "FineTuneJob"


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        kinds.kind_info("Pipeline")


def test_json_form_is_camel_case() -> None:
    spec = promotion.parse_spec(body("ModelPromotion", MINIMAL["ModelPromotion"]))
    data = spec.to_json_dict()
    assert data["targetRef"] == {"kind": "Deployment", "name": "agent"}
    assert data["verification"]["maxErrorRateIncrease"] == 0.05


def test_embedded_grader_keeps_its_own_keys() -> None:
    grader = {"type": "score_model", "model": "gpt-4o-mini", "range": [0, 10], "pass_threshold": 7}
    spec = labeling.parse_spec(body("RewardLabeling", {"grader": grader}))
    assert spec.grader.to_spec_dict() == {**grader, "range": [0.0, 10.0]}


@pytest.mark.parametrize(
    ("grader", "threshold", "normalized"),
    [
        pytest.param({"preset": "tool_selection"}, 0.75, 0.75, id="rule-grader-already-0-1"),
        pytest.param({"type": "score_model", "range": [0, 10]}, 7.5, 0.75, id="judge-0-10"),
        pytest.param({"type": "score_model", "range": [1, 5]}, 4.0, 0.75, id="judge-1-5"),
    ],
)
def test_threshold_is_in_grader_units_and_normalises_to_0_1(
    grader: dict[str, object], threshold: float, normalized: float
) -> None:
    from lightning_op.api import finetune

    spec = finetune.EvaluationSpec.model_validate({"grader": grader, "threshold": threshold})
    assert spec.normalized_threshold() == pytest.approx(normalized)


def test_a_time_without_an_offset_is_utc_and_compares_with_one_that_has_it() -> None:
    """``since`` typed without an offset (as on a command line) is UTC, like episode timestamps: it
    compares with an ``until`` that has one (it raised TypeError), and the order is still checked."""
    selector = {"since": "2026-01-01T00:00:00", "until": "2026-01-02T00:00:00+00:00"}
    spec = kinds.parse_spec(
        "RewardLabeling", body("RewardLabeling", {**MINIMAL["RewardLabeling"], "selector": selector})
    )
    assert isinstance(spec, labeling.RewardLabelingSpec)
    assert spec.selector.since is not None and spec.selector.since.utcoffset() is not None
    backwards = {"since": "2026-01-03T00:00:00", "until": "2026-01-02T00:00:00Z"}
    with pytest.raises(SpecError, match="spec.selector.until: since must be before until"):
        kinds.parse_spec(
            "RewardLabeling", body("RewardLabeling", {**MINIMAL["RewardLabeling"], "selector": backwards})
        )
    ftj = kinds.parse_spec(
        "FineTuneJob",
        body("FineTuneJob", {**MINIMAL["FineTuneJob"], "dataset": {"since": "2026-01-01T00:00:00"}}),
    )
    assert isinstance(ftj, finetune.FineTuneJobSpec)
    assert ftj.dataset.since is not None and ftj.dataset.since.utcoffset() is not None
