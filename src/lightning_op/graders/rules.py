"""Rule graders: ``string_check``, ``text_similarity``, ``tool_call`` and ``json_schema``.

Pure functions of the episode, no I/O, built once from a validated spec (templates parsed, regular
expressions and JSON Schemas compiled) so that grading one episode costs microseconds: labeling
thousands of episodes is bound by the store, not by these. Semantics of each type are documented on
its spec model in ``spec``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import jsonschema
import jsonschema.exceptions

from lightning_op.graders import base, common, similarity, spec, templates

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


class StringCheckGrader(common.RuleGrader):
    kind = "string_check"

    def __init__(self, s: spec.StringCheckSpec, name: str, version: str) -> None:
        super().__init__(name, version)
        self.input = templates.parse_template(s.input)
        self.reference = templates.parse_template(s.reference)
        self.operation = s.operation

    def score(self, ctx: templates.GradingContext) -> base.GradeResult:
        reference, missing = ctx.render(self.reference)
        if missing:
            return common.failed(templates.missing_reason("reference", missing))
        text, _ = ctx.render(self.input)
        op = self.operation
        if op == "eq":
            ok = text == reference
        elif op == "ne":
            ok = text != reference
        elif op == "like":
            ok = reference in text
        else:
            ok = reference.casefold() in text.casefold()
        verb = {"eq": "equals", "ne": "differs from", "like": "contains", "ilike": "contains (any case)"}[op]
        reason = f"input {verb} reference" if ok else f"input does not satisfy '{op}' against reference"
        return base.GradeResult(1.0 if ok else 0.0, reason=f"{reason}: {common.shorten(reference, 80)!r}")


class TextSimilarityGrader(common.RuleGrader):
    kind = "text_similarity"

    def __init__(self, s: spec.TextSimilaritySpec, name: str, version: str) -> None:
        super().__init__(name, version)
        self.input = templates.parse_template(s.input)
        self.reference = templates.parse_template(s.reference)
        self.metric_name = s.evaluation_metric
        self.metric = similarity.METRICS[s.evaluation_metric]
        self.pass_threshold = s.pass_threshold

    def score(self, ctx: templates.GradingContext) -> base.GradeResult:
        reference, missing = ctx.render(self.reference)
        if missing:
            return common.failed(templates.missing_reason("reference", missing))
        text, _ = ctx.render(self.input)
        value = max(0.0, min(1.0, self.metric(text, reference)))
        reason = f"{self.metric_name} {value:.3f}"
        if self.pass_threshold is not None:
            passed = "pass" if value >= self.pass_threshold else "fail"
            reason += f" ({passed} at threshold {self.pass_threshold:g})"
        return base.GradeResult(value, reason=reason)


class _ArgumentComparer:
    """Tolerant comparison of tool arguments (expected is a subset of actual, by default)."""

    def __init__(self, *, case_sensitive: bool, coerce_types: bool, exact: bool) -> None:
        self.case_sensitive = case_sensitive
        self.coerce_types = coerce_types
        self.exact = exact

    def normalise(self, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if self.coerce_types:
                lowered = text.lower()
                if _NUMBER.match(text):
                    return float(text)
                if lowered in ("true", "false"):
                    return lowered == "true"
                if lowered in ("null", "none"):
                    return None
            return text if self.case_sensitive else text.casefold()
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dict):
            return {str(k): self.normalise(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.normalise(v) for v in value]
        return value

    def equal(self, expected: Any, actual: Any) -> bool:
        if isinstance(expected, dict) and isinstance(actual, dict):
            if self.exact and set(expected) != set(actual):
                return False
            return all(k in actual and self.equal(v, actual[k]) for k, v in expected.items())
        if isinstance(expected, list) and isinstance(actual, list):
            return len(expected) == len(actual) and all(
                self.equal(e, a) for e, a in zip(expected, actual, strict=True)
            )
        if isinstance(expected, bool) or isinstance(actual, bool):
            return expected is actual
        if isinstance(expected, float) and isinstance(actual, float):
            return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12)
        return bool(expected == actual)

    def compare(self, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[int, int, list[str]]:
        """(matching keys, expected keys, notes on the differences)."""
        exp_n = self.normalise(expected)
        act_n = self.normalise(actual)
        notes: list[str] = []
        matched = 0
        for key, value in exp_n.items():
            if key not in act_n:
                notes.append(f"missing {key}")
            elif self.equal(value, act_n[key]):
                matched += 1
            else:
                notes.append(f"{key}: expected {expected[key]!r}, got {actual[key]!r}")
        total = len(exp_n)
        if self.exact:
            extra = sorted(set(act_n) - set(exp_n))
            if extra:
                notes.append(f"unexpected {', '.join(extra)}")
                total += len(extra)
        return matched, total, notes


class ToolCallGrader(common.RuleGrader):
    kind = "tool_call"

    def __init__(self, s: spec.ToolCallSpec, name: str, version: str) -> None:
        super().__init__(name, version)
        self.spec = s
        self.expected_tool = templates.parse_template(s.expected_tool)
        self.expected_arguments = (
            templates.parse_template(s.expected_arguments) if s.expected_arguments is not None else None
        )
        self.query = templates.parse_template(s.query)
        self.comparer = _ArgumentComparer(
            case_sensitive=s.case_sensitive, coerce_types=s.coerce_types, exact=s.argument_match == "exact"
        )
        # Reference table: exact queries in a dict, the other matchers scanned in order; first row wins.
        self._exact: dict[str, int] = {}
        self._scan: list[tuple[int, tuple[str, ...] | None, re.Pattern[str] | None]] = []
        for index, row in enumerate(s.reference):
            if row.query is not None:
                self._exact.setdefault(_normalise_query(row.query), index)
            elif row.contains is not None:
                self._scan.append((index, tuple(k.casefold() for k in row.contains), None))
            elif row.pattern is not None:
                self._scan.append((index, None, re.compile(row.pattern, re.IGNORECASE)))

    def lookup(self, query: str) -> spec.ReferenceEntry | None:
        """The first reference row that matches ``query``, if any."""
        if not self.spec.reference:
            return None
        normalised = _normalise_query(query)
        best = self._exact.get(normalised, len(self.spec.reference))
        folded = query.casefold()
        for index, keywords, pattern in self._scan:
            if index > best:
                break
            if keywords is not None and any(k in folded for k in keywords):
                best = index
                break
            if pattern is not None and pattern.search(query):
                best = index
                break
        return self.spec.reference[best] if best < len(self.spec.reference) else None

    def _query_text(self, ctx: templates.GradingContext) -> str:
        text, _ = ctx.render(self.query)
        if text.strip():
            return text
        for message in reversed(ctx.episode.messages or []):
            if message.role == "user" and message.content:
                return message.content
        return ""

    def _same_tool(self, expected: str, actual: str) -> bool:
        if self.spec.case_sensitive:
            return expected.strip() == actual.strip()
        return expected.strip().casefold() == actual.strip().casefold()

    def score(self, ctx: templates.GradingContext) -> base.GradeResult:
        s = self.spec
        expected_tool, _ = ctx.render(self.expected_tool)
        expected_tool = expected_tool.strip()
        expected_args: dict[str, Any] | None = None
        source = "episode"
        if expected_tool:
            if self.expected_arguments is not None:
                expected_args = _as_object(ctx.render_value(self.expected_arguments)[0])
        else:
            row = self.lookup(self._query_text(ctx))
            if row is not None:
                expected_tool, expected_args, source = row.tool, row.arguments or None, "reference"
        if not expected_tool:
            why = f"no expected tool: {self.expected_tool.source} is empty" + (
                " and no reference row matches the query" if s.reference else ""
            )
            if s.missing_expected == "zero":
                return base.GradeResult(0.0, reason=why)
            return common.failed(why)

        call = ctx.episode.effective_tool_call()
        if call is None:
            return base.GradeResult(0.0, reason=f"no tool call (expected {expected_tool})")
        tool, arguments = call
        if not self._same_tool(expected_tool, tool):
            return base.GradeResult(0.0, reason=f"called {tool}, expected {expected_tool} ({source})")
        if not s.check_arguments or not expected_args:
            return base.GradeResult(1.0, reason=f"called the expected tool {tool} ({source})")
        matched, total, notes = self.comparer.compare(expected_args, arguments)
        if not notes:
            return base.GradeResult(
                1.0, reason=f"called {tool} with the expected arguments ({matched}/{total}, {source})"
            )
        floor = s.wrong_arguments_score
        value = floor + (1.0 - floor) * matched / total if s.argument_scoring == "proportional" else floor
        detail = common.shorten("; ".join(notes), 300)
        return base.GradeResult(
            value, reason=f"called {tool} ({source}), arguments differ ({matched}/{total}): {detail}"
        )


def _normalise_query(query: str) -> str:
    return " ".join(query.split()).casefold()


def _as_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def parse_json_lenient(text: str) -> Any:
    """``json.loads``, retried without a surrounding fenced code block; raises ``ValueError``."""
    try:
        return json.loads(text)
    except ValueError:
        fenced = _FENCE.match(text)
        if fenced is None:
            raise
        return json.loads(fenced.group(1))


class JsonSchemaGrader(common.RuleGrader):
    kind = "json_schema"

    def __init__(self, s: spec.JsonSchemaSpec, name: str, version: str) -> None:
        super().__init__(name, version)
        self.input = templates.parse_template(s.input)
        validator_cls = jsonschema.validators.validator_for(
            s.schema_, default=jsonschema.Draft202012Validator
        )
        self.validator = validator_cls(s.schema_)

    def score(self, ctx: templates.GradingContext) -> base.GradeResult:
        value, missing = ctx.render_value(self.input)
        if missing and self.input.single_path is not None:
            return base.GradeResult(0.0, reason=templates.missing_reason("input", missing))
        if isinstance(value, str):
            try:
                value = parse_json_lenient(value)
            except ValueError as exc:
                return base.GradeResult(0.0, reason=f"output is not JSON: {exc}")
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        if error is None:
            return base.GradeResult(1.0, reason="output matches the schema")
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return base.GradeResult(
            0.0, reason=f"schema violation at {where}: {common.shorten(error.message, 200)}"
        )
