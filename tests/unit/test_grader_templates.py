"""Grader templates: ``{{ namespace.path }}`` parsing and rendering over an episode.

Covers: the ``episode``/``item``/``sample`` namespaces; snake_case and camelCase keys; list indices
(``[0]``, ``[-1]``, ``.0``) and quoted keys; how values render (strings, numbers, booleans, objects);
missing paths render empty and are reported; a single-placeholder template gives the raw value;
nothing is executed; ``sample.output_tools`` follows the episode's tool call.
"""

from __future__ import annotations

from typing import Any

import pytest

from lightning_op.api import episode as ep
from lightning_op.graders import templates


def make_episode(**overrides: Any) -> ep.Episode:
    data: dict[str, Any] = {
        "agentId": "weather-agent",
        "modelVersion": "base-1",
        "state": {
            "query": "Weather in Paris?",
            "context": {"expected_tool": "get_weather", "n": 10, "ok": True},
        },
        "action": {"tool": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}},
        "result": {"temp": 21.5},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "It is 21.5 C."},
        ],
    }
    data.update(overrides)
    return ep.Episode.model_validate(data)


RENDERED = [
    ("{{episode.state.query}}", "Weather in Paris?"),
    ("{{ item.state.query }}", "Weather in Paris?"),
    ("tool={{episode.action.tool}}!", "tool=get_weather!"),
    ("{{episode.agentId}}/{{episode.agent_id}}", "weather-agent/weather-agent"),
    ("{{episode.model_version}}", "base-1"),
    ("{{episode.state.context.n}}", "10"),
    ("{{episode.state.context.ok}}", "true"),
    ("{{episode.action.arguments}}", '{"city": "Paris", "days": [1, 2]}'),
    ("{{episode.action.arguments.days[1]}}", "2"),
    ("{{episode.action.arguments.days.0}}", "1"),
    ("{{episode.messages[-1].content}}", "It is 21.5 C."),
    ("{{episode.messages[0].role}}", "user"),
    ('{{episode.state.context["expected_tool"]}}', "get_weather"),
    ("{{episode.result.temp}}", "21.5"),
    ("{{sample.output_text}}", "It is 21.5 C."),
    ("no placeholders", "no placeholders"),
]


@pytest.mark.parametrize(("source", "expected"), RENDERED, ids=[s for s, _ in RENDERED])
def test_templates_render_values_from_the_episode(source: str, expected: str) -> None:
    ctx = templates.GradingContext(make_episode())
    text, missing = ctx.render(templates.parse_template(source))
    assert (text, missing) == (expected, [])


@pytest.mark.parametrize(
    "source",
    [
        "{{episode.state.context.absent}}",
        "{{episode.messages[7].content}}",
        "{{episode.action.arguments.city.x}}",
    ],
    ids=["missing-key", "index-out-of-range", "through-a-string"],
)
def test_missing_paths_render_empty_and_are_reported(source: str) -> None:
    ctx = templates.GradingContext(make_episode())
    text, missing = ctx.render(templates.parse_template(f"<{source}>"))
    assert text == "<>"
    assert [str(p) for p in missing] == [source]


def test_a_missing_action_is_missing() -> None:
    ctx = templates.GradingContext(make_episode(action=None))
    _, missing = ctx.render(templates.parse_template("{{episode.action.tool}}"))
    assert len(missing) == 1


def test_single_placeholder_gives_the_raw_value() -> None:
    ctx = templates.GradingContext(make_episode())
    value, missing = ctx.render_value(templates.parse_template("{{episode.action.arguments}}"))
    assert value == {"city": "Paris", "days": [1, 2]} and missing == []
    value, _ = ctx.render_value(templates.parse_template("{{episode.state}}"))
    assert value["query"] == "Weather in Paris?"


def test_sample_views_of_the_output() -> None:
    ctx = templates.GradingContext(make_episode(messages=None))
    assert ctx.output_json == {"tool": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}
    tools = ctx.output_tools
    assert tools[0]["function"]["name"] == "get_weather"
    text, _ = ctx.render(templates.parse_template("{{sample.output_json.arguments.city}}"))
    assert text == "Paris"
    chat = make_episode(
        action=None,
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "function": {"name": "search", "arguments": '{"q": "x"}'}}],
            },
        ],
    )
    ctx = templates.GradingContext(chat)
    assert ctx.output_tools[0]["function"] == {"name": "search", "arguments": '{"q": "x"}'}
    assert ctx.item["agentId"] == "weather-agent"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{__import__('os')}}", "is not a path"),
        ("{{episode.state.query.__class__}}", None),
        ("{{ }}", "empty placeholder"),
        ("{{config.x}}", "unknown namespace 'config'"),
        ("{{sample}}", "name a field of sample"),
        ("{{episode.password}}", "an episode has no field 'password'"),
    ],
    ids=["call", "dunder", "empty", "namespace", "bare-sample", "unknown-field"],
)
def test_nothing_is_executed(source: str, message: str | None) -> None:
    if message is None:
        # Attribute-like names are dict/model lookups only: a dunder is simply missing.
        ctx = templates.GradingContext(make_episode())
        assert ctx.render(templates.parse_template(source))[0] == ""
        return
    with pytest.raises(templates.TemplateError, match=message):
        templates.parse_template(source)
