"""Graders by name: ``tool_selection``, ``exact_match`` and ``task_adherence``.

A preset is a plain spec dict; ``load_grader_spec("tool_selection")`` validates it like any other
spec, and ``{"preset": "tool_selection", "reference": [...]}`` overrides its top-level fields.

Conventions the presets rely on (the demo agent and the capture client follow them):

- ``tool_selection`` (rule, no network): 1 when the tool the agent called
  (``Episode.effective_tool_call()``: ``action.tool``, else the last assistant tool call) is the expected
  tool, else 0; arguments are not compared. The expected tool is ``episode.state.context.expected_tool``
  when the agent recorded it, else the first row of the spec's ``reference`` table that matches the
  query (``{"preset": "tool_selection", "reference": [{"contains": ["weather"], "tool": "get_weather"}]}``).
  An episode with neither is a failed grading with that reason, never a silent 0.
- ``exact_match`` (rule): 1 when the agent's output text equals ``episode.state.context.expected_output``
  exactly; an episode without it fails with that reason.
- ``task_adherence`` (LLM judge): a 0-10 rubric, "did the agent do what was asked, with the right tool",
  normalised to [0, 1]. The judge endpoint comes from the environment: ``LIGHTNING_JUDGE_BASE_URL``
  (any OpenAI-compatible ``/v1`` URL; unset: OpenAI's), ``LIGHTNING_JUDGE_API_KEY`` and
  ``LIGHTNING_JUDGE_MODEL`` (default ``gpt-4o-mini``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

TASK_ADHERENCE_SYSTEM = """\
You evaluate one turn of a tool-using AI agent. Judge task adherence: did the agent do what the user \
asked, by calling the right tool with sensible arguments (or answering directly when no tool was \
needed)?
Scoring, 0 to 10:
- 10: the right tool, correct arguments, fully addresses the request.
- 7-9: the right tool, arguments slightly off or incomplete.
- 4-6: a plausible but not the best tool, or the right tool with clearly wrong arguments.
- 1-3: the wrong tool, or an answer that ignores part of the request.
- 0: no attempt, an error, or something unrelated to the request.
If an expected tool is given, an agent that called a different tool scores at most 3."""

TASK_ADHERENCE_USER = """\
User request:
{{episode.state.query}}

Agent output (its answer, or its tool call as JSON):
{{sample.output_text}}

Tool result:
{{episode.result}}

Expected tool (empty if unknown): {{episode.state.context.expected_tool}}"""

_PRESETS: dict[str, dict[str, Any]] = {
    "tool_selection": {
        "type": "tool_call",
        "name": "tool_selection",
        "expected_tool": "{{episode.state.context.expected_tool}}",
        "check_arguments": False,
    },
    "exact_match": {
        "type": "string_check",
        "name": "exact_match",
        "operation": "eq",
        "input": "{{sample.output_text}}",
        "reference": "{{episode.state.context.expected_output}}",
    },
    "task_adherence": {
        "type": "score_model",
        "name": "task_adherence",
        "model": "gpt-4o-mini",
        "model_env": "LIGHTNING_JUDGE_MODEL",
        "base_url_env": "LIGHTNING_JUDGE_BASE_URL",
        "api_key_env": "LIGHTNING_JUDGE_API_KEY",
        "input": [
            {"role": "system", "content": TASK_ADHERENCE_SYSTEM},
            {"role": "user", "content": TASK_ADHERENCE_USER},
        ],
        "range": [0, 10],
        "pass_threshold": 7,
        "sampling_params": {"temperature": 0},
    },
}

#: preset name -> spec dict (read-only; copy before changing)
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(spec) for name, spec in _PRESETS.items()}
)


def preset_dict(name: str) -> dict[str, Any] | None:
    """A deep, mutable copy of the preset's spec dict, or None when there is no such preset."""
    import copy

    spec = _PRESETS.get(name)
    return None if spec is None else copy.deepcopy(spec)
