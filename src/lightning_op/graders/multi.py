"""The ``multi`` grader: named sub-graders combined by a ``calculate_output`` formula.

Sub-graders that wait on I/O (judges, python) run concurrently and rule graders inline, all on one
shared :class:`~lightning_op.graders.templates.GradingContext`; their scores are the formula's
variables (``expr``, checked at spec-load time). If any sub-grader the formula uses fails, the whole
grading fails with its error (retryable if any failure was, waiting the longest Retry-After asked),
because a formula over a missing value has no meaning. The result is clamped to [0, 1], with a note
in the reason when it had to be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from lightning_op.graders import base, common, expr, spec, templates


class MultiGrader(common.ContextGrader):
    kind = "multi"

    def __init__(
        self, s: spec.MultiSpec, name: str, version: str, graders: Mapping[str, common.ContextGrader]
    ) -> None:
        super().__init__(name, version)
        self.graders = dict(graders)
        self.formula = expr.compile_formula(s.calculate_output, self.graders)
        # Sub-graders the formula never reads are still run: their failures would surprise nobody
        # otherwise, and OpenAI runs them too. Only the used ones matter for the score.
        self.used = self.formula.used_names()

    async def _grade(self, ctx: templates.GradingContext) -> base.GradeResult:
        names = list(self.graders)
        by_name: dict[str, base.GradeResult] = {}
        # Rule graders answer at once: call them inline; only graders that wait on I/O get tasks.
        waiting = [n for n in names if not isinstance(self.graders[n], common.RuleGrader)]
        for n in names:
            if n not in waiting:
                by_name[n] = await self.graders[n].grade_context(ctx)
        if len(waiting) == 1:
            by_name[waiting[0]] = await self.graders[waiting[0]].grade_context(ctx)
        elif waiting:
            results = await asyncio.gather(*(self.graders[n].grade_context(ctx) for n in waiting))
            by_name.update(zip(waiting, results, strict=True))
        failures = {n: r for n, r in by_name.items() if n in self.used and not r.ok}
        if failures:
            retryable = any(r.retryable for r in failures.values())
            waits = [r.retry_after for r in failures.values() if r.retry_after is not None]
            detail = "; ".join(f"{n}: {r.error or 'no score'}" for n, r in failures.items())
            return common.failed(
                f"sub-grader failed: {detail}", retryable=retryable, retry_after=max(waits) if waits else None
            )
        values = {n: float(r.score) for n, r in by_name.items() if r.score is not None}
        try:
            raw = self.formula.evaluate(values)
            value, note = common.clamp_score(raw)
        except (ArithmeticError, ValueError) as exc:
            return common.failed(f"calculate_output {self.formula.source!r} failed: {exc}")
        parts = ", ".join(f"{n}={values[n]:.3g}" for n in names if n in values)
        reasons = "; ".join(f"{n}: {r.reason}" for n, r in by_name.items() if r.reason)
        reason = f"{self.formula.source} with {parts} = {raw:.4g}{note}"
        if reasons:
            reason += f" | {reasons}"
        return base.GradeResult(value, reason=common.shorten(reason, 1000))

    async def aclose(self) -> None:
        await asyncio.gather(*(g.aclose() for g in self.graders.values()), return_exceptions=True)
