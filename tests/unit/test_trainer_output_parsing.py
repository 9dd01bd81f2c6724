"""Turning a model's raw reply into an OpenAI assistant message, and into an episode to grade.

Covers:
- ``parse_assistant_output``: Hermes/Qwen ``<tool_call>`` blocks (several, string or object
  arguments, ``parameters``, missing closing tag, end-of-turn markers) become ``tool_calls`` with
  JSON-string arguments; plain text stays ``content``; a block that does not parse stays in the
  text; a bare JSON tool call counts;
- the evaluation episode carries the expected tool and arguments where the ``tool_selection``
  grader reads them, and the real grader scores a right and a wrong reply 1 and 0;
- the summary's figures (score, tool accuracy, parse failures, missing tool calls).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from lightning_op import graders
from lightning_op.training import evaluate

ROW = {
    "messages": [
        {"role": "system", "content": "Pick a tool."},
        {"role": "user", "content": "who will churn?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "analyze_churn", "arguments": '{"q": 3}'},
                }
            ],
        },
    ]
}


def _calls(message: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    calls = message.get("tool_calls") or []
    assert isinstance(calls, list)
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Hello there.", "Hello there.", []),
        ('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', None, [("f", {"a": 1})]),
        (
            '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call><|im_end|>',
            None,
            [("f", {"a": 1})],
        ),
        ('<tool_call>{"name": "f", "parameters": {"x": "y"}}', None, [("f", {"x": "y"})]),
        (
            'Checking. <tool_call>{"name": "f", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "g", "arguments": {}}</tool_call>',
            "Checking.",
            [("f", {}), ("g", {})],
        ),
        ('<tool_call>{"name": "f", "argu</tool_call>', '<tool_call>{"name": "f", "argu</tool_call>', []),
        ('{"name": "f", "arguments": {"k": 2}}', None, [("f", {"k": 2})]),
        ('{"answer": 42}', '{"answer": 42}', []),
    ],
    ids=[
        "text",
        "tool-call",
        "string-args-and-marker",
        "parameters-no-close",
        "two-calls",
        "broken",
        "bare-json",
        "json-answer",
    ],
)
def test_parse_assistant_output(
    text: str, content: str | None, calls: list[tuple[str, dict[str, object]]]
) -> None:
    message = evaluate.parse_assistant_output(text)
    assert message["role"] == "assistant"
    assert message["content"] == content
    assert _calls(message) == calls
    for index, call in enumerate(message.get("tool_calls") or []):
        assert call["id"] == f"call_{index}" and call["type"] == "function"


def test_episode_carries_the_expected_answer_for_the_grader() -> None:
    reply = evaluate.parse_assistant_output(
        '<tool_call>{"name": "sales_report", "arguments": {}}</tool_call>'
    )
    episode = evaluate.build_episode(ROW, reply)
    assert episode.state.query == "who will churn?"
    assert episode.state.context == {"expected_tool": "analyze_churn", "expected_arguments": {"q": 3}}
    assert episode.effective_tool_call() == ("sales_report", {})


def test_tool_selection_grader_scores_right_and_wrong_replies() -> None:
    grader = graders.build_grader(graders.load_grader_spec("tool_selection"))
    replies = [
        '<tool_call>{"name": "analyze_churn", "arguments": {"q": 3}}</tool_call>',
        '<tool_call>{"name": "sales_report", "arguments": {}}</tool_call>',
        "I think you should look at churn.",
        '<tool_call>{"name": broken</tool_call>',
    ]
    result = evaluate.score_replies([ROW] * 4, replies, grader)
    asyncio.run(grader.aclose())
    assert [e.score for e in result.per_example] == [1.0, 0.0, 0.0, 0.0]
    assert result.score == 0.25
    assert result.per_metric["toolAccuracy"] == 0.25
    assert result.per_metric["parseFailures"] == 0.25
    assert result.per_metric["noToolCall"] == 0.5
    assert result.to_json_dict()["perExample"][1]["predictedTool"] == "sales_report"
