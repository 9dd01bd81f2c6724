"""A small, safe renderer for ``{{ namespace.path.to.value }}`` templates in grader specs.

Graders see an episode through three namespaces:

- ``episode``: the :class:`~lightning_op.api.episode.Episode` (``{{episode.state.query}}``,
  ``{{episode.action.tool}}``, ``{{episode.state.context.expected_tool}}``,
  ``{{episode.messages[-1].content}}``);
- ``item``: the same episode, under the name OpenAI's grader JSON uses for the data row;
- ``sample``: the agent's output, as OpenAI defines it: ``output_text`` (``Episode.output_text()``),
  ``output_json`` (that text parsed as JSON, else null) and ``output_tools`` (the tool calls in chat format).

A path is dot-separated keys with optional ``[index]`` or ``["key"]`` parts; keys may be written in
snake_case or camelCase (``episode.agent_id`` = ``episode.agentId``). Nothing is executed: a template is
parsed once, at spec-load time, into literal text and paths, and rendering only walks attributes, dict
keys and list indices. The namespace and the episode field right after it are checked when the spec is
loaded, so ``{{episode.stat.query}}`` is a spec error; deeper, free-form parts (``state.context``,
``action.arguments``, ``result``) cannot be checked then.

Missing values: a path that leads nowhere on a given episode (or to null) renders as the empty string,
and the renderer reports which paths were missing, so a grader can decide: inputs (what is graded) render
empty, while a missing *reference* (what the input is compared with) makes the grading fail for that
episode with a reason, since a comparison with nothing would be a silent, wrong 0. Values render as
text: strings as they are, numbers and booleans as JSON (``10``, ``true``), objects and lists as JSON.

Used by the rule and judge graders (``rules``, ``judge``) through :class:`GradingContext`, which
computes each view of the episode at most once per grading (a ``multi`` grader shares one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from lightning_op.api import episode as ep

NAMESPACES = ("episode", "item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(
    r"""\s*(?:
        (?P<name>[A-Za-z_][A-Za-z0-9_\-]*|-?\d+(?![A-Za-z_]))
      | \[\s*(?P<index>-?\d+)\s*\]
      | \[\s*(?P<quote>["'])(?P<key>.*?)(?P=quote)\s*\]
    )""",
    re.VERBOSE,
)

#: a path segment: a key (str) or a list index (int)
Segment = str | int


class TemplateError(ValueError):
    """A template that cannot be parsed or names something graders never see."""


@dataclass(frozen=True)
class Path:
    namespace: str
    segments: tuple[Segment, ...]
    text: str

    def __str__(self) -> str:
        return "{{" + self.text + "}}"


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and paths, alternating."""

    source: str
    parts: tuple[str | Path, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p in self.parts if isinstance(p, Path))

    @property
    def single_path(self) -> Path | None:
        """The path when the template is exactly one placeholder (renders to the raw value)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Path):
            return self.parts[0]
        return None


def _parse_path(text: str) -> Path:
    stripped = text.strip()
    if not stripped:
        raise TemplateError("empty placeholder '{{}}'")
    segments: list[Segment] = []
    pos = 0
    first = True
    while pos < len(stripped):
        if not first:
            if stripped[pos] == ".":
                pos += 1
            elif stripped[pos] != "[":
                raise TemplateError(f"'{{{{{stripped}}}}}' is not a path (at {stripped[pos:]!r})")
        match = _SEGMENT.match(stripped, pos)
        if match is None or match.end() == pos:
            raise TemplateError(f"'{{{{{stripped}}}}}' is not a path (at {stripped[pos:]!r})")
        if match.group("name") is not None:
            segments.append(match.group("name"))
        elif match.group("index") is not None:
            segments.append(int(match.group("index")))
        else:
            segments.append(match.group("key"))
        pos = match.end()
        first = False
    namespace = segments[0]
    if namespace not in NAMESPACES:
        raise TemplateError(
            f"'{{{{{stripped}}}}}': unknown namespace {namespace!r}; use one of {', '.join(NAMESPACES)}"
        )
    rest = tuple(segments[1:])
    if not rest:
        if namespace == "sample":
            raise TemplateError(f"'{{{{{stripped}}}}}': name a field of sample: {', '.join(SAMPLE_FIELDS)}")
    elif namespace == "sample":
        if rest[0] not in SAMPLE_FIELDS:
            raise TemplateError(
                f"'{{{{{stripped}}}}}': sample has no field {rest[0]!r}; "
                f"use one of {', '.join(SAMPLE_FIELDS)}"
            )
    elif isinstance(rest[0], int) or _field_name(ep.Episode, rest[0]) is None:
        raise TemplateError(
            f"'{{{{{stripped}}}}}': an episode has no field {rest[0]!r}; use one of "
            f"{', '.join(sorted(_aliases(ep.Episode)))}"
        )
    return Path(namespace, rest, stripped)


@lru_cache(maxsize=4096)
def parse_template(source: str) -> Template:
    """Parse ``source`` once; raises :class:`TemplateError` naming the bad placeholder."""
    parts: list[str | Path] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(source):
        if match.start() > pos:
            parts.append(source[pos : match.start()])
        parts.append(_parse_path(match.group(1)))
        pos = match.end()
    tail = source[pos:]
    if "{{" in tail:
        raise TemplateError(f"unclosed '{{{{' in {source!r}")
    if tail:
        parts.append(tail)
    return Template(source, tuple(parts))


def check_template(source: str) -> str:
    """A pydantic validator helper: parse to raise early, return the source unchanged."""
    parse_template(source)
    return source


@lru_cache(maxsize=256)
def _aliases(model: type[BaseModel]) -> dict[str, str]:
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        names[name] = name
        if field.alias:
            names[field.alias] = name
    return names


def _field_name(model: type[BaseModel], key: str) -> str | None:
    return _aliases(model).get(key)


_MISSING = object()


def _step(value: Any, segment: Segment) -> Any:
    if value is None:
        return _MISSING
    if isinstance(value, BaseModel):
        if not isinstance(segment, str):
            return _MISSING
        name = _field_name(type(value), segment)
        return _MISSING if name is None else getattr(value, name)
    if isinstance(value, Mapping):
        if isinstance(segment, int):
            segment = str(segment)
        return value.get(segment, _MISSING)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        index: int | None = None
        if isinstance(segment, int):
            index = segment
        elif segment.lstrip("-").isdigit():
            index = int(segment)
        if index is None or not -len(value) <= index < len(value):
            return _MISSING
        return value[index]
    return _MISSING


def to_text(value: Any) -> str:
    """How a value appears inside rendered text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    elif isinstance(value, datetime):
        return value.isoformat()
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def to_plain(value: Any) -> Any:
    """A value as plain JSON data (models dumped), for comparisons and schema validation."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class GradingContext:
    """One episode as graders see it; each view is computed at most once.

    Construction is cheap: nothing is dumped or parsed until a template or grader asks for it.
    """

    __slots__ = ("episode", "_output_text", "_output_json", "_output_tools", "_item")

    def __init__(self, episode: ep.Episode) -> None:
        self.episode = episode
        self._output_text: str | None = None
        self._output_json: Any = _MISSING
        self._output_tools: list[dict[str, Any]] | None = None
        self._item: dict[str, Any] | None = None

    @property
    def output_text(self) -> str:
        if self._output_text is None:
            self._output_text = self.episode.output_text()
        return self._output_text

    @property
    def output_json(self) -> Any:
        if self._output_json is _MISSING:
            try:
                self._output_json = json.loads(self.output_text)
            except ValueError:
                self._output_json = None
        return self._output_json

    @property
    def output_tools(self) -> list[dict[str, Any]]:
        if self._output_tools is None:
            self._output_tools = _output_tools(self.episode)
        return self._output_tools

    @property
    def item(self) -> dict[str, Any]:
        """The episode as JSON (camelCase), as OpenAI's ``item`` and the python grader see it."""
        if self._item is None:
            self._item = self.episode.to_json_dict()
        return self._item

    def sample(self) -> dict[str, Any]:
        return {
            "output_text": self.output_text,
            "output_json": self.output_json,
            "output_tools": self.output_tools,
        }

    def resolve(self, path: Path) -> Any:
        """The value at ``path``, or ``None`` when it is missing on this episode."""
        value: Any
        segments = path.segments
        if path.namespace == "sample":
            if not segments:
                value = self.sample()
            else:
                head = segments[0]
                value = (
                    self.output_text
                    if head == "output_text"
                    else self.output_json
                    if head == "output_json"
                    else self.output_tools
                )
                segments = segments[1:]
        else:
            value = self.episode
        for segment in segments:
            value = _step(value, segment)
            if value is _MISSING:
                return None
        return value

    def render(self, template: Template) -> tuple[str, list[Path]]:
        """The rendered text and the paths that were missing (rendered empty)."""
        out: list[str] = []
        missing: list[Path] = []
        for part in template.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = self.resolve(part)
            if value is None:
                missing.append(part)
            else:
                out.append(to_text(value))
        return "".join(out), missing

    def render_value(self, template: Template) -> tuple[Any, list[Path]]:
        """Like :meth:`render`, but a template that is one placeholder gives the raw (plain) value."""
        single = template.single_path
        if single is None:
            return self.render(template)
        value = self.resolve(single)
        return to_plain(value), ([single] if value is None else [])


def _output_tools(episode: ep.Episode) -> list[dict[str, Any]]:
    # The same precedence as Episode.effective_tool_call(): the recorded action, else the last
    # assistant message that called tools.
    if episode.action is not None:
        return [
            {
                "id": "",
                "type": "function",
                "function": {
                    "name": episode.action.tool,
                    "arguments": json.dumps(episode.action.arguments, ensure_ascii=False),
                },
            }
        ]
    for message in reversed(episode.messages or []):
        if message.role == "assistant" and message.tool_calls:
            return [call.model_dump(mode="json") for call in message.tool_calls]
    return []


def missing_reason(what: str, missing: Sequence[Path]) -> str:
    return f"{what} {', '.join(str(p) for p in missing)} is missing on this episode"
