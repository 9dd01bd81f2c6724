"""Check a chat-format JSONL dataset line by line, and re-check a built dataset's sha256.

The trainer calls ``validate_dataset`` before it spends GPU time, and ``dataset-info`` uses
``verify_files`` to tell whether a dataset file changed since ``datasets.build`` wrote it. Both stream
the file, so they work on datasets of any size. This module reads files only; no store, no model.

A valid row is ``{"messages": [...]}`` where every message is an object with a ``role`` among
``system``, ``developer``, ``user``, ``assistant``, ``tool``; non-assistant messages have string
``content``; an assistant message has string content or ``tool_calls`` (a list of ``{"id": str,
"type": "function", "function": {"name": str, "arguments": "<JSON object as a string>"}}``); a ``tool``
message has a ``tool_call_id`` answering an earlier call; the row has a user message and an assistant
turn. A row may also carry OpenAI's optional ``tools`` list (function definitions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from lightning_op.datasets import build, rows


class DatasetInvalidError(ValueError):
    """The dataset file has bad lines; the message names the first few with their line numbers."""


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ValidationReport:
    """The result of ``validate_dataset``. ``errors`` holds at most ``max_errors`` entries;
    ``error_count`` counts them all."""

    path: str
    lines: int = 0
    rows: int = 0
    tokens: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self, limit: int = 3) -> str:
        """One line: ``PATH: 2 bad lines of 10 (line 3: ...; line 7: ...)``, or that it is valid."""
        if self.ok:
            return f"{self.path}: {self.rows} valid rows"
        shown = "; ".join(str(e) for e in self.errors[:limit])
        more = f"; and {self.error_count - limit} more" if self.error_count > limit else ""
        return f"{self.path}: {self.error_count} bad lines of {self.lines} ({shown}{more})"

    def raise_if_invalid(self) -> None:
        if not self.ok:
            raise DatasetInvalidError(
                f"dataset {self.summary()}: fix those lines or rebuild with build-dataset"
            )

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "valid": self.ok,
            "lines": self.lines,
            "rows": self.rows,
            "tokens": self.tokens,
            "errorCount": self.error_count,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
        }


def validate_dataset(path: Path | str, *, max_errors: int = 50) -> ValidationReport:
    """Check every line of a JSONL dataset; raises ``OSError`` only when the file cannot be read.

    ``tokens`` is the same estimate ``build`` records, over the valid rows.
    """
    path = Path(path)
    report = ValidationReport(path=str(path))
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            report.lines = number
            line = raw.rstrip(b"\r\n")
            problem = _line_problem(line)
            if problem is None:
                report.rows += 1
                report.tokens += build.estimate_tokens(line)
                continue
            report.error_count += 1
            if len(report.errors) < max_errors:
                report.errors.append(LineError(number, problem))
    if report.lines == 0:
        report.error_count = 1
        report.errors.append(LineError(1, "the file is empty: a dataset needs at least one row"))
    return report


def validate_row(row: Any) -> str | None:
    """What is wrong with one parsed row, or ``None`` when it is valid."""
    if not isinstance(row, Mapping):
        return f"a row must be a JSON object, got {_kind(row)}"
    messages = row.get("messages")
    if messages is None:
        return "no 'messages' key"
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    tools = row.get("tools")
    if tools is not None:
        problem = _tools_problem(tools)
        if problem:
            return problem
    has_user = has_assistant = False
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            return f"{where} must be an object, got {_kind(message)}"
        role = message.get("role")
        if role not in rows.ROLES:
            return f"{where} has role {role!r}: use one of {', '.join(sorted(rows.ROLES))}"
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            return f"{where}.content must be a string, got {_kind(content)}"
        calls = message.get("tool_calls")
        if role == "assistant":
            if calls is not None:
                problem = _tool_calls_problem(calls, where, call_ids)
                if problem:
                    return problem
            if not content and not calls:
                return f"{where}: assistant message has neither content nor tool_calls"
            has_assistant = True
            continue
        if calls is not None:
            return f"{where}: only assistant messages may have tool_calls, not {role}"
        if content is None:
            return f"{where}: {role} message has no content"
        if role == "user":
            has_user = True
        if role == "tool":
            reference = message.get("tool_call_id")
            if not isinstance(reference, str) or not reference:
                return f"{where}: tool message has no tool_call_id"
            if reference not in call_ids:
                return f"{where}: tool_call_id {reference!r} answers no earlier tool call"
    if not has_user:
        return "no user message"
    if not has_assistant:
        return "assistant turn missing: a row needs an assistant message to learn from"
    return None


def file_sha256(path: Path | str) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(stats: build.DatasetStats) -> list[str]:
    """Problems with a built dataset's files now: missing, or bytes that no longer match the sha256."""
    problems = []
    pairs = [(stats.path, stats.sha256)]
    if stats.validation_path and stats.validation_sha256:
        pairs.append((stats.validation_path, stats.validation_sha256))
    for path, expected in pairs:
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        except OSError as exc:
            problems.append(f"{path} cannot be read ({exc.strerror or exc})")
            continue
        if actual != expected:
            problems.append(
                f"{path} changed since it was built (sha256 {actual[:12]}..., recorded {expected[:12]}...)"
            )
    return problems


def _line_problem(line: bytes) -> str | None:
    if not line.strip():
        return "empty line: every line must be one JSON row"
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    return validate_row(row)


def _tools_problem(tools: Any) -> str | None:
    """The optional row-level tool definitions OpenAI's format allows."""
    if not isinstance(tools, list):
        return f"'tools' must be a list of tool definitions, got {_kind(tools)}"
    for number, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            return f"tools[{number}] must be an object, got {_kind(tool)}"
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, Mapping):
            return f"tools[{number}] must be {{'type': 'function', 'function': {{'name': ...}}}}"
        if not isinstance(function.get("name"), str) or not function.get("name"):
            return f"tools[{number}].function.name is missing"
    return None


def _tool_calls_problem(calls: Any, where: str, call_ids: set[str]) -> str | None:
    if not isinstance(calls, list) or not calls:
        return f"{where}.tool_calls must be a non-empty list"
    for number, call in enumerate(calls):
        at = f"{where}.tool_calls[{number}]"
        if not isinstance(call, Mapping):
            return f"{at} must be an object, got {_kind(call)}"
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            return f"{at} has no id"
        if call.get("type") != "function":
            return f"{at}.type must be 'function', got {call.get('type')!r}"
        function = call.get("function")
        if not isinstance(function, Mapping):
            return f"{at}.function must be an object with name and arguments"
        name = function.get("name")
        if not isinstance(name, str) or not name:
            return f"{at}.function.name is missing"
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            return f"{at}.function.arguments must be a JSON object as a string, got {_kind(arguments)}"
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return f"{at}.function.arguments is not valid JSON"
        if not isinstance(parsed, dict):
            return f"{at}.function.arguments must encode a JSON object, got {_kind(parsed)}"
        call_ids.add(call_id)
    return None


_KINDS: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _KINDS.get(type(value), type(value).__name__)
