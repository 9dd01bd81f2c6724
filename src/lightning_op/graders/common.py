"""What every grader here shares: name and version, the never-raise wrapper, the shared context.

Each grader implements ``grade_context(ctx)`` over a :class:`~lightning_op.graders.templates.GradingContext`,
so a ``multi`` grader computes each view of the episode (output text, JSON dump, ...) once for all of
its sub-graders; ``grade(episode)`` is the :class:`~lightning_op.graders.base.Grader` entry point.
An exception that escapes a grader's own logic is logged and turned into a failed ``GradeResult``: a
grader never raises for a bad episode or a bad reply.
"""

from __future__ import annotations

import abc
import logging
import math

from lightning_op.api import episode as ep
from lightning_op.graders import base, templates

log = logging.getLogger(__name__)


class ContextGrader(abc.ABC):
    """Base of the graders built from specs; satisfies the ``graders.base.Grader`` protocol."""

    name: str
    version: str
    #: the spec's type (``tool_call``, ``score_model``, ...), for logs and reasons
    kind: str = ""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version

    async def grade(self, episode: ep.Episode) -> base.GradeResult:
        return await self.grade_context(templates.GradingContext(episode))

    async def grade_context(self, ctx: templates.GradingContext) -> base.GradeResult:
        try:
            return await self._grade(ctx)
        except Exception as exc:  # a grader never raises for one episode
            log.exception("grader %s (%s) failed on episode %s", self.name, self.kind, ctx.episode.id)
            return base.GradeResult(None, error=f"internal error in grader {self.name}: {exc!r}")

    @abc.abstractmethod
    async def _grade(self, ctx: templates.GradingContext) -> base.GradeResult: ...

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.kind} v{self.version}>"


class RuleGrader(ContextGrader):
    """A grader that computes its score synchronously from the episode (no I/O)."""

    async def grade_context(self, ctx: templates.GradingContext) -> base.GradeResult:
        try:
            return self.score(ctx)
        except Exception as exc:
            log.exception("grader %s (%s) failed on episode %s", self.name, self.kind, ctx.episode.id)
            return base.GradeResult(None, error=f"internal error in grader {self.name}: {exc!r}")

    async def _grade(self, ctx: templates.GradingContext) -> base.GradeResult:
        return self.score(ctx)

    @abc.abstractmethod
    def score(self, ctx: templates.GradingContext) -> base.GradeResult: ...


def failed(error: str, *, retryable: bool = False, retry_after: float | None = None) -> base.GradeResult:
    return base.GradeResult(None, reason=error, error=error, retryable=retryable, retry_after=retry_after)


def clamp_score(value: float) -> tuple[float, str]:
    """``value`` clamped to [0, 1] and a note when it had to be; NaN is the caller's to reject."""
    if math.isnan(value):
        raise ValueError("score is NaN")
    if value < 0.0:
        return 0.0, " (clamped to 0)"
    if value > 1.0:
        return 1.0, " (clamped to 1)"
    return float(value), ""


def shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
