"""Graders: turn an episode into a score in [0, 1] with a reason, from a declarative spec.

The public API (import the module: ``from lightning_op import graders``)::

    spec = graders.load_grader_spec("grader.yaml")          # or a preset name, inline JSON/YAML, a dict
    grader = graders.build_grader(spec)                      # a graders.base.Grader
    result = await grader.grade(episode)                     # GradeResult(score, reason, error, ...)
    await grader.aclose()
    graders.grader_version(spec)                             # short sha256 of the canonical spec
    graders.export_openai(spec)                              # OpenAI grader JSON
    graders.PRESETS                                          # name -> spec dict

Spec types (see ``spec``): ``string_check``, ``text_similarity``, ``tool_call``, ``json_schema``,
``score_model``, ``label_model``, ``python``, ``multi``; presets ``tool_selection``, ``exact_match``,
``task_adherence`` (see ``presets``). Templates (``{{episode.state.query}}``, ``{{sample.output_text}}``,
``{{item.result}}``) are described in ``templates``.

This package imports only ``api`` (and the openai SDK, lazily, for the LLM judges); the labeling
pipeline, the dry run, the CLI and the trainer's evaluation rounds build on it.
"""

from __future__ import annotations

from lightning_op.graders.base import Grader, GradeResult
from lightning_op.graders.build import GraderBuildError, JudgeClientFactory, build_grader
from lightning_op.graders.presets import PRESETS
from lightning_op.graders.spec import (
    GraderSpec,
    GraderSpecError,
    export_openai,
    grader_json_schema,
    grader_version,
    load_grader_spec,
)

__all__ = [
    "PRESETS",
    "GradeResult",
    "Grader",
    "GraderBuildError",
    "GraderSpec",
    "GraderSpecError",
    "JudgeClientFactory",
    "build_grader",
    "export_openai",
    "grader_json_schema",
    "grader_version",
    "load_grader_spec",
]
