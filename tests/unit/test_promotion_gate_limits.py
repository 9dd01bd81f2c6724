"""Limits in a ModelPromotion's spec hold at their exact value, as a user reads them.

Scores are floats: 0.85 - 0.75 is 0.09999999999999998 and 0.8 - 0.7 is 0.10000000000000009. A
``minImprovement`` of 0.1 is met by 0.75 -> 0.85, a ``maxRewardDrop`` of 0.1 allows 0.9 -> 0.8, a
``maxErrorRateIncrease`` of 0.1 allows 7 -> 8 errors in 10, and a ``maxRegression`` of 0.3 allows 3 of
10 examples; one step beyond each limit still fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_op.api import promotion as promotion_api
from lightning_op.pipeline import promotion, promotion_flow

EXAMPLE = Path(__file__).parents[2] / "examples" / "promotion.yaml"


def _spec(gate: dict[str, Any]) -> promotion_api.ModelPromotionSpec:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    return promotion_api.ModelPromotionSpec.model_validate({**spec, "gate": gate})


def _finetune_job(baseline: float, score: float, regressions: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "support-agent-ft"},
        "status": {
            "phase": "Succeeded",
            "fineTunedModel": "support-agent-ft-r1",
            "baseline": {"score": baseline},
            "result": {"score": score, "examples": 10, "regressions": regressions},
        },
    }


@pytest.mark.parametrize(
    ("baseline", "score", "regressions", "open_"),
    [
        pytest.param(0.75, 0.85, 0, True, id="improvement-exactly-the-minimum"),
        pytest.param(0.75, 0.84, 0, False, id="improvement-below-the-minimum"),
        pytest.param(0.75, 0.95, 3, True, id="regressions-exactly-the-maximum"),
        pytest.param(0.75, 0.95, 4, False, id="regressions-above-the-maximum"),
    ],
)
def test_the_gate_holds_at_its_exact_limits(
    baseline: float, score: float, regressions: int, open_: bool
) -> None:
    decision = promotion_flow.gate_decision(
        _spec({"minImprovement": 0.1, "maxRegression": 0.3}), _finetune_job(baseline, score, regressions)
    )
    assert (decision.status is promotion_flow.GateStatus.OPEN) is open_, decision.message


def test_a_regression_limit_that_cannot_be_checked_keeps_the_gate_shut() -> None:
    """Without per-example counts (an evaluation file not read) ``maxRegression`` cannot be checked:
    the gate fails and says so, rather than promoting past a limit the user set."""
    job = _finetune_job(0.5, 0.9)
    job["status"]["result"] = {"score": 0.9}
    decision = promotion_flow.gate_decision(_spec({"maxRegression": 0.1}), job)
    assert decision.status is promotion_flow.GateStatus.FAILED
    assert "spec.gate.maxRegression is set but status.result has no per-example counts" in decision.message
    assert promotion_flow.gate_decision(_spec({}), job).status is promotion_flow.GateStatus.OPEN


def _stats(version: str, reward: float, errors: int = 0) -> promotion.VersionStats:
    episodes = [
        {"modelVersion": version, "labeled": True, "reward": reward, "error": "x" if i < errors else None}
        for i in range(10)
    ]
    return promotion.summarise_versions(episodes)[version]


@pytest.mark.parametrize(
    ("after", "after_errors", "status"),
    [
        pytest.param(0.8, 7, promotion.VerdictStatus.PASSED, id="reward-drop-exactly-the-limit"),
        pytest.param(0.79, 7, promotion.VerdictStatus.FAILED, id="reward-drop-beyond-the-limit"),
        pytest.param(0.9, 8, promotion.VerdictStatus.PASSED, id="error-rise-exactly-the-limit"),
        pytest.param(0.9, 9, promotion.VerdictStatus.FAILED, id="error-rise-beyond-the-limit"),
    ],
)
def test_verification_holds_at_its_exact_limits(
    after: float, after_errors: int, status: promotion.VerdictStatus
) -> None:
    comparison = promotion.Comparison(
        "agent-a", before=_stats("base", 0.9, errors=7), after=_stats("tuned", after, after_errors)
    )
    verdict = promotion.verification_verdict(
        comparison, max_reward_drop=0.1, max_error_rate_increase=0.1, min_episodes=10
    )
    assert verdict.status is status, verdict.message
