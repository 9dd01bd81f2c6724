"""Dry-run metrics and the GO / WARNING / NO-GO verdict: does this grader give a learning signal here?

Pure functions over a list of scores, with no I/O: ``pipeline.labeling.dry_run`` (CLI ``dry-run``)
grades a sample and calls them, and the RewardLabeling controller writes the same figures and verdict
into its status. ``HealthyRanges`` is a pydantic model with camelCase aliases so it can be embedded
in a CRD spec as is (it lives in ``api.labeling``: ``RewardLabeling.spec.dryRun.healthyRanges``).

The seed's healthy ranges, and exactly how a value maps to a verdict (``lo``/``hi`` are inclusive):

=====================  =================  =========================  ==========================
metric                 healthy (GO)       WARNING                    NO-GO
=====================  =================  =========================  ==========================
mean                   0.25 <= m <= 0.65  outside [0.25, 0.65]       -
std (population)       0.10 <= s <= 0.25  outside [0.10, 0.25]       -
fractionAboveZero      f >= 0.20          0.10 <= f < 0.20           f < 0.10 (too harsh)
fractionPerfect        p <= 0.30          0.30 < p <= 0.50           p > 0.50 (too lenient)
count (scored)         n >= 30            1 <= n < 30                n == 0
failed share           <= 0.10            > 0.10                     every sample failed
=====================  =================  =========================  ==========================

So all-zero scores are NO-GO (too harsh: nothing to learn from), all-perfect scores are NO-GO (too
lenient: no learning signal). The verdict is the worst severity among the findings; with no finding
it is GO. A low mean or a low share above zero reads as *too harsh*, a high mean or a high share of
perfect scores as *too lenient*, a std above the range as *inconsistent data* (scores scattered:
similar episodes scored far apart, or a bimodal grader), a std below the range as *no spread* (the
grader does not separate good from bad episodes). Note that a pass/fail grader has std
``sqrt(p(1-p))``, above 0.25 for 7% < p < 93%, and its share of perfect scores is its pass rate:
give a binary grader ranges of its own (``spec.dryRun.healthyRanges``, ``--ranges``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from lightning_op.api.labeling import HealthyRanges as HealthyRanges  # re-exported: the verdict's ranges

#: scores within this distance of 0 or 1 count as zero or perfect (graders compute floats)
SCORE_EPSILON = 1e-9
#: default number of histogram bins over [0, 1]
HISTOGRAM_BINS = 10


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)


class VerdictLevel(StrEnum):
    GO = "GO"
    WARNING = "WARNING"
    NO_GO = "NO-GO"


_SEVERITY_ORDER = {VerdictLevel.GO: 0, VerdictLevel.WARNING: 1, VerdictLevel.NO_GO: 2}


class DiagnosisCode(StrEnum):
    """Why a dry run is not GO; CamelCase so it can serve as a Kubernetes condition reason."""

    TOO_HARSH = "GraderTooHarsh"
    TOO_LENIENT = "GraderTooLenient"
    INCONSISTENT = "InconsistentData"
    NO_SPREAD = "NoSpread"
    TOO_FEW_SAMPLES = "TooFewSamples"
    GRADER_ERRORS = "GraderErrors"


class ScoreMetrics(_Model):
    """Summary of a set of scores. ``count`` is the scored samples; ``failed`` those the grader failed on."""

    count: int = 0
    failed: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    fraction_above_zero: float | None = None
    fraction_perfect: float | None = None
    #: counts per equal-width bin over [0, 1]; a score of exactly 1.0 falls in the last bin
    histogram: list[int] = Field(default_factory=list)


class Diagnosis(_Model):
    code: DiagnosisCode
    severity: VerdictLevel
    #: the metric the finding is about (camelCase, as in the JSON output)
    metric: str
    message: str


class Verdict(_Model):
    verdict: VerdictLevel
    diagnosis: list[Diagnosis] = Field(default_factory=list)

    @property
    def messages(self) -> list[str]:
        return [d.message for d in self.diagnosis]


def score_metrics(scores: Iterable[float | None], *, bins: int = HISTOGRAM_BINS) -> ScoreMetrics:
    """Mean, population std, min/max, shares above zero and perfect, and a histogram.

    ``None`` entries are samples the grader failed on: counted in ``failed``, left out of the figures.
    Raises ``ValueError`` for a score outside [0, 1] or not finite.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    values: list[float] = []
    failed = 0
    for score in scores:
        if score is None:
            failed += 1
            continue
        value = float(score)
        if not math.isfinite(value) or value < 0.0 or value > 1.0:
            raise ValueError(f"score {score!r} is outside [0, 1]")
        values.append(value)
    histogram = [0] * bins
    if not values:
        return ScoreMetrics(count=0, failed=failed, histogram=histogram)
    n = len(values)
    mean = math.fsum(values) / n
    variance = math.fsum((v - mean) ** 2 for v in values) / n
    for value in values:
        histogram[min(int(value * bins), bins - 1)] += 1
    return ScoreMetrics(
        count=n,
        failed=failed,
        mean=mean,
        std=math.sqrt(variance),
        min=min(values),
        max=max(values),
        fraction_above_zero=sum(1 for v in values if v > SCORE_EPSILON) / n,
        fraction_perfect=sum(1 for v in values if v >= 1.0 - SCORE_EPSILON) / n,
        histogram=histogram,
    )


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def dry_run_verdict(metrics: ScoreMetrics, ranges: HealthyRanges | None = None) -> Verdict:
    """GO, WARNING or NO-GO with the findings that explain it (worst first), from ``metrics`` alone."""
    r = ranges or HealthyRanges()
    eps = SCORE_EPSILON
    findings: list[Diagnosis] = []

    def add(code: DiagnosisCode, severity: VerdictLevel, metric: str, message: str) -> None:
        findings.append(Diagnosis(code=code, severity=severity, metric=metric, message=message))

    total = metrics.count + metrics.failed
    if metrics.count == 0:
        if metrics.failed:
            add(
                DiagnosisCode.GRADER_ERRORS,
                VerdictLevel.NO_GO,
                "failed",
                f"grader failed on all {metrics.failed} samples: nothing was scored "
                "(check the grader's model endpoint and credentials, or its spec)",
            )
        else:
            add(
                DiagnosisCode.TOO_FEW_SAMPLES,
                VerdictLevel.NO_GO,
                "count",
                "no episodes to score: capture some episodes for this agent first",
            )
        return Verdict(verdict=VerdictLevel.NO_GO, diagnosis=findings)

    # Every field below is set when count > 0.
    mean = metrics.mean if metrics.mean is not None else 0.0
    std = metrics.std if metrics.std is not None else 0.0
    above = metrics.fraction_above_zero if metrics.fraction_above_zero is not None else 0.0
    perfect = metrics.fraction_perfect if metrics.fraction_perfect is not None else 0.0

    if above < r.fraction_above_zero_no_go - eps:
        add(
            DiagnosisCode.TOO_HARSH,
            VerdictLevel.NO_GO,
            "fractionAboveZero",
            f"grader too harsh: only {_pct(above)} of scores are above zero "
            f"(need at least {_pct(r.fraction_above_zero_no_go)}, healthy from "
            f"{_pct(r.fraction_above_zero_min)}): no positive examples to learn from",
        )
    elif above < r.fraction_above_zero_min - eps:
        add(
            DiagnosisCode.TOO_HARSH,
            VerdictLevel.WARNING,
            "fractionAboveZero",
            f"grader harsh: {_pct(above)} of scores are above zero (healthy from "
            f"{_pct(r.fraction_above_zero_min)})",
        )
    if perfect > r.fraction_perfect_no_go + eps:
        add(
            DiagnosisCode.TOO_LENIENT,
            VerdictLevel.NO_GO,
            "fractionPerfect",
            f"grader too lenient: {_pct(perfect)} of scores are perfect (at most "
            f"{_pct(r.fraction_perfect_no_go)}, healthy up to {_pct(r.fraction_perfect_max)}): "
            "no learning signal",
        )
    elif perfect > r.fraction_perfect_max + eps:
        add(
            DiagnosisCode.TOO_LENIENT,
            VerdictLevel.WARNING,
            "fractionPerfect",
            f"grader lenient: {_pct(perfect)} of scores are perfect (healthy up to "
            f"{_pct(r.fraction_perfect_max)})",
        )
    if mean < r.mean_min - eps:
        add(
            DiagnosisCode.TOO_HARSH,
            VerdictLevel.WARNING,
            "mean",
            f"grader too harsh: mean score {mean:.2f} is below {r.mean_min:.2f}",
        )
    elif mean > r.mean_max + eps:
        add(
            DiagnosisCode.TOO_LENIENT,
            VerdictLevel.WARNING,
            "mean",
            f"grader too lenient: mean score {mean:.2f} is above {r.mean_max:.2f}",
        )
    if std > r.std_max + eps:
        add(
            DiagnosisCode.INCONSISTENT,
            VerdictLevel.WARNING,
            "std",
            f"inconsistent data: scores spread widely (std {std:.2f} > {r.std_max:.2f}); check "
            "that similar episodes get similar scores, or give a pass/fail grader its own ranges "
            "(spec.dryRun.healthyRanges, --ranges)",
        )
    elif std < r.std_min - eps:
        add(
            DiagnosisCode.NO_SPREAD,
            VerdictLevel.WARNING,
            "std",
            f"scores barely vary (std {std:.2f} < {r.std_min:.2f}): the grader does not separate "
            "good episodes from bad ones",
        )
    if metrics.count < r.min_samples:
        add(
            DiagnosisCode.TOO_FEW_SAMPLES,
            VerdictLevel.WARNING,
            "count",
            f"too few samples: {metrics.count} scored, need at least {r.min_samples} for a "
            "reliable verdict (raise the sample size or capture more episodes)",
        )
    if total and metrics.failed / total > r.max_failed_fraction + eps:
        add(
            DiagnosisCode.GRADER_ERRORS,
            VerdictLevel.WARNING,
            "failed",
            f"grader failed on {metrics.failed} of {total} samples ({_pct(metrics.failed / total)}, "
            f"more than {_pct(r.max_failed_fraction)}): the figures may be biased",
        )

    findings.sort(key=lambda d: -_SEVERITY_ORDER[d.severity])
    worst = max((d.severity for d in findings), key=_SEVERITY_ORDER.__getitem__, default=VerdictLevel.GO)
    return Verdict(verdict=worst, diagnosis=findings)
