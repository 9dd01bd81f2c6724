"""The ``multi`` grader and its safe ``calculate_output`` evaluator.

Covers:
- formulas with arithmetic, ``^`` as power (OpenAI's spelling), functions, comparisons and
  conditionals evaluate as expected; anything else is rejected before any episode is graded;
- no formula reaches ``eval``: attribute access, subscripts, strings, lambdas, comprehensions,
  keyword arguments, unknown names and huge powers are refused or fail cleanly;
- a multi grader combines its sub-graders' scores on one shared episode view, clamps to [0, 1],
  reports division by zero as a failed grading, and fails (retryable if any sub-failure was,
  with the longest Retry-After) when a sub-grader fails.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest

from lightning_op import graders
from lightning_op.api import episode as ep
from lightning_op.graders import base, common, expr, multi, spec, templates

VALUES = {"tool": 1.0, "fmt": 0.5, "judge": 0.25}


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("0.5 * tool + 0.5 * fmt", 0.75),
        ("(tool + fmt + judge) / 3", 1.75 / 3),
        ("fmt ^ 2", 0.25),
        ("0.5 * tool + 0.5 * fmt ^ 2", 0.625),  # power binds tighter than * and +, as in OpenAI's
        ("2 ^ 3 ^ 2", 512.0),  # and is right-associative
        ("fmt ** 2", 0.25),
        ("-judge + 1", 0.75),
        ("min(tool, fmt, judge)", 0.25),
        ("max(fmt, judge)", 0.5),
        ("abs(judge - tool)", 0.75),
        ("round(0.456, 2)", 0.46),
        ("floor(1.7) + ceil(0.2)", 2.0),
        ("sqrt(fmt * 2)", 1.0),
        ("log(exp(judge))", 0.25),
        ("tool if fmt > 0.4 else 0", 1.0),
        ("tool if fmt >= 0.6 else judge", 0.25),
        ("1 if 0 < fmt < 1 else 0", 1.0),
        ("tool * (fmt == 0.5)", 1.0),
        ("1 if tool and not judge == 0 else 0", 1.0),
        ("fmt or tool", 0.5),
    ],
    ids=lambda value: str(value),
)
def test_formulas_evaluate(formula: str, expected: float) -> None:
    compiled = expr.compile_formula(formula, VALUES)
    assert compiled.evaluate(VALUES) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("tool.__class__", "Attribute is not allowed"),
        ("VALUES['tool']", "Subscript is not allowed"),
        ("tool[0]", "Subscript is not allowed"),
        ("'a' * 3", "only numbers are allowed as constants"),
        ("True + tool", "only numbers are allowed as constants"),
        ("VALUES + 1", "name 'VALUES' is not a grader"),
        ("(lambda: 1)()", "function 'lambda: 1' is not allowed"),
        ("[x for x in (1, 2)]", "ListComp is not allowed"),
        ("__import__('os').system('true')", "is not allowed (allowed: min, max"),
        ("eval('1')", "function 'eval' is not allowed"),
        ("round(tool, ndigits=1)", "takes no keyword arguments"),
        ("min(*tool)", "*arguments are not allowed"),
        ("abs(tool, fmt)", "abs() takes 1..1 arguments, got 2"),
        ("tool // 2", "operator FloorDiv is not allowed"),
        ("tool % 2", "operator Mod is not allowed"),
        ("tool in (1, 2)", "comparison In is not allowed"),
        ("foo + 1", "name 'foo' is not a grader (graders: fmt, judge, tool)"),
        ("tool +", "invalid syntax"),
        ("tool; import os", "invalid syntax"),
        ("x := 1", "invalid syntax"),
        ("1" + " + 1" * 600, "limit"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_forbidden_formulas_are_rejected(formula: str, message: str) -> None:
    with pytest.raises(expr.FormulaError, match=re.escape(message)):
        expr.compile_formula(formula, VALUES)


def test_huge_powers_fail_cleanly() -> None:
    compiled = expr.compile_formula("10 ** 10 ** 10", VALUES)
    with pytest.raises(OverflowError):
        compiled.evaluate(VALUES)


def make_episode(
    tool: str = "get_weather", output: str = '{"tool": "get_weather", "arguments": {}}'
) -> ep.Episode:
    return ep.Episode.model_validate(
        {
            "agentId": "agent",
            "state": {"query": "weather?", "context": {"expected_tool": "get_weather"}},
            "action": {"tool": tool, "arguments": {}},
            "messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": output}],
        }
    )


MULTI: dict[str, Any] = {
    "type": "multi",
    "name": "combined",
    "graders": {
        "tool": {"type": "tool_call"},
        "fmt": {"type": "json_schema", "schema": {"type": "object", "required": ["tool"]}},
    },
    "calculate_output": "0.7 * tool + 0.3 * fmt",
}


def grade(spec_data: Any, episode: ep.Episode) -> graders.GradeResult:
    grader = graders.build_grader(graders.load_grader_spec(spec_data))
    return asyncio.run(grader.grade(episode))


@pytest.mark.parametrize(
    ("tool", "output", "expected"),
    [
        ("get_weather", '{"tool": "get_weather"}', 1.0),
        ("get_weather", "plain text", 0.7),
        ("search", '{"tool": "search"}', 0.3),
        ("search", "plain text", 0.0),
    ],
    ids=["both", "tool-only", "format-only", "neither"],
)
def test_multi_combines_sub_scores(tool: str, output: str, expected: float) -> None:
    result = grade(MULTI, make_episode(tool=tool, output=output))
    assert result.ok and result.score == pytest.approx(expected)
    assert "0.7 * tool + 0.3 * fmt" in result.reason and "tool=" in result.reason


def test_multi_clamps_and_reports_bad_math() -> None:
    over = grade({**MULTI, "calculate_output": "tool + fmt"}, make_episode(output='{"tool": 1}'))
    assert over.score == 1.0 and "clamped to 1" in over.reason
    zero = grade({**MULTI, "calculate_output": "tool / (fmt - 1)"}, make_episode())
    assert zero.score is None and "division by zero" in (zero.error or "")


def test_multi_fails_when_a_sub_grader_fails() -> None:
    no_expected = ep.Episode.model_validate({"agentId": "agent", "action": {"tool": "x"}})
    result = grade(MULTI, no_expected)
    assert result.score is None and "sub-grader failed: tool: no expected tool" in (result.error or "")


class _Stub(common.ContextGrader):
    def __init__(self, name: str, result: base.GradeResult) -> None:
        super().__init__(name, "v")
        self.result = result
        self.contexts: list[templates.GradingContext] = []

    async def _grade(self, ctx: templates.GradingContext) -> base.GradeResult:
        self.contexts.append(ctx)
        return self.result


def test_multi_propagates_retryable_failures_and_shares_the_context() -> None:
    data = {
        "type": "multi",
        "graders": {"a": {"type": "tool_call"}, "b": {"type": "tool_call"}, "c": {"type": "tool_call"}},
        "calculate_output": "a + b + c",
    }
    parsed = graders.load_grader_spec(data)
    assert isinstance(parsed, spec.MultiSpec)
    stubs = {
        "a": _Stub("a", base.GradeResult(1.0)),
        "b": _Stub("b", base.GradeResult(None, error="429", retryable=True, retry_after=2.0)),
        "c": _Stub("c", base.GradeResult(None, error="500", retryable=True, retry_after=5.0)),
    }
    grader = multi.MultiGrader(parsed, "m", "v", stubs)
    result = asyncio.run(grader.grade(make_episode()))
    assert result.score is None and result.retryable and result.retry_after == 5.0
    contexts = {id(ctx) for stub in stubs.values() for ctx in stub.contexts}
    assert len(contexts) == 1


def test_unused_sub_grader_failures_do_not_matter() -> None:
    data = {**MULTI, "calculate_output": "fmt"}
    no_expected = ep.Episode.model_validate(
        {"agentId": "agent", "messages": [{"role": "assistant", "content": '{"tool": "x"}'}]}
    )
    result = grade(data, no_expected)
    assert result.score == 1.0 and not math.isnan(result.score)
