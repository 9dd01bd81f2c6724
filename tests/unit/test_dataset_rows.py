"""Turning one episode into one chat-format training row (``datasets.rows``).

Covers: the action path (system, user, assistant tool call in OpenAI's format with JSON-string
arguments), the configurable and empty system prompt, an episode's own messages (kept, trimmed after
the last assistant turn, own system message respected, tool-call ids renumbered and references
followed), canonical rows for equal interactions, the episodes that cannot make a row and why, and
splitting a row into prompt and target for evaluation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lightning_op.api import episode as ep
from lightning_op.datasets import rows, validate


def episode_dict(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"agent_id": "bot", "state": {"query": "weather in Oslo?"}, "reward": 0.9}
    base.update(fields)
    return ep.Episode.model_validate(base).to_json_dict()


def test_action_episode_becomes_system_user_and_assistant_tool_call() -> None:
    episode = episode_dict(action={"tool": "get_weather", "arguments": {"unit": "C", "city": "Oslo"}})

    row = rows.episode_row(episode, system_prompt="Pick a tool.")

    assert row == {
        "messages": [
            {"role": "system", "content": "Pick a tool."},
            {"role": "user", "content": "weather in Oslo?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"C"}'},
                    }
                ],
            },
        ]
    }
    assert validate.validate_row(row) is None


def test_empty_system_prompt_leaves_the_system_message_out() -> None:
    episode = episode_dict(action={"tool": "get_weather", "arguments": {}})

    roles = [m["role"] for m in rows.episode_row(episode, system_prompt="  ")["messages"]]

    assert roles == ["user", "assistant"]


def test_text_result_without_action_becomes_the_assistant_answer() -> None:
    row = rows.episode_row(episode_dict(result="  It is sunny.  "))

    assert row["messages"][-1] == {"role": "assistant", "content": "It is sunny."}


def test_own_messages_are_used_trimmed_after_the_last_assistant_turn() -> None:
    episode = episode_dict(
        messages=[
            {"role": "system", "content": "Agent's own prompt"},
            {"role": "user", "content": "weather in Oslo?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "abc-random",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "abc-random", "content": "12C, sunny"},
            {"role": "assistant", "content": "12C and sunny."},
            {"role": "user", "content": "thanks"},
        ]
    )

    messages = rows.episode_row(episode, system_prompt="configured prompt")["messages"]

    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[0]["content"] == "Agent's own prompt"
    assert messages[2]["tool_calls"][0]["id"] == "call_0"
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Oslo"}'
    assert messages[3]["tool_call_id"] == "call_0"
    assert validate.validate_row({"messages": messages}) is None


def test_messages_without_assistant_turn_fall_back_to_the_action() -> None:
    episode = episode_dict(
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        action={"tool": "get_weather", "arguments": {"city": "Oslo"}},
    )

    messages = rows.episode_row(episode)["messages"]

    assert messages[-1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_equal_interactions_give_identical_bytes() -> None:
    """Whitespace around text, argument key order and agent-made call ids do not make rows differ."""
    first = episode_dict(
        messages=[
            {"role": "user", "content": "  weather in Oslo? "},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "x1", "function": {"name": "get_weather", "arguments": '{"a": 1, "b": 2}'}}
                ],
            },
        ]
    )
    second = episode_dict(
        messages=[
            {"role": "user", "content": "weather in Oslo?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "zz9", "function": {"name": "get_weather", "arguments": '{"b":2,"a":1}'}}
                ],
            },
        ]
    )
    system = rows.system_message(rows.DEFAULT_SYSTEM_PROMPT)

    assert rows.encode_row(rows.row_messages(first, system)) == rows.encode_row(
        rows.row_messages(second, system)
    )


@pytest.mark.parametrize(
    ("episode", "reason"),
    [
        pytest.param({"state": {"query": ""}, "action": {"tool": "t"}}, "no query", id="empty-query"),
        pytest.param({"state": {"query": "hi"}}, "no action, messages or text result", id="nothing-to-learn"),
        pytest.param(
            {"state": {"query": "hi"}, "action": {"tool": "t", "arguments": [1, 2]}},
            "tool arguments are not a JSON object",
            id="arguments-list",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "1", "function": {"name": "t", "arguments": "{oops"}}],
                    },
                ]
            },
            "tool arguments are not valid JSON",
            id="arguments-not-json",
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "content": "hello"}]},
            "no user message",
            id="no-user",
        ),
    ],
)
def test_episodes_that_cannot_make_a_row_are_skipped_with_a_reason(
    episode: dict[str, Any], reason: str
) -> None:
    with pytest.raises(rows.SkipEpisode) as caught:
        rows.episode_row({"agentId": "bot", "reward": 1.0, **episode})

    assert caught.value.reason == reason


def test_prompt_and_target_split_at_the_last_assistant_turn() -> None:
    row = rows.episode_row(episode_dict(action={"tool": "get_weather", "arguments": {"city": "Oslo"}}))

    prompt, target = rows.prompt_and_target(row)

    assert [m["role"] for m in prompt] == ["system", "user"]
    assert json.loads(target["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
