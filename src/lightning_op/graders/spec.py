"""Grader specs: the pydantic models of every grader type, how they load, hash and export.

A spec is plain JSON data (embedded later in the RewardLabeling and FineTuneJob CRDs, read by the CLI
from YAML or JSON files): a union discriminated by ``type``. The types OpenAI defines keep OpenAI's
field names and meaning (``string_check``, ``text_similarity``, ``score_model``, ``label_model``,
``python``, ``multi``), so OpenAI grader JSON loads as is and :func:`export_openai` gives it back
unchanged; ``tool_call`` and ``json_schema`` are ours. Field names are snake_case everywhere, as in
OpenAI's JSON, even inside camelCase CRDs.

Every model forbids unknown fields, so a typo is an error that names the field; templates
(``templates``) and formulas (``expr``) are parsed here, at load time, so a bad placeholder or a
forbidden formula is rejected before any episode is graded. Errors come out as one
:class:`GraderSpecError` whose message lists ``path: problem`` for each, e.g.
``graders.tool.calculate_output: name 'foo' is not a grader (graders: fmt, tool)``.

Secrets are never inlined: a judge names the environment variable that holds its API key
(``api_key_env``); an ``api_key`` field is refused. The builders (``build``) turn a spec into a grader.
"""

from __future__ import annotations

import ast
import hashlib
import json
import keyword
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import jsonschema.exceptions
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lightning_op.graders import expr, presets, templates

MAX_SPEC_BYTES = 1024 * 1024
MAX_MULTI_DEPTH = 4
VERSION_CHARS = 12

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
GraderName = Annotated[str, Field(min_length=1, max_length=128)]


class GraderSpecError(ValueError):
    """A grader spec that cannot be used; ``problems`` holds ``(field path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"grader {source}: " if source else ""
        super().__init__(where + "; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _template(value: str) -> str:
    try:
        return templates.check_template(value)
    except templates.TemplateError as exc:
        raise ValueError(str(exc)) from None


#: a string with ``{{ namespace.path }}`` placeholders, parsed (and so checked) at load time
TemplateText = Annotated[str, Field(max_length=65_536), AfterValidator(_template)]


# --- rule graders ---------------------------------------------------------------------------------


class StringCheckSpec(_Spec):
    """OpenAI's ``string_check``: 1 when ``input`` <operation> ``reference`` holds, else 0.

    ``eq``/``ne`` compare exactly (case-sensitive); ``like`` is "input contains reference"
    (case-sensitive), ``ilike`` the same ignoring case.
    """

    type: Literal["string_check"]
    name: GraderName | None = None
    input: TemplateText
    reference: TemplateText
    operation: Literal["eq", "ne", "like", "ilike"]


SimilarityMetric = Literal[
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
    "cosine",
]


class TextSimilaritySpec(_Spec):
    """OpenAI's ``text_similarity``: the metric's value in [0, 1] is the score.

    ``pass_threshold`` (optional) only marks the reason as pass/fail, as in OpenAI's evals.
    ``cosine`` (needs an embeddings model) is recognised but refused.
    """

    type: Literal["text_similarity"]
    name: GraderName | None = None
    input: TemplateText
    reference: TemplateText
    evaluation_metric: SimilarityMetric
    pass_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    @field_validator("evaluation_metric")
    @classmethod
    def _no_cosine(cls, value: str) -> str:
        if value == "cosine":
            raise ValueError(
                "'cosine' needs an embeddings model and is not supported here; use fuzzy_match, bleu, "
                "gleu, meteor, rouge_1..rouge_5 or rouge_l, or a score_model judge"
            )
        return value


class ReferenceEntry(_Spec):
    """One row of a ``tool_call`` reference table: a query matcher and the expected call.

    Exactly one matcher: ``query`` (the whole query, ignoring case and surrounding space),
    ``contains`` (any of these keywords, ignoring case) or ``pattern`` (a regular expression searched
    in the query, ignoring case). Rows are tried in order; the first that matches wins.
    """

    query: str | None = None
    contains: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    pattern: str | None = None
    tool: GraderName
    arguments: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_matcher(self) -> ReferenceEntry:
        given = [n for n in ("query", "contains", "pattern") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of query, contains, pattern (got {', '.join(given) or 'none'})"
            )
        return self

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class ToolCallSpec(_Spec):
    """Ours: the episode's tool call (``Episode.effective_tool_call()``) against the expected one.

    The expected tool comes from ``expected_tool`` (a template; by default the convention
    ``episode.state.context.expected_tool``, which the demo agent records), else from the first
    ``reference`` row that matches the query. Expected arguments likewise (``expected_arguments``, a
    template rendering a JSON object, else the reference row's ``arguments``); expected arguments are a
    subset the call must contain (``argument_match: exact`` for exactly those keys).

    Scores: wrong tool or no tool call 0; right tool with all expected arguments 1; right tool with
    wrong arguments ``wrong_arguments_score`` (``argument_scoring: proportional`` scales from there up
    to 1 by the share of expected arguments that match). Strings compare ignoring case and surrounding
    space unless ``case_sensitive``; with ``coerce_types`` ``"10"`` equals ``10`` and ``"true"`` equals
    ``true``. An episode with no expected tool is a failed grading (``missing_expected: error``) or 0.
    """

    type: Literal["tool_call"]
    name: GraderName | None = None
    expected_tool: TemplateText = "{{episode.state.context.expected_tool}}"
    expected_arguments: TemplateText | None = "{{episode.state.context.expected_arguments}}"
    query: TemplateText = "{{episode.state.query}}"
    reference: Annotated[list[ReferenceEntry], Field(max_length=10_000)] = Field(default_factory=list)
    check_arguments: bool = True
    argument_match: Literal["subset", "exact"] = "subset"
    argument_scoring: Literal["all_or_nothing", "proportional"] = "all_or_nothing"
    wrong_arguments_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    case_sensitive: bool = False
    coerce_types: bool = True
    missing_expected: Literal["error", "zero"] = "error"


class JsonSchemaSpec(_Spec):
    """Ours: 1 when ``input`` (by default the agent's output text, parsed as JSON; a template that is a
    single placeholder of an object is used as the object) validates against ``schema``, else 0.
    A fenced ```json block is unwrapped first."""

    type: Literal["json_schema"]
    name: GraderName | None = None
    input: TemplateText = "{{sample.output_text}}"
    schema_: dict[str, Any] = Field(alias="schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        validator = jsonschema.validators.validator_for(value, default=jsonschema.Draft202012Validator)
        try:
            validator.check_schema(value)
        except jsonschema.exceptions.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise ValueError(
                f"not a valid JSON Schema{' at ' + where if where else ''}: {exc.message}"
            ) from None
        return value


# --- LLM judges ------------------------------------------------------------------------------------


class InputText(_Spec):
    """OpenAI's structured content part (``input_text`` / ``output_text``) with a template."""

    type: Literal["input_text", "output_text"]
    text: TemplateText


class JudgeMessage(_Spec):
    """One message of the judge's prompt (OpenAI's ``input`` item); ``content`` is a template."""

    role: Literal["system", "developer", "user", "assistant"]
    content: TemplateText | InputText
    type: Literal["message"] | None = None


class SamplingParams(_Spec):
    """OpenAI's ``sampling_params``. Temperature defaults to 0 when not given."""

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    seed: int | None = None
    max_completions_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


class AzureSpec(_Spec):
    """Azure OpenAI: the endpoint (or the env var holding it), the deployment and the API version."""

    endpoint: str | None = None
    endpoint_env: EnvName = "AZURE_OPENAI_ENDPOINT"
    deployment: GraderName | None = None
    api_version: Annotated[str, Field(min_length=1, max_length=64)]


class _JudgeSpec(_Spec):
    name: GraderName | None = None
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: Annotated[list[JudgeMessage], Field(min_length=1, max_length=64)]
    sampling_params: SamplingParams | None = None
    # Ours (dropped by export_openai): where the judge is and how to reach it.
    base_url: str | None = None
    base_url_env: EnvName | None = None
    api_key_env: EnvName | None = None
    model_env: EnvName | None = None
    azure: AzureSpec | None = None
    timeout_s: Annotated[float, Field(gt=0.0, le=600.0)] = 60.0
    format_instructions: bool = True

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in ("api_key", "apiKey", "key", "token"):
                if key in data:
                    raise ValueError(
                        f"{key}: secrets are never written in a grader spec; put the key in an "
                        "environment variable (from a Secret) and name it in api_key_env"
                    )
        return data


class ScoreModelSpec(_JudgeSpec):
    """OpenAI's ``score_model``: the judge answers a number in ``range`` (default [0, 1]), normalised to
    [0, 1]. ``pass_threshold`` (in range units, optional) only marks the reason as pass/fail."""

    type: Literal["score_model"]
    range: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    pass_threshold: float | None = None

    @field_validator("range")
    @classmethod
    def _range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"range must be [min, max] with min < max, got {value}")
        return value

    @property
    def score_range(self) -> tuple[float, float]:
        return (self.range[0], self.range[1]) if self.range else (0.0, 1.0)


class LabelModelSpec(_JudgeSpec):
    """OpenAI's ``label_model``: the judge picks one of ``labels``; 1 if it is a passing label, else 0."""

    type: Literal["label_model"]
    labels: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=256)]
    passing_labels: Annotated[list[str], Field(min_length=1)]

    @model_validator(mode="after")
    def _passing_subset(self) -> LabelModelSpec:
        unknown = [label for label in self.passing_labels if label not in self.labels]
        if unknown:
            raise ValueError(f"passing_labels {unknown} are not in labels {self.labels}")
        return self


# --- python ----------------------------------------------------------------------------------------


class PythonLimits(_Spec):
    """Per-call limits of the python grader's sandbox."""

    cpu_seconds: Annotated[float, Field(gt=0.0, le=600.0)] = 2.0
    memory_mb: Annotated[int, Field(ge=32, le=65_536)] = 512
    timeout_s: Annotated[float, Field(gt=0.0, le=600.0)] = 5.0


class PythonSpec(_Spec):
    """OpenAI's ``python`` grader: ``source`` defines ``grade(sample, item) -> float``.

    Ours: ``file`` (a path, relative to the spec file) instead of ``source``; ``limits``; ``workers``
    (sandbox processes kept warm); ``on_error``: what a failing call gives, ``zero`` (score 0 with the
    reason, OpenAI's behaviour) or ``fail`` (a failed grading). ``image_tag`` is accepted and ignored.
    """

    type: Literal["python"]
    name: GraderName | None = None
    source: Annotated[str, Field(max_length=256 * 1024)] | None = None
    image_tag: str | None = None
    file: str | None = None
    limits: PythonLimits = Field(default_factory=PythonLimits)
    workers: Annotated[int, Field(ge=1, le=32)] = 2
    on_error: Literal["zero", "fail"] = "zero"

    @field_validator("source")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            check_python_source(value)
        return value

    @model_validator(mode="after")
    def _source_or_file(self) -> PythonSpec:
        if (self.source is None) == (self.file is None):
            raise ValueError("give exactly one of source (inline code) or file (a path)")
        return self


def check_python_source(source: str, filename: str = "<source>") -> None:
    """Raise ``ValueError`` unless ``source`` compiles and defines ``grade`` at module level."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise ValueError(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade":
            if isinstance(node, ast.AsyncFunctionDef):
                raise ValueError("grade must be a plain function (def grade(sample, item)), not async")
            return
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "grade" for t in node.targets
        ):
            return
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "grade" for a in node.names):
            return
    raise ValueError("defines no grade(sample, item) function")


# --- multi -----------------------------------------------------------------------------------------


class MultiSpec(_Spec):
    """OpenAI's ``multi``: named sub-graders combined by the ``calculate_output`` formula (see ``expr``).

    A result outside [0, 1] is clamped; a sub-grader that fails makes the whole grading fail.
    """

    type: Literal["multi"]
    name: GraderName | None = None
    graders: Annotated[dict[str, GraderSpec], Field(min_length=1, max_length=32)]
    calculate_output: Annotated[str, Field(min_length=1, max_length=expr.MAX_FORMULA_CHARS)]

    @field_validator("graders")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not key.isidentifier() or keyword.iskeyword(key) or key in expr.FUNCTIONS:
                raise ValueError(
                    f"grader name {key!r} cannot be used in calculate_output: use a letter or _ "
                    "followed by letters, digits or _, not a keyword or a function name"
                )
        return value

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, value: str, info: ValidationInfo) -> str:
        graders = info.data.get("graders")
        if graders is None:  # graders itself was invalid; its error is reported
            return value
        try:
            expr.compile_formula(value, graders)
        except expr.FormulaError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _depth(self) -> MultiSpec:
        if _multi_depth(self) > MAX_MULTI_DEPTH:
            raise ValueError(f"multi graders nest deeper than {MAX_MULTI_DEPTH} levels")
        return self


def _multi_depth(spec: Any) -> int:
    if isinstance(spec, MultiSpec):
        return 1 + max((_multi_depth(s) for s in spec.graders.values()), default=0)
    return 0


GraderSpec = Annotated[
    StringCheckSpec
    | TextSimilaritySpec
    | ToolCallSpec
    | JsonSchemaSpec
    | ScoreModelSpec
    | LabelModelSpec
    | PythonSpec
    | MultiSpec,
    Field(discriminator="type"),
]
MultiSpec.model_rebuild()

SPEC_ADAPTER: TypeAdapter[GraderSpec] = TypeAdapter(GraderSpec)
SPEC_TYPES: Mapping[str, type[BaseModel]] = {
    "string_check": StringCheckSpec,
    "text_similarity": TextSimilaritySpec,
    "tool_call": ToolCallSpec,
    "json_schema": JsonSchemaSpec,
    "score_model": ScoreModelSpec,
    "label_model": LabelModelSpec,
    "python": PythonSpec,
    "multi": MultiSpec,
}
#: the types OpenAI's grader JSON has; export_openai refuses the others
OPENAI_TYPES = frozenset({"string_check", "text_similarity", "score_model", "label_model", "python", "multi"})
#: fields of OpenAI's types that are ours and are dropped on export
_JUDGE_EXTENSIONS = frozenset(
    {"base_url", "base_url_env", "api_key_env", "model_env", "azure", "timeout_s", "format_instructions"}
)
_EXTENSION_FIELDS: Mapping[str, frozenset[str]] = {
    "score_model": _JUDGE_EXTENSIONS,
    "label_model": _JUDGE_EXTENSIONS,
    "python": frozenset({"file", "limits", "workers", "on_error"}),
}


def grader_json_schema() -> dict[str, Any]:
    """The JSON Schema of a grader spec (pydantic's, with ``$defs``), for CRD generation and docs."""
    return SPEC_ADAPTER.json_schema(by_alias=True)


# --- errors ----------------------------------------------------------------------------------------


def _clean_location(loc: tuple[str | int, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """Drop the union tags pydantic puts in error locations; return the path and the innermost model."""
    out: list[str] = []
    model: type[BaseModel] | None = None
    expect_tag = True
    after_graders = False
    for seg in loc:
        if expect_tag and isinstance(seg, str) and seg in SPEC_TYPES:
            model = SPEC_TYPES[seg]
            expect_tag = False
            continue
        expect_tag = False
        if after_graders:
            out.append(str(seg))
            after_graders = False
            expect_tag = True
            continue
        after_graders = model is MultiSpec and seg == "graders"
        nested = _nested_model(model, seg)
        out.append(str(seg))
        model = nested
    return out, model


def _nested_model(model: type[BaseModel] | None, seg: str | int) -> type[BaseModel] | None:
    if model is None or not isinstance(seg, str):
        return None
    for name, field in model.model_fields.items():
        if seg in (name, field.alias):
            annotation = field.annotation
            for candidate in (annotation, *getattr(annotation, "__args__", ())):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    return candidate
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    types = ", ".join(SPEC_TYPES)
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "extra_forbidden" and loc:
            path, model = _clean_location(loc[:-1])
            allowed = f"; allowed: {', '.join(_field_names(model))}" if model is not None else ""
            problems.append((".".join([*path, str(loc[-1])]), f"unknown field{allowed}"))
            continue
        path, _ = _clean_location(loc)
        if kind == "union_tag_not_found":
            problems.append((".".join([*path, "type"]), f"missing; one of {types}"))
        elif kind == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag")
            problems.append((".".join([*path, "type"]), f"{tag!r} is not a grader type; one of {types}"))
        else:
            msg = str(err.get("msg", "invalid"))
            msg = msg.removeprefix("Value error, ")
            if kind == "missing":
                msg = "required"
            problems.append((".".join(path), msg))
    return problems


# --- loading ---------------------------------------------------------------------------------------


def parse_spec(data: Any, source: str = "") -> GraderSpec:
    """Validate one grader spec from plain data; raises :class:`GraderSpecError`."""
    if data is None:
        raise GraderSpecError([("", "empty: a grader spec is an object with a type or a preset")], source)
    if not isinstance(data, Mapping):
        kind = {str: "text", list: "a list", int: "a number", float: "a number", bool: "a boolean"}
        found = kind.get(type(data), type(data).__name__)
        raise GraderSpecError(
            [("", f"a grader spec is an object with a type or a preset, not {found}")], source
        )
    try:
        return SPEC_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise GraderSpecError(_problems(exc), source) from None


def read_spec_text(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GraderSpecError([("", f"not valid YAML/JSON: {exc}")], source) from None


def resolve_python_files(data: Any, base_dir: Path) -> Any:
    """Make every python grader's relative ``file`` absolute, relative to the spec file's folder."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if out.get("type") == "python" and isinstance(out.get("file"), str):
        path = Path(out["file"]).expanduser()
        out["file"] = str(path if path.is_absolute() else (base_dir / path).resolve())
    if out.get("type") == "multi" and isinstance(out.get("graders"), dict):
        out["graders"] = {k: resolve_python_files(v, base_dir) for k, v in out["graders"].items()}
    return out


def check_python_files(spec: GraderSpec, source: str = "") -> None:
    """A python grader's ``file`` must exist, be readable and define ``grade`` (checked at load)."""
    problems: list[tuple[str, str]] = []

    def walk(node: GraderSpec, path: list[str]) -> None:
        if isinstance(node, PythonSpec) and node.file is not None:
            try:
                code = Path(node.file).read_text(encoding="utf-8")
                check_python_source(code, node.file)
            except OSError as exc:
                problems.append(
                    (".".join([*path, "file"]), f"cannot read {node.file}: {exc.strerror or exc}")
                )
            except ValueError as exc:
                problems.append((".".join([*path, "file"]), f"{node.file}: {exc}"))
        elif isinstance(node, MultiSpec):
            for key, sub in node.graders.items():
                walk(sub, [*path, "graders", key])

    walk(spec, [])
    if problems:
        raise GraderSpecError(problems, source)


# --- version and export ----------------------------------------------------------------------------


def canonical_json(spec: GraderSpec) -> str:
    """The spec as canonical JSON: sorted keys, no whitespace, fields at their defaults left out (so
    writing a default explicitly, or a later release adding a defaulted field, keeps the version)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def grader_version(spec: GraderSpec) -> str:
    """A short sha256 of the canonical spec (and of any python grader ``file``'s code)."""
    digest = hashlib.sha256(canonical_json(spec).encode())
    for code in _python_file_codes(spec):
        digest.update(b"\0")
        digest.update(code)
    return digest.hexdigest()[:VERSION_CHARS]


def _python_file_codes(spec: GraderSpec) -> list[bytes]:
    if isinstance(spec, PythonSpec) and spec.file is not None:
        try:
            return [Path(spec.file).read_bytes()]
        except OSError:
            return [b"<unreadable>"]
    if isinstance(spec, MultiSpec):
        return [code for sub in spec.graders.values() for code in _python_file_codes(sub)]
    return []


def export_openai(spec: GraderSpec) -> dict[str, Any]:
    """The spec as OpenAI grader JSON: fields as given, our extensions dropped, a python ``file``
    inlined as ``source``. Raises :class:`GraderSpecError` for types OpenAI does not have."""
    return _export(spec, [])


def _export(spec: GraderSpec, path: list[str]) -> dict[str, Any]:
    if spec.type not in OPENAI_TYPES:
        raise GraderSpecError(
            [
                (
                    ".".join([*path, "type"]),
                    f"{spec.type!r} has no OpenAI equivalent (OpenAI has: {', '.join(sorted(OPENAI_TYPES))})",
                )
            ]
        )
    data = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for key in _EXTENSION_FIELDS.get(spec.type, ()):
        data.pop(key, None)
    data["type"] = spec.type
    if "name" not in data:
        data["name"] = path[-1] if path else spec.type
    if isinstance(spec, PythonSpec) and spec.file is not None:
        data["source"] = Path(spec.file).read_text(encoding="utf-8")
    if isinstance(spec, MultiSpec):
        data["graders"] = {k: _export(sub, [*path, "graders", k]) for k, sub in spec.graders.items()}
    return data


def display_name(spec: GraderSpec, default: str | None = None) -> str:
    return spec.name or default or spec.type


def load_json_or_yaml_file(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise GraderSpecError([("", f"{size} bytes, limit {MAX_SPEC_BYTES}")], str(path))
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GraderSpecError([("", f"cannot read {path}: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise GraderSpecError(
            [("", f"not UTF-8 text (byte {exc.start}): give a YAML or JSON grader spec")], str(path)
        ) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise GraderSpecError([("", f"not valid JSON: {exc}")], str(path)) from None
    return read_spec_text(text, str(path))


# --- the entry point -------------------------------------------------------------------------------


def load_grader_spec(source: str | Path | Mapping[str, Any]) -> GraderSpec:
    """Load a grader spec from a preset name, a YAML/JSON file, inline JSON/YAML text, or a dict.

    A dict (or file) may be ``{"preset": NAME, ...overrides}`` or wrap the spec as ``{"grader": {...}}``
    (as in a RewardLabeling manifest). OpenAI grader JSON is accepted as is. Raises
    :class:`GraderSpecError` whose message names the source and each bad field.
    """
    label = ""
    base_dir: Path | None = None
    data: Any
    if isinstance(source, Mapping):
        data = dict(source)
    elif isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        path = Path(source).expanduser()
        if isinstance(source, str) and presets.preset_dict(source) is not None:
            data = {"preset": source}
        elif not path.exists():
            raise GraderSpecError(
                [("", f"no such file, and not a preset ({', '.join(presets.PRESETS)})")], str(source)
            )
        else:
            label = str(path)
            base_dir = path.resolve().parent
            data = load_json_or_yaml_file(path)
    else:
        label = "(inline)"
        data = read_spec_text(source, label)
    if isinstance(data, Mapping) and set(data) == {"grader"}:
        data = data["grader"]
    data = _apply_preset(data, label)
    if base_dir is not None:
        data = resolve_python_files(data, base_dir)
    spec = parse_spec(data, label)
    check_python_files(spec, label)
    return spec


def _looks_like_path(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and "\n" not in stripped and not stripped.startswith(("{", "[", "type:"))


def _apply_preset(data: Any, label: str) -> Any:
    if not isinstance(data, Mapping) or "preset" not in data:
        return data
    name = data["preset"]
    base = presets.preset_dict(name) if isinstance(name, str) else None
    if base is None:
        raise GraderSpecError(
            [("preset", f"unknown preset {name!r}; one of {', '.join(presets.PRESETS)}")], label
        )
    overrides = {k: v for k, v in data.items() if k != "preset"}
    if "type" in overrides and overrides["type"] != base["type"]:
        raise GraderSpecError(
            [("type", f"preset {name!r} is a {base['type']} grader; drop type or use a plain spec")], label
        )
    base.update(overrides)
    return base
