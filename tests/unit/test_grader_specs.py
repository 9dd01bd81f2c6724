"""Grader specs: loading, validation errors that name the field, versions, OpenAI JSON import/export.

Covers:
- every grader type loads from a YAML file, a JSON file, inline text and a dict; ``{"grader": ...}``
  wrappers; presets by name and with overrides;
- bad specs are rejected with ``field.path: problem`` messages (typos, bad templates, formulas,
  schemas, regexes, python code, inline secrets, unknown types and presets);
- ``grader_version`` is a short hash that ignores key order and explicit defaults, and follows a
  python grader file's code;
- OpenAI grader JSON round-trips unchanged for every type OpenAI has; our extensions are dropped on
  export and our own types are refused with the path;
- the JSON Schema of a spec is plain JSON (for the CRDs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_op import graders
from lightning_op.graders import spec as spec_mod

STRING_CHECK = {
    "type": "string_check",
    "name": "city",
    "input": "{{sample.output_text}}",
    "reference": "{{item.state.context.city}}",
    "operation": "ilike",
}
TEXT_SIMILARITY = {
    "type": "text_similarity",
    "name": "answer",
    "input": "{{sample.output_text}}",
    "reference": "{{item.state.context.expected_output}}",
    "evaluation_metric": "rouge_l",
    "pass_threshold": 0.6,
}
SCORE_MODEL = {
    "type": "score_model",
    "name": "judge",
    "model": "gpt-4o-mini",
    "input": [
        {"role": "system", "content": "You grade answers."},
        {"role": "user", "content": "Q: {{item.state.query}}\nA: {{sample.output_text}}", "type": "message"},
    ],
    "range": [0, 10],
    "pass_threshold": 7,
    "sampling_params": {"temperature": 0, "seed": 7, "max_completions_tokens": 200},
}
LABEL_MODEL = {
    "type": "label_model",
    "name": "sentiment",
    "model": "gpt-4o-mini",
    "input": [{"role": "user", "content": "Classify: {{sample.output_text}}"}],
    "labels": ["positive", "neutral", "negative"],
    "passing_labels": ["positive"],
}
PYTHON = {
    "type": "python",
    "name": "py",
    "source": "def grade(sample, item):\n    return 1.0 if sample['output_text'] else 0.0\n",
    "image_tag": "2025-05-08",
}
MULTI = {
    "type": "multi",
    "name": "combined",
    "graders": {"city": STRING_CHECK, "answer": TEXT_SIMILARITY},
    "calculate_output": "0.5 * city + 0.5 * answer",
}
TOOL_CALL = {
    "type": "tool_call",
    "name": "tool",
    "reference": [{"contains": ["weather"], "tool": "get_weather", "arguments": {"city": "Paris"}}],
    "wrong_arguments_score": 0.25,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "name": "fmt",
    "schema": {"type": "object", "required": ["tool"], "properties": {"tool": {"type": "string"}}},
}
ALL_TYPES = {
    "string_check": STRING_CHECK,
    "text_similarity": TEXT_SIMILARITY,
    "score_model": SCORE_MODEL,
    "label_model": LABEL_MODEL,
    "python": PYTHON,
    "multi": MULTI,
    "tool_call": TOOL_CALL,
    "json_schema": JSON_SCHEMA,
}
OPENAI_TYPES = ["string_check", "text_similarity", "score_model", "label_model", "python", "multi"]


@pytest.mark.parametrize("kind", list(ALL_TYPES), ids=list(ALL_TYPES))
@pytest.mark.parametrize("suffix", [".yaml", ".json"], ids=["yaml", "json"])
def test_every_type_loads_from_a_file(tmp_path: Path, kind: str, suffix: str) -> None:
    data = ALL_TYPES[kind]
    path = tmp_path / f"grader{suffix}"
    path.write_text(yaml.safe_dump(data) if suffix == ".yaml" else json.dumps(data))
    loaded = graders.load_grader_spec(path)
    assert loaded.type == kind
    assert graders.load_grader_spec(str(path)) == loaded
    assert graders.load_grader_spec(data) == loaded


def test_inline_text_and_wrapped_specs_load() -> None:
    assert graders.load_grader_spec(json.dumps(STRING_CHECK)).type == "string_check"
    assert graders.load_grader_spec(yaml.safe_dump(JSON_SCHEMA)).type == "json_schema"
    assert graders.load_grader_spec({"grader": TOOL_CALL}).type == "tool_call"


@pytest.mark.parametrize("name", ["tool_selection", "exact_match", "task_adherence"], ids=str)
def test_presets_load_by_name(name: str) -> None:
    loaded = graders.load_grader_spec(name)
    assert loaded.name == name
    assert name in graders.PRESETS


def test_preset_overrides_apply_and_are_validated() -> None:
    loaded = graders.load_grader_spec(
        {"preset": "tool_selection", "reference": [{"query": "weather in Paris", "tool": "get_weather"}]}
    )
    assert isinstance(loaded, spec_mod.ToolCallSpec)
    assert loaded.reference[0].tool == "get_weather"
    assert loaded.check_arguments is False
    with pytest.raises(graders.GraderSpecError, match="referense: unknown field"):
        graders.load_grader_spec({"preset": "tool_selection", "referense": []})
    with pytest.raises(graders.GraderSpecError, match="preset: unknown preset 'tool_choice'"):
        graders.load_grader_spec({"preset": "tool_choice"})
    with pytest.raises(graders.GraderSpecError, match="not a preset"):
        graders.load_grader_spec("tool_choice")


BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("typo", {**STRING_CHECK, "opration": "eq"}, "opration: unknown field; allowed: input, name, operation"),
    ("missing-type", {"input": "x"}, "type: missing; one of string_check"),
    ("unknown-type", {"type": "string_chek"}, "type: 'string_chek' is not a grader type"),
    ("bad-operation", {**STRING_CHECK, "operation": "contains"}, "operation: Input should be 'eq'"),
    ("missing-field", {"type": "string_check", "input": "a", "operation": "eq"}, "reference: required"),
    (
        "bad-namespace",
        {**STRING_CHECK, "input": "{{output.text}}"},
        "input: '{{output.text}}': unknown namespace",
    ),
    ("bad-sample-field", {**STRING_CHECK, "input": "{{sample.text}}"}, "sample has no field 'text'"),
    (
        "bad-episode-field",
        {**STRING_CHECK, "reference": "{{episode.stat.query}}"},
        "an episode has no field 'stat'",
    ),
    ("unclosed", {**STRING_CHECK, "input": "{{sample.output_text"}, "unclosed '{{'"),
    ("not-a-path", {**STRING_CHECK, "input": "{{ 1 + 1 }}"}, "is not a path"),
    (
        "formula-unknown-name",
        {"type": "multi", "graders": {"tool": TOOL_CALL}, "calculate_output": "tool + foo"},
        "calculate_output: name 'foo' is not a grader (graders: tool)",
    ),
    (
        "nested-formula",
        {
            "type": "multi",
            "graders": {"tool": {**MULTI, "calculate_output": "city + foo"}},
            "calculate_output": "tool",
        },
        "graders.tool.calculate_output: name 'foo' is not a grader",
    ),
    (
        "formula-attribute",
        {"type": "multi", "graders": {"tool": TOOL_CALL}, "calculate_output": "tool.__class__"},
        "calculate_output: Attribute is not allowed",
    ),
    (
        "formula-call",
        {"type": "multi", "graders": {"tool": TOOL_CALL}, "calculate_output": "__import__('os')"},
        "calculate_output: function '__import__' is not allowed",
    ),
    (
        "formula-syntax",
        {"type": "multi", "graders": {"tool": TOOL_CALL}, "calculate_output": "tool +"},
        "calculate_output: invalid syntax",
    ),
    (
        "grader-key",
        {"type": "multi", "graders": {"my-tool": TOOL_CALL}, "calculate_output": "1"},
        "graders: grader name 'my-tool' cannot be used",
    ),
    (
        "nested-typo",
        {**MULTI, "graders": {"city": {**STRING_CHECK, "refrence": "x"}}},
        "graders.city.refrence",
    ),
    (
        "cosine",
        {**TEXT_SIMILARITY, "evaluation_metric": "cosine"},
        "evaluation_metric: 'cosine' needs an embeddings",
    ),
    (
        "threshold",
        {**TEXT_SIMILARITY, "pass_threshold": 2},
        "pass_threshold: Input should be less than or equal",
    ),
    ("schema", {**JSON_SCHEMA, "schema": {"type": "objekt"}}, "schema: not a valid JSON Schema"),
    (
        "regex",
        {**TOOL_CALL, "reference": [{"pattern": "(", "tool": "x"}]},
        "reference.0.pattern: invalid regular",
    ),
    ("matchers", {**TOOL_CALL, "reference": [{"tool": "x"}]}, "reference.0: give exactly one of query"),
    ("range", {**SCORE_MODEL, "range": [10, 0]}, "range: range must be [min, max]"),
    (
        "passing-labels",
        {**LABEL_MODEL, "passing_labels": ["great"]},
        "passing_labels ['great'] are not in labels",
    ),
    ("inline-secret", {**SCORE_MODEL, "api_key": "sk-123"}, "api_key: secrets are never written"),
    ("env-name", {**SCORE_MODEL, "api_key_env": "my key"}, "api_key_env: String should match pattern"),
    ("role", {**SCORE_MODEL, "input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
    (
        "sampling-typo",
        {**SCORE_MODEL, "sampling_params": {"temprature": 0}},
        "sampling_params.temprature: unknown",
    ),
    ("python-syntax", {**PYTHON, "source": "def grade(:\n"}, "source: syntax error at line 1"),
    ("python-no-grade", {**PYTHON, "source": "def score(s, i):\n    return 1\n"}, "source: defines no grade"),
    ("python-both", {**PYTHON, "file": "g.py"}, "give exactly one of source (inline code) or file"),
    (
        "python-limits",
        {**PYTHON, "limits": {"cpu_seconds": 0}},
        "limits.cpu_seconds: Input should be greater",
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [(d, e) for _, d, e in BAD_SPECS], ids=[i for i, _, _ in BAD_SPECS]
)
def test_bad_specs_are_rejected_naming_the_field(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(graders.GraderSpecError) as info:
        graders.load_grader_spec(data)
    assert expected in str(info.value)


def test_a_bad_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "grader.yaml"
    path.write_text("type: string_check\ninput: x\nreference: y\noperation: eq\nnmae: z\n")
    with pytest.raises(graders.GraderSpecError, match=rf"grader {path}: nmae: unknown field"):
        graders.load_grader_spec(path)
    path.write_text("type: [unclosed\n")
    with pytest.raises(graders.GraderSpecError, match="not valid YAML"):
        graders.load_grader_spec(path)
    with pytest.raises(graders.GraderSpecError, match="no such file"):
        graders.load_grader_spec(tmp_path / "absent.yaml")


def test_python_file_is_resolved_next_to_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "my_grader.py").write_text("def grade(sample, item):\n    return 0.5\n")
    path = tmp_path / "grader.yaml"
    path.write_text("type: python\nname: mine\nfile: code/my_grader.py\n")
    loaded = graders.load_grader_spec(path)
    assert isinstance(loaded, spec_mod.PythonSpec)
    assert loaded.file == str((tmp_path / "code" / "my_grader.py").resolve())
    path.write_text("type: python\nfile: code/missing.py\n")
    with pytest.raises(graders.GraderSpecError, match="file: cannot read"):
        graders.load_grader_spec(path)


@pytest.mark.parametrize("kind", OPENAI_TYPES, ids=OPENAI_TYPES)
def test_openai_grader_json_round_trips_unchanged(kind: str) -> None:
    data = json.loads(json.dumps(ALL_TYPES[kind]))
    assert graders.export_openai(graders.load_grader_spec(data)) == data


def test_export_drops_our_extensions_and_inlines_python_files(tmp_path: Path) -> None:
    judge = {**SCORE_MODEL, "base_url": "http://judge:8000/v1", "api_key_env": "JUDGE_KEY", "timeout_s": 5}
    assert graders.export_openai(graders.load_grader_spec(judge)) == SCORE_MODEL
    code = "def grade(sample, item):\n    return 1\n"
    (tmp_path / "g.py").write_text(code)
    exported = graders.export_openai(
        graders.load_grader_spec({"type": "python", "file": str(tmp_path / "g.py")})
    )
    assert exported == {"type": "python", "name": "python", "source": code}


def test_export_refuses_types_openai_does_not_have() -> None:
    with pytest.raises(
        graders.GraderSpecError, match="graders.tool.type: 'tool_call' has no OpenAI equivalent"
    ):
        graders.export_openai(
            graders.load_grader_spec(
                {"type": "multi", "graders": {"tool": TOOL_CALL}, "calculate_output": "tool"}
            )
        )


def test_version_is_a_short_hash_of_the_canonical_spec() -> None:
    version = graders.grader_version(graders.load_grader_spec(STRING_CHECK))
    assert len(version) == 12 and int(version, 16) >= 0
    reordered = dict(reversed(list(STRING_CHECK.items())))
    assert graders.grader_version(graders.load_grader_spec(reordered)) == version
    changed = {**STRING_CHECK, "operation": "like"}
    assert graders.grader_version(graders.load_grader_spec(changed)) != version
    explicit_defaults = {**TOOL_CALL, "check_arguments": True, "case_sensitive": False}
    assert graders.grader_version(graders.load_grader_spec(explicit_defaults)) == graders.grader_version(
        graders.load_grader_spec(TOOL_CALL)
    )


def test_version_follows_the_python_file_code(tmp_path: Path) -> None:
    code = tmp_path / "g.py"
    code.write_text("def grade(sample, item):\n    return 1\n")
    loaded = graders.load_grader_spec({"type": "python", "file": str(code)})
    before = graders.grader_version(loaded)
    code.write_text("def grade(sample, item):\n    return 0\n")
    assert graders.grader_version(loaded) != before


def test_built_grader_carries_name_and_version() -> None:
    loaded = graders.load_grader_spec(TOOL_CALL)
    grader = graders.build_grader(loaded)
    assert isinstance(grader, graders.Grader)
    assert (grader.name, grader.version) == ("tool", graders.grader_version(loaded))
    unnamed = graders.load_grader_spec({k: v for k, v in JSON_SCHEMA.items() if k != "name"})
    assert graders.build_grader(unnamed).name == "json_schema"


def test_spec_json_schema_is_plain_json() -> None:
    schema = graders.grader_json_schema()
    text = json.dumps(schema)
    assert '"discriminator"' in text or '"oneOf"' in text
    for kind in ALL_TYPES:
        assert kind in text
