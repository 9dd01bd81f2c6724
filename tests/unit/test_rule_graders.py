"""Rule graders: ``string_check``, ``text_similarity``, ``tool_call``, ``json_schema`` and the rule presets.

Covers:
- string_check's four operations as OpenAI defines them; a missing reference fails the grading
  instead of scoring 0;
- text_similarity's metrics on identical, close and unrelated texts, and pass_threshold in the reason;
- tool_call: expected tool from ``state.context`` or from the reference table (exact query, keyword,
  regex; first row wins), partial credit for wrong arguments (fixed and proportional), type and case
  tolerance, exact argument match, tool calls from chat messages, no expected tool (error or zero);
- json_schema on the output text (fenced or not), on a single-placeholder object, and on non-JSON;
- presets ``tool_selection`` and ``exact_match``; graders never raise, whatever the episode.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from lightning_op import graders
from lightning_op.api import episode as ep
from lightning_op.graders import similarity


def make_episode(
    query: str = "What's the weather in Paris?",
    tool: str | None = "get_weather",
    arguments: dict[str, Any] | None = None,
    context: Any = None,
    output: str | None = None,
) -> ep.Episode:
    data: dict[str, Any] = {"agentId": "agent", "state": {"query": query, "context": context}}
    if tool is not None:
        data["action"] = {
            "tool": tool,
            "arguments": arguments if arguments is not None else {"city": "Paris"},
        }
    if output is not None:
        data["messages"] = [{"role": "user", "content": query}, {"role": "assistant", "content": output}]
    return ep.Episode.model_validate(data)


def grade(spec: Any, episode: ep.Episode) -> graders.GradeResult:
    grader = graders.build_grader(graders.load_grader_spec(spec))
    return asyncio.run(grader.grade(episode))


# --- string_check ---


@pytest.mark.parametrize(
    ("operation", "output", "reference", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "paris", "Paris", 0.0),
        ("ne", "London", "Paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "It is sunny in Paris.", "Paris", 1.0),
        ("like", "It is sunny in paris.", "Paris", 0.0),
        ("ilike", "It is sunny in PARIS.", "paris", 1.0),
        ("ilike", "It is sunny in Rome.", "paris", 0.0),
    ],
    ids=["eq", "eq-case", "ne", "ne-same", "like", "like-case", "ilike", "ilike-miss"],
)
def test_string_check_operations(operation: str, output: str, reference: str, expected: float) -> None:
    spec = {
        "type": "string_check",
        "input": "{{sample.output_text}}",
        "reference": "{{episode.state.context.city}}",
        "operation": operation,
    }
    result = grade(spec, make_episode(context={"city": reference}, output=output))
    assert result.ok and result.score == expected, result


def test_string_check_with_a_missing_reference_fails_instead_of_scoring() -> None:
    spec = {
        "type": "string_check",
        "input": "{{sample.output_text}}",
        "reference": "{{episode.state.context.city}}",
        "operation": "eq",
    }
    result = grade(spec, make_episode(context=None, output="Paris"))
    assert result.score is None and not result.retryable
    assert "reference {{episode.state.context.city}} is missing" in (result.error or "")


# --- text_similarity ---

METRICS = ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_l"]


@pytest.mark.parametrize("metric", METRICS, ids=METRICS)
def test_text_similarity_orders_identical_close_and_unrelated(metric: str) -> None:
    reference = "The weather in Paris is sunny with a high of 21 degrees today"
    spec = {
        "type": "text_similarity",
        "input": "{{sample.output_text}}",
        "reference": "{{episode.state.context.answer}}",
        "evaluation_metric": metric,
        "pass_threshold": 0.5,
    }
    context = {"answer": reference}
    same = grade(spec, make_episode(context=context, output=reference))
    close = grade(
        spec, make_episode(context=context, output="The weather in Paris is sunny with a high of 20 degrees")
    )
    unrelated = grade(spec, make_episode(context=context, output="Stock prices fell sharply on Monday"))
    assert same.score is not None and close.score is not None and unrelated.score is not None
    assert same.score > 0.9
    assert same.score >= close.score > unrelated.score >= 0.0
    assert unrelated.score < 0.3
    assert "pass at threshold 0.5" in same.reason and "fail at threshold 0.5" in unrelated.reason


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("rouge_1", 5 / 6),
        ("rouge_2", 3 / 5),
        ("rouge_l", 5 / 6),
        ("bleu", (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25),
        ("meteor", 5 / 6 * (1 - 0.5 * (2 / 5) ** 3)),
    ],
    ids=["rouge_1", "rouge_2", "rouge_l", "bleu", "meteor"],
)
def test_metric_values_match_hand_computed_ones(metric: str, expected: float) -> None:
    assert similarity.METRICS[metric]("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(
        expected
    )


# --- tool_call ---

TOOL_CALL: dict[str, Any] = {"type": "tool_call", "name": "tool"}


@pytest.mark.parametrize(
    ("tool", "arguments", "context", "expected"),
    [
        ("get_weather", {"city": "Paris"}, {"expected_tool": "get_weather"}, 1.0),
        ("search_web", {"q": "Paris"}, {"expected_tool": "get_weather"}, 0.0),
        ("GET_WEATHER", {}, {"expected_tool": "get_weather"}, 1.0),
        (
            "get_weather",
            {"city": "Paris", "days": 3},
            {"expected_tool": "get_weather", "expected_arguments": {"city": "paris "}},
            1.0,
        ),
        (
            "get_weather",
            {"city": "London"},
            {"expected_tool": "get_weather", "expected_arguments": {"city": "Paris"}},
            0.5,
        ),
        (
            "get_weather",
            {"city": "Paris", "days": "3"},
            {"expected_tool": "get_weather", "expected_arguments": {"days": 3}},
            1.0,
        ),
        (
            "get_weather",
            {"days": "3.0"},
            {"expected_tool": "get_weather", "expected_arguments": {"days": 3}},
            1.0,
        ),
        (
            "get_weather",
            {"metric": "true"},
            {"expected_tool": "get_weather", "expected_arguments": {"metric": True}},
            1.0,
        ),
        ("get_weather", {}, {"expected_tool": "get_weather", "expected_arguments": {"city": "Paris"}}, 0.5),
        ("get_weather", {"c": 1}, {"expected_tool": "get_weather", "expected_arguments": '{"c": "1"}'}, 1.0),
    ],
    ids=[
        "right-tool",
        "wrong-tool",
        "tool-case",
        "args-subset-case-space",
        "wrong-args-partial",
        "string-number",
        "float-string",
        "string-bool",
        "missing-arg",
        "args-as-json-text",
    ],
)
def test_tool_call_from_the_episode_context(
    tool: str, arguments: dict[str, Any], context: dict[str, Any], expected: float
) -> None:
    result = grade(TOOL_CALL, make_episode(tool=tool, arguments=arguments, context=context))
    assert result.ok and result.score == pytest.approx(expected), result


def test_tool_call_strict_options() -> None:
    context = {"expected_tool": "get_weather", "expected_arguments": {"city": "Paris", "days": 3}}
    episode = make_episode(arguments={"city": "paris", "days": "3"}, context=context)
    strict = {**TOOL_CALL, "case_sensitive": True, "coerce_types": False, "wrong_arguments_score": 0.2}
    result = grade(strict, episode)
    assert result.score == pytest.approx(0.2)
    assert "city: expected 'Paris', got 'paris'" in result.reason
    proportional = {**TOOL_CALL, "case_sensitive": True, "argument_scoring": "proportional"}
    assert grade(proportional, episode).score == pytest.approx(0.75)
    exact = {**TOOL_CALL, "argument_match": "exact"}
    extra = make_episode(arguments={"city": "Paris", "days": 3, "unit": "C"}, context=context)
    assert grade(exact, extra).score == pytest.approx(0.5)
    assert grade(TOOL_CALL, extra).score == 1.0


REFERENCE: dict[str, Any] = {
    **TOOL_CALL,
    "reference": [
        {"query": "What's the weather in Paris?", "tool": "get_weather", "arguments": {"city": "Paris"}},
        {"contains": ["forecast", "weather"], "tool": "get_forecast"},
        {"pattern": r"\bconvert\b.*\bto\b", "tool": "convert_units"},
        {"contains": ["paris"], "tool": "never_reached_for_weather"},
    ],
}


@pytest.mark.parametrize(
    ("query", "tool", "arguments", "expected"),
    [
        ("  what's the WEATHER in paris?  ", "get_weather", {"city": "Paris"}, 1.0),
        ("What's the weather in Paris?", "get_weather", {"city": "Rome"}, 0.5),
        ("Weather in Rome tomorrow", "get_forecast", {}, 1.0),
        ("Please convert 3 miles to km", "convert_units", {}, 1.0),
        ("Please convert 3 miles to km", "get_weather", {}, 0.0),
        ("Things to do in Paris", "never_reached_for_weather", {}, 1.0),
    ],
    ids=["exact-query", "exact-wrong-args", "keyword", "regex", "regex-wrong-tool", "later-row"],
)
def test_tool_call_from_the_reference_table(
    query: str, tool: str, arguments: dict[str, Any], expected: float
) -> None:
    result = grade(REFERENCE, make_episode(query=query, tool=tool, arguments=arguments))
    assert result.ok and result.score == expected, result
    assert "reference)" in result.reason


def test_tool_call_context_wins_over_the_reference_table() -> None:
    episode = make_episode(tool="get_forecast", context={"expected_tool": "get_forecast"})
    assert grade(REFERENCE, episode).score == 1.0


def test_tool_call_reads_chat_tool_calls_and_the_last_user_message() -> None:
    episode = ep.Episode.model_validate(
        {
            "agentId": "agent",
            "messages": [
                {"role": "user", "content": "weather in Oslo"},
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "get_forecast", "arguments": '{"city": "Oslo"}'}}],
                },
            ],
        }
    )
    assert grade(REFERENCE, episode).score == 1.0


def test_tool_call_without_an_expected_tool_fails_or_scores_zero() -> None:
    result = grade(TOOL_CALL, make_episode(context={"other": 1}))
    assert result.score is None and "no expected tool" in (result.error or "")
    assert grade({**TOOL_CALL, "missing_expected": "zero"}, make_episode()).score == 0.0
    no_call = grade(TOOL_CALL, make_episode(tool=None, context={"expected_tool": "get_weather"}))
    assert no_call.score == 0.0 and "no tool call" in no_call.reason


# --- json_schema ---

SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "schema": {
        "type": "object",
        "required": ["tool", "arguments"],
        "properties": {"tool": {"type": "string"}, "arguments": {"type": "object"}},
    },
}


@pytest.mark.parametrize(
    ("output", "expected", "reason"),
    [
        ('{"tool": "get_weather", "arguments": {"city": "Paris"}}', 1.0, "matches"),
        ('```json\n{"tool": "x", "arguments": {}}\n```', 1.0, "matches"),
        ('{"tool": 3, "arguments": {}}', 0.0, "schema violation at tool"),
        ('{"tool": "x"}', 0.0, "'arguments' is a required property"),
        ("Sure! Here it is", 0.0, "output is not JSON"),
    ],
    ids=["valid", "fenced", "wrong-type", "missing-key", "not-json"],
)
def test_json_schema_on_the_output_text(output: str, expected: float, reason: str) -> None:
    result = grade(SCHEMA, make_episode(tool=None, output=output))
    assert result.ok and result.score == expected
    assert reason in result.reason


def test_json_schema_on_an_episode_object() -> None:
    spec = {
        "type": "json_schema",
        "input": "{{episode.action.arguments}}",
        "schema": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string"}},
            "additionalProperties": False,
        },
    }
    assert grade(spec, make_episode(arguments={"city": "Paris"})).score == 1.0
    assert grade(spec, make_episode(arguments={"town": "Paris"})).score == 0.0
    missing = grade(spec, make_episode(tool=None))
    assert missing.score == 0.0 and "missing" in missing.reason


# --- presets ---


def test_tool_selection_preset_ignores_arguments() -> None:
    episode = make_episode(
        arguments={"city": "Rome"},
        context={"expected_tool": "get_weather", "expected_arguments": {"city": "Paris"}},
    )
    assert grade("tool_selection", episode).score == 1.0
    assert (
        grade("tool_selection", make_episode(tool="search", context={"expected_tool": "get_weather"})).score
        == 0.0
    )
    with_reference = {
        "preset": "tool_selection",
        "reference": [{"contains": ["weather"], "tool": "get_weather"}],
    }
    assert grade(with_reference, make_episode()).score == 1.0
    assert grade("tool_selection", make_episode()).error is not None


def test_exact_match_preset() -> None:
    assert grade("exact_match", make_episode(output="21 C", context={"expected_output": "21 C"})).score == 1.0
    assert (
        grade("exact_match", make_episode(output="21 C.", context={"expected_output": "21 C"})).score == 0.0
    )
    assert grade("exact_match", make_episode(output="21 C")).error is not None


@pytest.mark.parametrize(
    "spec",
    [TOOL_CALL, REFERENCE, SCHEMA, "tool_selection", "exact_match"],
    ids=["tool_call", "reference", "json_schema", "tool_selection", "exact_match"],
)
def test_rule_graders_never_raise_on_odd_episodes(spec: Any) -> None:
    odd = [
        ep.Episode.model_validate({"agentId": "a"}),
        ep.Episode.model_validate({"agentId": "a", "state": {"context": [1, 2]}, "result": "x"}),
        ep.Episode.model_validate(
            {
                "agentId": "a",
                "state": {"context": {"expected_tool": 5}},
                "action": {"tool": "t", "arguments": [1]},
            }
        ),
    ]
    for episode in odd:
        result = grade(spec, episode)
        assert result.ok or result.error


def test_rule_graders_are_fast() -> None:
    """A loose floor (the measured figure is far higher): rule graders must not be the bottleneck."""
    grader = graders.build_grader(graders.load_grader_spec(REFERENCE))
    episodes = [make_episode(query=f"weather in city {i}", tool="get_forecast") for i in range(2000)]

    async def run() -> float:
        start = time.perf_counter()
        for episode in episodes:
            await grader.grade(episode)
        return time.perf_counter() - start

    elapsed = asyncio.run(run())
    assert len(episodes) / elapsed > 5000
