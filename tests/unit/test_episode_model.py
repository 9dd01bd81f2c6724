"""The ``Episode`` model (``api/episode.py``): what the collector accepts and how it is written out.

Covers: deterministic ids (same interaction, same id; session, turn and content change it; without
session and turn the time does; a client id is kept); camelCase JSON from ``to_json_dict`` with
``reward``/``labeled`` always present, and input accepted in camelCase or snake_case; OpenAI's chat
format kept as is (``tool_calls``, ``tool_call_id``, arguments as a JSON string) and read back by
``output_text``/``effective_tool_call``; naive timestamps taken as UTC; every limit (text length,
message count, JSON depth and size, id and agent id shapes, reward range, NaN, labels without a
score or error, unknown fields) refused with an error that names the field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from lightning_op.api import episode as ep

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def _base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "agentId": "support-bot",
        "sessionId": "s-1",
        "turn": 0,
        "timestamp": T0.isoformat(),
        "state": {"query": "where is my order?"},
        "action": {"tool": "lookup_order", "arguments": {"order": 42}},
    }
    data.update(overrides)
    return data


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


# --- deterministic ids ------------------------------------------------------------------------------


def test_same_interaction_gets_the_same_id_so_a_retried_batch_is_no_duplicate() -> None:
    first = ep.parse_episode(_base())
    retried = ep.parse_episode(_base(timestamp=(T0 + timedelta(seconds=5)).isoformat()))
    assert first.id == retried.id
    assert first.id.startswith("ep-") and len(first.id) == 35


@pytest.mark.parametrize(
    "change",
    [
        {"sessionId": "s-2"},
        {"turn": 1},
        {"agentId": "other-bot"},
        {"state": {"query": "where is my parcel?"}},
        {"action": {"tool": "lookup_order", "arguments": {"order": 43}}},
        {"result": {"status": "shipped"}},
        {"modelVersion": "tuned-v2"},
    ],
    ids=["session", "turn", "agent", "query", "arguments", "result", "model-version"],
)
def test_id_changes_with_what_identifies_the_interaction(change: dict[str, Any]) -> None:
    assert ep.parse_episode(_base(**change)).id != ep.parse_episode(_base()).id


def test_without_session_and_turn_the_same_query_at_another_time_is_another_episode() -> None:
    one = ep.parse_episode(_base(sessionId=None, turn=None))
    later = ep.parse_episode(
        _base(sessionId=None, turn=None, timestamp=(T0 + timedelta(hours=1)).isoformat())
    )
    assert one.id != later.id


def test_without_a_turn_the_same_question_again_in_a_session_is_another_episode() -> None:
    """The capture client's decorator sets no turn: a user asking the same thing twice in a session
    is two interactions (they were merged as duplicates); a resend keeps its timestamp, so its id."""
    one = ep.parse_episode(_base(turn=None))
    again = ep.parse_episode(_base(turn=None, timestamp=(T0 + timedelta(minutes=2)).isoformat()))
    assert one.id != again.id
    assert ep.parse_episode(_base(turn=None)).id == one.id


def test_a_timestamp_the_sender_did_not_give_is_not_part_of_the_id() -> None:
    """A plain HTTP client that resends a batch without ids or timestamps gets no duplicates (the
    time of parsing differs on each try)."""
    bare = _base(sessionId=None, turn=None)
    del bare["timestamp"]
    first = ep.parse_episode(bare)
    resent = ep.parse_episode(dict(bare))
    assert first.id == resent.id and first.id_derived


def test_a_client_id_is_kept() -> None:
    assert ep.parse_episode(_base(id="client:abc-1.2")).id == "client:abc-1.2"


# --- JSON shape ------------------------------------------------------------------------------------


def test_to_json_dict_is_camel_case_and_keeps_reward_and_labeled_even_when_unset() -> None:
    data = ep.parse_episode(_base(modelVersion="base-v1")).to_json_dict()
    assert {"agentId", "sessionId", "modelVersion", "timestamp", "state", "action"} <= data.keys()
    assert "agent_id" not in data and "model_version" not in data
    assert data["reward"] is None and data["labeled"] is False
    assert data["timestamp"] == "2026-03-01T09:30:00Z"
    # None-valued optional fields are left out rather than written as null.
    assert "error" not in data and "messages" not in data


def test_snake_case_input_is_accepted_too() -> None:
    episode = ep.Episode(agent_id="bot", model_version="m", state=ep.State(query="q"))
    assert ep.parse_episode(episode.to_json_dict()) == episode


def test_round_trip_through_json_is_lossless() -> None:
    episode = ep.parse_episode(
        _base(
            labels=[{"score": 0.5, "grader": "g", "reason": "ok", "at": T0.isoformat()}],
            reward=0.5,
            labeled=True,
            redactions={"email": 2},
        )
    )
    assert ep.parse_episode(json.loads(json.dumps(episode.to_json_dict()))) == episode


def test_naive_timestamps_are_taken_as_utc() -> None:
    episode = ep.parse_episode(_base(timestamp="2026-03-01T09:30:00"))
    assert episode.timestamp == T0


# --- OpenAI chat format ----------------------------------------------------------------------------

CHAT = [
    {"role": "system", "content": "You book trains."},
    {"role": "user", "content": "Paris to Lyon tomorrow"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "book_train", "arguments": '{"from": "Paris", "to": "Lyon"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"booking": "BK-1"}'},
]


def test_chat_messages_keep_openai_keys_and_arguments_as_a_json_string() -> None:
    data = ep.parse_episode(_base(action=None, messages=CHAT)).to_json_dict()
    call = data["messages"][2]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"from": "Paris", "to": "Lyon"}'
    assert data["messages"][3]["tool_call_id"] == "call_1"
    assert "toolCalls" not in json.dumps(data)


def test_tool_call_is_read_from_the_last_assistant_message() -> None:
    episode = ep.parse_episode(_base(action=None, messages=CHAT))
    assert episode.effective_tool_call() == ("book_train", {"from": "Paris", "to": "Lyon"})
    assert json.loads(episode.output_text()) == {
        "tool": "book_train",
        "arguments": {"from": "Paris", "to": "Lyon"},
    }


def test_output_text_prefers_the_assistant_reply() -> None:
    messages = [*CHAT, {"role": "assistant", "content": "Booked: BK-1"}]
    assert ep.parse_episode(_base(action=None, messages=messages)).output_text() == "Booked: BK-1"


# --- limits and bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"state": {"query": "x" * (ep.MAX_TEXT_CHARS + 1)}}, "state.query"),
        ({"state": {"query": "q", "context": _nested(ep.MAX_JSON_DEPTH + 1)}}, "state.context"),
        ({"state": {"query": "q", "context": {"blob": "x" * (ep.MAX_JSON_BYTES + 1)}}}, "state.context"),
        ({"action": {"tool": "t", "arguments": {"n": float("nan")}}}, "action.arguments"),
        ({"action": {"tool": "", "arguments": {}}}, "action.tool"),
        ({"messages": [{"role": "user", "content": "hi"}] * (ep.MAX_MESSAGES + 1)}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"id": "has spaces"}, "id"),
        ({"id": "x" * (ep.MAX_ID_CHARS + 1)}, "id"),
        ({"agentId": "bad/agent"}, "agentId"),
        ({"agentId": ""}, "agentId"),
        ({"reward": 1.5}, "reward"),
        ({"reward": -0.1}, "reward"),
        ({"reward": float("nan")}, "reward"),
        ({"turn": -1}, "turn"),
        ({"labels": [{"grader": "g"}]}, "labels.0"),
        ({"labels": [{"score": 2, "grader": "g"}]}, "labels.0.score"),
        ({"agentID": "typo"}, "agentID"),
    ],
    ids=[
        "query-too-long",
        "context-too-deep",
        "context-too-large",
        "arguments-nan",
        "empty-tool",
        "too-many-messages",
        "unknown-role",
        "id-with-spaces",
        "id-too-long",
        "agent-with-slash",
        "empty-agent",
        "reward-above-1",
        "reward-below-0",
        "reward-nan",
        "negative-turn",
        "label-without-score-or-error",
        "label-score-above-1",
        "unknown-field",
    ],
)
def test_bad_input_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ep.parse_episode(_base(**change))
    reason = ep.validation_reason(info.value)
    assert reason.startswith(field) or f"; {field}" in reason, reason


def test_missing_agent_id_is_named() -> None:
    data = _base()
    del data["agentId"]
    with pytest.raises(ValidationError) as info:
        ep.parse_episode(data)
    assert "agentId" in ep.validation_reason(info.value)


def test_a_label_with_an_error_and_no_score_records_a_failed_grading() -> None:
    label = ep.Label(grader="judge", error="timeout")
    assert label.score is None and label.error == "timeout"


def test_limits_are_inclusive() -> None:
    episode = ep.parse_episode(
        _base(
            state={"query": "x" * ep.MAX_TEXT_CHARS, "context": _nested(ep.MAX_JSON_DEPTH)},
            messages=[{"role": "user", "content": "hi"}] * ep.MAX_MESSAGES,
            reward=1.0,
        )
    )
    assert len(episode.state.query) == ep.MAX_TEXT_CHARS


def test_non_string_keys_give_the_same_id_as_their_json_form() -> None:
    """A Python caller's int keys must not crash id derivation, and the id survives the JSON round trip."""
    episode = ep.Episode(agent_id="a", result={1: "x", "b": 2})
    assert ep.Episode.model_validate(episode.to_json_dict()).id == episode.id
