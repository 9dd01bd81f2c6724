"""Dry-run metrics and the GO / WARNING / NO-GO verdict on score sets built for each diagnosis.

Covers: ``score_metrics`` (mean, population std, shares above zero and perfect, histogram with 1.0 in
the last bin, failed samples counted apart, out-of-range scores refused); verdicts for healthy, harsh,
lenient, inconsistent, flat, too-small and failing score sets, with the diagnosis codes expected;
all-zero and all-perfect sets are NO-GO; the documented boundaries (10%/20% above zero, 30%/50%
perfect) fall on the side the module docstring says; configurable ranges (camelCase, validated) move
the verdict; findings come worst first.
"""

from __future__ import annotations

import math

import pydantic
import pytest

from lightning_op.graders import dryrun
from lightning_op.graders.dryrun import DiagnosisCode as Code
from lightning_op.graders.dryrun import VerdictLevel as V


def repeat(*pairs: tuple[float, int]) -> list[float]:
    return [value for value, times in pairs for _ in range(times)]


HEALTHY = repeat((0.2, 20), (0.4, 30), (0.5, 20), (0.7, 20), (1.0, 10))


def verdict_of(scores: list[float | None], ranges: dryrun.HealthyRanges | None = None) -> dryrun.Verdict:
    return dryrun.dry_run_verdict(dryrun.score_metrics(scores), ranges)


def codes(verdict: dryrun.Verdict) -> set[tuple[Code, V]]:
    return {(d.code, d.severity) for d in verdict.diagnosis}


def test_metrics_of_a_known_set() -> None:
    metrics = dryrun.score_metrics([0.0, 0.5, 1.0, 1.0, None])

    assert metrics.count == 4
    assert metrics.failed == 1
    assert metrics.mean == pytest.approx(0.625)
    assert metrics.std == pytest.approx(math.sqrt(((0.625) ** 2 + 0.125**2 + 2 * 0.375**2) / 4))
    assert metrics.fraction_above_zero == pytest.approx(0.75)
    assert metrics.fraction_perfect == pytest.approx(0.5)
    assert (metrics.min, metrics.max) == (0.0, 1.0)
    assert metrics.histogram == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2]


def test_metrics_json_uses_the_contract_names() -> None:
    data = dryrun.score_metrics([0.5]).to_json_dict()

    assert {"mean", "std", "fractionAboveZero", "fractionPerfect", "count", "histogram"} <= data.keys()


def test_metrics_of_nothing_are_empty() -> None:
    metrics = dryrun.score_metrics([])

    assert (metrics.count, metrics.mean, metrics.std) == (0, None, None)
    assert metrics.histogram == [0] * dryrun.HISTOGRAM_BINS


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf")], ids=["above", "below", "nan", "inf"])
def test_metrics_refuse_scores_outside_zero_one(bad: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        dryrun.score_metrics([0.5, bad])


@pytest.mark.parametrize(
    ("scores", "verdict", "expected"),
    [
        pytest.param(HEALTHY, V.GO, set(), id="healthy"),
        pytest.param([0.0] * 200, V.NO_GO, {(Code.TOO_HARSH, V.NO_GO)}, id="all-zero"),
        pytest.param(repeat((0.0, 95), (0.5, 5)), V.NO_GO, {(Code.TOO_HARSH, V.NO_GO)}, id="harsh-5pct"),
        pytest.param(
            repeat((0.0, 85), (0.6, 15)), V.WARNING, {(Code.TOO_HARSH, V.WARNING)}, id="harsh-15pct"
        ),
        pytest.param([1.0] * 200, V.NO_GO, {(Code.TOO_LENIENT, V.NO_GO)}, id="all-perfect"),
        pytest.param(
            repeat((1.0, 60), (0.3, 40)), V.NO_GO, {(Code.TOO_LENIENT, V.NO_GO)}, id="lenient-60pct"
        ),
        pytest.param(
            repeat((1.0, 40), (0.3, 60)), V.WARNING, {(Code.TOO_LENIENT, V.WARNING)}, id="lenient-40pct"
        ),
        pytest.param(
            repeat((0.0, 50), (0.9, 50)), V.WARNING, {(Code.INCONSISTENT, V.WARNING)}, id="inconsistent"
        ),
        pytest.param([0.5] * 100, V.WARNING, {(Code.NO_SPREAD, V.WARNING)}, id="no-spread"),
        pytest.param(HEALTHY[::10], V.WARNING, {(Code.TOO_FEW_SAMPLES, V.WARNING)}, id="too-few"),
        pytest.param([], V.NO_GO, {(Code.TOO_FEW_SAMPLES, V.NO_GO)}, id="no-samples"),
        pytest.param([None] * 20, V.NO_GO, {(Code.GRADER_ERRORS, V.NO_GO)}, id="all-failed"),
        pytest.param(HEALTHY + [None] * 25, V.WARNING, {(Code.GRADER_ERRORS, V.WARNING)}, id="many-failed"),
    ],
)
def test_verdict_and_diagnosis(scores: list[float | None], verdict: V, expected: set[tuple[Code, V]]) -> None:
    result = verdict_of(scores)

    assert result.verdict is verdict
    assert expected <= codes(result), result.messages
    if verdict is V.GO:
        assert result.diagnosis == []


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        pytest.param([0.0] * 200, {"too harsh", "above zero"}, id="harsh"),
        pytest.param([1.0] * 200, {"too lenient", "no learning signal"}, id="lenient"),
        pytest.param(repeat((0.0, 50), (0.9, 50)), {"inconsistent data"}, id="inconsistent"),
        pytest.param(HEALTHY[::10], {"too few samples"}, id="few"),
    ],
)
def test_diagnosis_reads_as_a_sentence(scores: list[float | None], expected: set[str]) -> None:
    text = " ".join(verdict_of(scores).messages)

    for phrase in expected:
        assert phrase in text


@pytest.mark.parametrize(
    ("above_zero", "severity"),
    [
        pytest.param(9, V.NO_GO, id="9pct-no-go"),
        pytest.param(10, V.WARNING, id="10pct-warning"),
        pytest.param(19, V.WARNING, id="19pct-warning"),
        pytest.param(20, None, id="20pct-healthy"),
    ],
)
def test_share_above_zero_boundaries(above_zero: int, severity: V | None) -> None:
    found = {
        d.severity
        for d in verdict_of(repeat((0.0, 100 - above_zero), (0.5, above_zero))).diagnosis
        if d.metric == "fractionAboveZero"
    }

    assert found == ({severity} if severity else set())


@pytest.mark.parametrize(
    ("perfect", "severity"),
    [
        pytest.param(30, None, id="30pct-healthy"),
        pytest.param(31, V.WARNING, id="31pct-warning"),
        pytest.param(50, V.WARNING, id="50pct-warning"),
        pytest.param(51, V.NO_GO, id="51pct-no-go"),
    ],
)
def test_share_perfect_boundaries(perfect: int, severity: V | None) -> None:
    found = {
        d.severity
        for d in verdict_of(repeat((1.0, perfect), (0.2, 100 - perfect))).diagnosis
        if d.metric == "fractionPerfect"
    }

    assert found == ({severity} if severity else set())


def test_findings_come_worst_first() -> None:
    result = verdict_of([1.0] * 10)

    severities = [d.severity for d in result.diagnosis]
    assert severities[0] is V.NO_GO
    assert V.WARNING in severities


def test_wider_ranges_accept_a_pass_fail_grader() -> None:
    pass_fail = repeat((0.0, 60), (1.0, 40))
    ranges = dryrun.HealthyRanges.model_validate({"stdMax": 0.5, "fractionPerfectMax": 0.45, "meanMax": 0.7})

    assert verdict_of(pass_fail).verdict is not V.GO
    assert verdict_of(pass_fail, ranges).verdict is V.GO


def test_ranges_json_is_camel_case_and_round_trips() -> None:
    ranges = dryrun.HealthyRanges(mean_min=0.3)

    data = ranges.to_json_dict()
    assert data["meanMin"] == 0.3 and "fractionAboveZeroNoGo" in data
    assert dryrun.HealthyRanges.model_validate(data) == ranges


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        pytest.param({"meanMin": 0.7, "meanMax": 0.6}, "meanMin", id="mean-inverted"),
        pytest.param({"fractionPerfectMax": 0.6}, "fractionPerfectNoGo", id="perfect-inverted"),
        pytest.param({"stdMin": -1}, "stdMin", id="negative"),
        pytest.param({"meanMinimum": 0.1}, "meanMinimum", id="unknown-field"),
    ],
)
def test_bad_ranges_are_refused_naming_the_field(data: dict[str, float], needle: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=needle):
        dryrun.HealthyRanges.model_validate(data)
