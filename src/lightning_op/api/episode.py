"""The Episode: one agent interaction (query, tool call or chat messages, result, reward).

Episodes are written by the capture client, validated by the collector, kept by the store, scored by
graders and turned into training rows by ``datasets``. This module only defines the shape and its
limits; it does no I/O.

JSON uses camelCase (``agentId``, ``modelVersion``), Python attributes snake_case; always dump with
``to_json_dict()`` (or ``model_dump(mode="json", by_alias=True)``).

Every string and list has a size limit, and free-form JSON (``state.context``, ``action.arguments``,
``result``) is bounded in depth and size, so one bad client cannot fill the store or stall a parser.
When no ``id`` is given it is derived from agent, session, turn and content, so a retried batch
never creates duplicates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.alias_generators import to_camel

from lightning_op.api import constants

MAX_ID_CHARS = 256
#: how every redaction placeholder (``[REDACTED:<kind>]``, ``store.redaction``) begins
REDACTED_PREFIX = "[REDACTED:"
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 32_768
MAX_MESSAGES = 128
MAX_TOOL_CALLS = 32
MAX_LABELS = 64
MAX_JSON_DEPTH = 16
MAX_JSON_BYTES = 256 * 1024
#: one episode as stored (its JSON document, labels included at insert): ``store.sqlite`` refuses more
MAX_EPISODE_BYTES = 1024 * 1024


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _json_walk(value: Any, depth: int, plain: list[bool]) -> int:
    """The nesting depth of ``value`` (not counted past ``MAX_JSON_DEPTH``). Clears ``plain[0]`` when
    it holds anything but dicts, lists, tuples and str/int/bool/None/finite-float scalars.

    Hot path of every collector write: exact-type checks before the (slow) ABC isinstance, and no
    recursion into scalars.
    """
    if depth > MAX_JSON_DEPTH:
        return depth
    kind = type(value)
    if kind in _SCALARS:
        if kind is float and not math.isfinite(value):
            plain[0] = False
        return depth
    children: Iterable[Any]
    if kind is dict:
        children = value.values()
    elif kind is list or kind is tuple:
        children = value
    else:
        plain[0] = False
        if isinstance(value, Mapping):
            children = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            return depth
    deepest = depth + 1
    for child in children:
        child_kind = type(child)
        if child_kind in _SCALARS:
            if child_kind is float and not math.isfinite(child):
                plain[0] = False
            continue
        child_depth = _json_walk(child, depth + 1, plain)
        if child_depth > deepest:
            deepest = child_depth
            if deepest > MAX_JSON_DEPTH:
                break
    return deepest


def _json_depth(value: Any, depth: int = 0) -> int:
    return _json_walk(value, depth, [True])


# json.dumps(value, ensure_ascii=False, allow_nan=False) without building an encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _bounded_json(value: Any) -> Any:
    """Reject free-form JSON that is too deep, too large or not representable as JSON."""
    plain = [True]
    if _json_walk(value, 0, plain) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if plain[0]:
        # Fast path: for plain JSON, json.dumps' text is at most twice as long as orjson's compact
        # bytes (separators gain a space, exponents a sign), so 3x orjson's size within the limit
        # proves the value fits without the slower encoder. orjson raises on what it cannot encode
        # exactly (non-string keys, ints over 64 bits, lone surrogates): the slow path decides then.
        try:
            if 3 * len(orjson.dumps(value)) <= MAX_JSON_BYTES:
                return value
        except TypeError:
            pass
    try:
        size = len(_ENCODER.encode(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from exc
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{size} bytes of JSON, limit {MAX_JSON_BYTES}")
    return value


JsonValue = Annotated[Any, AfterValidator(_bounded_json)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _OpenAIModel(BaseModel):
    """OpenAI's chat format keeps snake_case keys (``tool_calls``, ``tool_call_id``)."""

    model_config = ConfigDict(extra="ignore")


class ToolCallFunction(_OpenAIModel):
    name: Name
    # OpenAI's format: the arguments are a JSON-encoded string.
    arguments: Annotated[str, Field(max_length=MAX_JSON_BYTES)] = "{}"


class ToolCall(_OpenAIModel):
    id: Annotated[str, Field(max_length=MAX_ID_CHARS)] = ""
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(_OpenAIModel):
    """A chat message in OpenAI's format, tool calls included."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | None = None
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOL_CALLS)] | None = None
    tool_call_id: Annotated[str, Field(max_length=MAX_ID_CHARS)] | None = None


class State(_Model):
    """What the agent saw: the user's query and any context (retrieved docs, user profile, ...)."""

    query: Text = ""
    context: JsonValue = None


class Action(_Model):
    """The tool call the agent made in response."""

    tool: Name
    arguments: JsonValue = Field(default_factory=dict)


class Label(_Model):
    """One grading of an episode. A label with ``error`` records a failed grading (no score)."""

    score: Score | None = None
    grader: Name
    grader_version: Annotated[str, Field(max_length=MAX_ID_CHARS)] | None = None
    reason: Text = ""
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    manual: bool = False
    error: Text | None = None

    @model_validator(mode="after")
    def _score_or_error(self) -> Label:
        if self.score is None and self.error is None:
            raise ValueError("a label needs a score or an error")
        return self


class Episode(_Model):
    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9._:\-]+$")] = ""
    agent_id: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[A-Za-z0-9._\-]+$")]
    session_id: Annotated[str, Field(max_length=MAX_ID_CHARS)] | None = None
    turn: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_version: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    state: State = Field(default_factory=State)
    action: Action | None = None
    messages: Annotated[list[Message], Field(max_length=MAX_MESSAGES)] | None = None
    result: JsonValue = None
    reward: Score | None = None
    labeled: bool = False
    labels: Annotated[list[Label], Field(max_length=MAX_LABELS)] = Field(default_factory=list)
    error: Text | None = None
    # Filled by redaction: how many values of each kind were replaced before the episode was stored.
    redactions: dict[Annotated[str, Field(max_length=64)], int] = Field(default_factory=dict)
    # Store-managed revision for optimistic concurrency on label updates; 0 before the first write.
    revision: Annotated[int, Field(ge=0)] = 0
    #: whether ``id`` was derived here (``deterministic_id``) rather than given: the collector derives
    #: such an id again from the redacted content, so it never fingerprints what redaction removed
    _id_derived: bool = PrivateAttr(default=False)
    #: whether the sender gave the timestamp (not defaulted to the time of parsing)
    _timestamp_given: bool = PrivateAttr(default=False)
    #: the redactor whose output this is (``store.redaction``): it need not scan it a second time
    _redacted_by: object = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _normalise(self) -> Episode:
        if self.timestamp.tzinfo is None:
            self.timestamp = self.timestamp.replace(tzinfo=UTC)
        if self.reward is not None and math.isnan(self.reward):
            raise ValueError("reward is NaN")
        self._timestamp_given = "timestamp" in self.model_fields_set
        if not self.id:
            self.id = deterministic_id(self)
            self._id_derived = True
        return self

    def __eq__(self, other: object) -> bool:
        """Equal when the data is: how an episode came by its id or timestamp is not part of it."""
        if not isinstance(other, Episode):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    @property
    def id_derived(self) -> bool:
        """Whether ``id`` was derived from the content rather than given by the sender."""
        return self._id_derived

    def content_problem(self) -> str | None:
        """Why this episode holds nothing to learn from, or None. Not a validation rule: the stores
        keep reading episodes written before the collector refused empty ones."""
        if self.state.query or self.action is not None or self.messages:
            return None
        return "episode has no content: give state.query, action or messages"

    def to_json_dict(self) -> dict[str, Any]:
        # Keep reward/labeled explicit even when null: scripts rely on those keys (DESIGN.md).
        data = super().to_json_dict()
        data["reward"] = self.reward
        data["labeled"] = self.labeled
        return data

    def output_text(self) -> str:
        """The agent's final output as text: the last assistant message, else the tool call as JSON."""
        for message in reversed(self.messages or []):
            if message.role != "assistant":
                continue
            if message.content:
                return message.content
            if message.tool_calls:
                call = message.tool_calls[0].function
                return json.dumps({"tool": call.name, "arguments": _loads_or_raw(call.arguments)})
        if self.action is not None:
            return json.dumps({"tool": self.action.tool, "arguments": self.action.arguments})
        if isinstance(self.result, str):
            return self.result
        return "" if self.result is None else json.dumps(self.result)

    def effective_tool_call(self) -> tuple[str, dict[str, Any]] | None:
        """The tool the agent chose and its arguments, from ``action`` or the last assistant tool call."""
        if self.action is not None:
            args = self.action.arguments if isinstance(self.action.arguments, dict) else {}
            return self.action.tool, args
        for message in reversed(self.messages or []):
            if message.role == "assistant" and message.tool_calls:
                call = message.tool_calls[0].function
                parsed = _loads_or_raw(call.arguments)
                return call.name, parsed if isinstance(parsed, dict) else {}
        return None


def _loads_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def deterministic_id(episode: Episode) -> str:
    """A stable id from agent, session, turn, model version and content: the same interaction always
    maps to one id, so a retried batch makes no duplicate.

    Without a turn, the sender's timestamp is part of it too: the same question asked twice in a
    session (or answered by two model versions) is two episodes, not a duplicate. So is it when
    redaction replaced part of the session id (it held an email, say): the sessions of two users
    then look alike, and one user's turn 0 is not another's. A timestamp the sender did not give
    (stamped at parsing) is not, or a resent batch would get new ids. The id is a hash of what the
    store keeps either way, so it can be checked from the stored episode."""
    content = {
        "agentId": episode.agent_id,
        "sessionId": episode.session_id,
        "turn": episode.turn,
        "modelVersion": episode.model_version,
        "state": episode.state.model_dump(mode="json", by_alias=True),
        "action": episode.action.model_dump(mode="json", by_alias=True) if episode.action else None,
        "messages": [m.model_dump(mode="json", by_alias=True) for m in episode.messages or []],
        "result": episode.result,
    }
    session_redacted = episode.session_id is not None and REDACTED_PREFIX in episode.session_id
    if (episode.turn is None or session_redacted) and episode._timestamp_given:
        content["timestamp"] = episode.timestamp.isoformat()
    try:
        # orjson: the collector derives an id for every episode a capture client sends (clients send
        # none), and json.dumps twice was most of an episode's cost there
        text = orjson.dumps(content, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    except TypeError:  # integers over 64 bits, keys of mixed types: the slower, more lenient way
        # Round-trip through JSON first: non-string keys become strings, and sort_keys cannot
        # order mixed key types.
        canonical = json.loads(json.dumps(content, ensure_ascii=False, default=str))
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return f"ep-{hashlib.sha256(text).hexdigest()[:32]}"


def parse_episode(data: Mapping[str, Any]) -> Episode:
    """Validate one episode from its JSON form (raises ``pydantic.ValidationError``)."""
    return Episode.model_validate(data)


def validation_reason(exc: Exception) -> str:
    """A one-line reason naming the fields that were wrong, for collector responses and CLI errors."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ())) or "(episode)"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return "; ".join(parts)
    return str(exc)


#: the values of an env flag (``USE_TUNED_MODEL``, ``ENABLE_EPISODE_CAPTURE``) that mean "on"
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def model_version_from_env(
    env: Mapping[str, str | None],
    *,
    use_tuned_model: str = constants.ENV_USE_TUNED_MODEL,
    tuned_model_name: str = constants.ENV_TUNED_MODEL_NAME,
) -> str | None:
    """The model version an agent with this env serves, as its episodes record it: the tuned model's
    name when ``use_tuned_model`` is on (1, true, yes or on) and that name is set, else
    ``MODEL_NAME``; None when neither says. The capture client reads it from the process env; a
    promotion reads it from the container's env before switching, where a value of None stands for
    a variable set from a ConfigMap or Secret: a version that depends on one is not known (None)."""
    flag = env.get(use_tuned_model, "")
    if flag is None:
        return None
    if flag.strip().lower() in TRUE_VALUES:
        tuned = env.get(tuned_model_name, "")
        if tuned is None:
            return None
        if tuned.strip():
            return tuned.strip()
    base = env.get(constants.ENV_MODEL_NAME, "")
    if base is None:
        return None
    return base.strip() or None
