"""Checking a JSONL dataset before training (``datasets.validate``).

Covers: a good file passes; each kind of bad line (not JSON, not an object, no messages, wrong role,
assistant turn missing, malformed tool calls, dangling tool results, blank lines) is reported with its
line number while the good lines around it still count; the error list is capped but the count is
not; an empty file is invalid; the one-line summary and ``raise_if_invalid`` name the lines; the
sha256 re-check notices a changed or missing file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lightning_op.datasets import build, validate

GOOD = {
    "messages": [
        {"role": "system", "content": "Pick a tool."},
        {"role": "user", "content": "weather in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
    ]
}


def call(**function: object) -> dict[str, object]:
    return {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{}", **function}}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("{not json", "not JSON", id="not-json"),
        pytest.param("[1, 2]", "a row must be a JSON object", id="not-object"),
        pytest.param('{"prompt": "x"}', "no 'messages' key", id="no-messages"),
        pytest.param('{"messages": []}', "'messages' must be a non-empty list", id="empty-messages"),
        pytest.param(
            json.dumps({"messages": [{"role": "human", "content": "hi"}]}),
            "has role 'human'",
            id="wrong-role",
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
            "assistant turn missing",
            id="no-assistant",
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}),
            "messages[0].content must be a string",
            id="content-number",
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}),
            "neither content nor tool_calls",
            id="empty-assistant",
        ),
        pytest.param(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "tool_calls": [call(arguments={"a": 1})]},
                    ]
                }
            ),
            "arguments must be a JSON object as a string",
            id="arguments-not-string",
        ),
        pytest.param(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "tool_calls": [call(arguments="{oops")]},
                    ]
                }
            ),
            "arguments is not valid JSON",
            id="arguments-bad-json",
        ),
        pytest.param(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "tool_calls": [call(name="")]},
                    ]
                }
            ),
            "function.name is missing",
            id="tool-name-missing",
        ),
        pytest.param(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "tool_calls": [{**call(), "type": "code"}]},
                    ]
                }
            ),
            "type must be 'function'",
            id="tool-type",
        ),
        pytest.param(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "tool", "tool_call_id": "call_9", "content": "r"},
                        {"role": "assistant", "content": "x"},
                    ]
                }
            ),
            "answers no earlier tool call",
            id="dangling-tool-result",
        ),
        pytest.param("   ", "empty line", id="blank-line"),
    ],
)
def test_bad_line_is_reported_with_its_line_number(tmp_path: Path, line: str, expected: str) -> None:
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])

    report = validate.validate_dataset(path)

    assert not report.ok
    assert report.rows == 2
    assert [e.line for e in report.errors] == [2]
    assert expected in report.errors[0].message
    assert "line 2:" in report.summary()


def test_good_file_passes_and_counts_rows_and_tokens(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(GOOD)] * 3)

    report = validate.validate_dataset(path)

    assert report.ok
    assert (report.lines, report.rows) == (3, 3)
    assert report.tokens == 3 * build.estimate_tokens(json.dumps(GOOD).encode())
    report.raise_if_invalid()


def test_errors_are_capped_but_all_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", ["nope"] * 30)

    report = validate.validate_dataset(path, max_errors=5)

    assert report.error_count == 30
    assert [e.line for e in report.errors] == [1, 2, 3, 4, 5]
    with pytest.raises(validate.DatasetInvalidError, match=r"30 bad lines of 30 \(line 1: .*and 27 more"):
        report.raise_if_invalid()


def test_empty_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")

    assert "empty" in validate.validate_dataset(path).summary()


def test_verify_files_notices_changed_and_missing_files(tmp_path: Path) -> None:
    train = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD)])
    stats = build.DatasetStats(
        name="d",
        agent_id="bot",
        path=str(train),
        sha256=validate.file_sha256(train),
        bytes=0,
        episodes=1,
        train_episodes=1,
        validation_episodes=0,
        tokens=1,
        avg_reward=1.0,
        min_reward=1.0,
        max_reward=1.0,
        scanned=1,
        duplicates_removed=0,
        created=datetime.now(UTC),
        validation_path=str(tmp_path / "gone.jsonl"),
        validation_sha256="0" * 64,
    )
    assert validate.verify_files(stats) == [f"{tmp_path / 'gone.jsonl'} is missing"]

    with open(train, "a") as handle:
        handle.write(json.dumps(GOOD) + "\n")

    problems = validate.verify_files(stats)
    assert any("changed since it was built" in p for p in problems)
