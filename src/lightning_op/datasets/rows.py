"""One episode -> one chat-format training row ``{"messages": [...]}`` (OpenAI fine-tuning format).

Used by ``datasets.build`` (millions of rows, so it works on the stored JSON dicts that
``EpisodeStore.iter_json`` yields, never on pydantic models) and by evaluation code that needs the same
prompt the model was trained on (``prompt_and_target``).

How a row is made:

- An episode with ``messages`` (with at least one assistant turn) uses them: a ``system`` message with
  the configured prompt is put first unless the episode brings its own ``system``/``developer``
  message, messages after the last assistant turn are dropped (a row ends with the turn the model
  learns), and assistant messages with neither content nor tool calls are dropped.
- Otherwise the row is ``system`` (the configured prompt; none when it is empty), ``user``
  (``state.query``) and ``assistant`` with one tool call from ``action`` (``{"id": "call_0", "type":
  "function", "function": {"name": tool, "arguments": "<JSON object as a string>"}}``). An episode with
  no action but a string ``result`` gets that text as the assistant's content.
- The tool's result is *not* added as a ``tool`` message after the final assistant turn: the trainer
  computes loss on assistant turns only, so a trailing tool message costs tokens and teaches nothing.
  ``state.context`` is not included either; agents whose prompts depend on it should capture
  ``messages``, which are used as they are.

Rows are canonical, so equal interactions give byte-identical lines and ``build`` can remove duplicates
by hashing the bytes: contents are stripped of leading/trailing whitespace, tool-call arguments are
re-encoded with sorted keys, and tool-call ids are renumbered ``call_0``, ``call_1``, ... per row (the
ids an agent generated are random and carry nothing to learn; ``tool_call_id`` references follow).

Episodes are the plain ``dict``s a JSON decoder gives (checks use ``dict``, not the slower ``Mapping``
ABC, as they run millions of times). An episode that cannot make a valid row raises ``SkipEpisode``
with a short reason that ``build`` counts (no query, tool arguments that are not a JSON object, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's request by calling the right tool."

#: the roles a row may hold, as OpenAI's chat format names them
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

_SORTED = orjson.OPT_SORT_KEYS


class SkipEpisode(ValueError):
    """This episode cannot become a training row; ``reason`` is short and stable enough to count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def system_message(system_prompt: str) -> dict[str, str] | None:
    """The system message rows start with, or ``None`` when the prompt is empty."""
    prompt = system_prompt.strip()
    return {"role": "system", "content": prompt} if prompt else None


def episode_row(episode: Mapping[str, Any], system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict[str, Any]:
    """The training row of one episode given as its JSON dict (``Episode.to_json_dict()`` shape)."""
    return {"messages": row_messages(episode, system_message(system_prompt))}


def encode_row(messages: list[dict[str, Any]]) -> bytes:
    """One JSONL line (without the newline) for a row's messages: compact JSON, keys in build order."""
    try:
        return orjson.dumps({"messages": messages})
    except orjson.JSONEncodeError as exc:
        raise SkipEpisode("text that is not valid UTF-8") from exc


def row_messages(episode: Mapping[str, Any], system: dict[str, str] | None) -> list[dict[str, Any]]:
    """The row's messages for one episode dict; raises ``SkipEpisode`` when it cannot make a row.

    ``system`` is ``system_message(prompt)``, computed once per build rather than once per row.
    """
    messages = episode.get("messages")
    if messages and isinstance(messages, list):
        from_messages = _from_messages(messages, system)
        if from_messages is not None:
            return from_messages
    return _from_action(episode, system)


def prompt_and_target(row: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Split a row into the prompt (every message before the last assistant turn) and that turn.

    Evaluation sends the prompt to a model and compares its reply with the target.
    """
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise ValueError("row has no 'messages' list")
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            return [dict(m) for m in messages[:index]], dict(message)
    raise ValueError("row has no assistant turn")


def canonical_arguments(arguments: Any) -> str:
    """Tool-call arguments as OpenAI wants them: a JSON object encoded as a string, keys sorted."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise SkipEpisode("tool arguments are not valid JSON") from exc
    if not isinstance(arguments, dict):
        raise SkipEpisode("tool arguments are not a JSON object")
    try:
        return orjson.dumps(arguments, option=_SORTED).decode()
    except orjson.JSONEncodeError as exc:
        raise SkipEpisode("tool arguments are not encodable as JSON") from exc


def _from_action(episode: Mapping[str, Any], system: dict[str, str] | None) -> list[dict[str, Any]]:
    state = episode.get("state")
    query = state.get("query") if isinstance(state, dict) else None
    query = query.strip() if isinstance(query, str) else ""
    if not query:
        raise SkipEpisode("no query")
    action = episode.get("action")
    if isinstance(action, dict):
        tool = action.get("tool")
        if not isinstance(tool, str) or not tool:
            raise SkipEpisode("action without a tool name")
        assistant: dict[str, Any] = {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": tool, "arguments": canonical_arguments(action.get("arguments", {}))},
                }
            ],
        }
    else:
        result = episode.get("result")
        if not isinstance(result, str) or not result.strip():
            raise SkipEpisode("no action, messages or text result")
        assistant = {"role": "assistant", "content": result.strip()}
    user = {"role": "user", "content": query}
    return [system, user, assistant] if system is not None else [user, assistant]


def _from_messages(messages: Sequence[Any], system: dict[str, str] | None) -> list[dict[str, Any]] | None:
    """Rows from an episode's own messages, or ``None`` when they hold no assistant turn."""
    last = -1
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SkipEpisode("a message is not an object")
        if message.get("role") == "assistant" and (message.get("content") or message.get("tool_calls")):
            last = index
    if last < 0:
        return None
    out: list[dict[str, Any]] = []
    first_role = messages[0].get("role")
    if system is not None and first_role not in ("system", "developer"):
        out.append(system)
    ids: dict[str, str] = {}
    last_id: str | None = None
    seen_user = False
    for message in messages[: last + 1]:
        role = message.get("role")
        if role not in ROLES:
            raise SkipEpisode("a message has an unknown role")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            # Multi-part content (images, ...) has no place in a text fine-tuning row.
            raise SkipEpisode("a message's content is not text")
        text = content.strip() if content else ""
        new: dict[str, Any] = {"role": role}
        if role == "assistant":
            calls = message.get("tool_calls")
            if not text and not calls:
                continue
            if text:
                new["content"] = text
            if calls:
                if not isinstance(calls, list):
                    raise SkipEpisode("tool_calls is not a list")
                new_calls = []
                for call in calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    name = function.get("name") if isinstance(function, dict) else None
                    if not isinstance(name, str) or not name:
                        raise SkipEpisode("a tool call has no function name")
                    assert isinstance(function, dict)
                    last_id = f"call_{len(ids)}"
                    original = call.get("id")
                    ids[original if isinstance(original, str) and original else last_id] = last_id
                    new_calls.append(
                        {
                            "id": last_id,
                            "type": "function",
                            "function": {
                                "name": name,
                                "arguments": canonical_arguments(function.get("arguments")),
                            },
                        }
                    )
                new["tool_calls"] = new_calls
        else:
            if role == "user":
                seen_user = True
            new["content"] = text
            if role == "tool":
                reference = message.get("tool_call_id")
                mapped = ids.get(reference) if isinstance(reference, str) else None
                # An unknown or empty reference answers the call just made, as agents append results in order.
                mapped = mapped or last_id
                if mapped is None:
                    raise SkipEpisode("tool message before any tool call")
                new["tool_call_id"] = mapped
            name = message.get("name")
            if isinstance(name, str) and name:
                new["name"] = name
        out.append(new)
    if not seen_user:
        raise SkipEpisode("no user message")
    return out
