"""From a validated spec to a grader: :func:`build_grader`.

Rule graders are built here directly; the LLM judges (``judge``, which imports the openai SDK) and the
python sandbox (``python_grader``) are imported only when a spec needs them, so loading a rule grader
stays cheap. ``multi`` builds its sub-graders recursively (named by their key in ``graders``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lightning_op.graders import base, common, rules
from lightning_op.graders import spec as specs

if TYPE_CHECKING:
    import openai

    from lightning_op.graders import judge

#: makes the judge's client from its resolved endpoint; tests inject one, the default is the SDK's
#: ``openai.AsyncOpenAI`` / ``openai.AsyncAzureOpenAI`` with ``max_retries=0``
JudgeClientFactory = Callable[["judge.JudgeEndpoint"], "openai.AsyncOpenAI"]


class GraderBuildError(ValueError):
    """A valid spec that cannot run here (e.g. a judge with no endpoint or key in the environment)."""


def build_grader(
    spec: specs.GraderSpec, *, judge_client_factory: JudgeClientFactory | None = None
) -> base.Grader:
    """The grader for ``spec``; its ``name`` is the spec's name (else its type) and its
    ``version`` is :func:`~lightning_op.graders.spec.grader_version` of the whole spec.

    Raises :class:`GraderBuildError` when a judge's endpoint cannot be resolved from the environment
    (only checked when no ``judge_client_factory`` is given).
    """
    version = specs.grader_version(spec)
    return _build(spec, specs.display_name(spec), version, judge_client_factory)


def _build(
    s: specs.GraderSpec, name: str, version: str, factory: JudgeClientFactory | None
) -> common.ContextGrader:
    if isinstance(s, specs.StringCheckSpec):
        return rules.StringCheckGrader(s, name, version)
    if isinstance(s, specs.TextSimilaritySpec):
        return rules.TextSimilarityGrader(s, name, version)
    if isinstance(s, specs.ToolCallSpec):
        return rules.ToolCallGrader(s, name, version)
    if isinstance(s, specs.JsonSchemaSpec):
        return rules.JsonSchemaGrader(s, name, version)
    if isinstance(s, specs.ScoreModelSpec | specs.LabelModelSpec):
        from lightning_op.graders import judge

        try:
            return judge.JudgeGrader(s, name, version, client_factory=factory)
        except judge.JudgeConfigError as exc:
            raise GraderBuildError(f"grader {name}: {exc}") from None
    if isinstance(s, specs.PythonSpec):
        from lightning_op.graders import python_grader

        return python_grader.PythonGrader(s, name, version)
    if isinstance(s, specs.MultiSpec):
        from lightning_op.graders import multi

        subs = {key: _build(sub, sub.name or key, version, factory) for key, sub in s.graders.items()}
        return multi.MultiGrader(s, name, version, subs)
    raise GraderBuildError(f"grader {name}: no builder for type {s.type!r}")  # unreachable: union is closed
