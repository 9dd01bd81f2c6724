"""The Grader protocol: what labeling, the dry run and the trainer's evaluation rounds call.

A grader is built from a spec (``graders.spec``) and scores one episode at a time, asynchronously
(LLM judges do network I/O; rule graders return at once). A grader never raises for a bad episode
or a bad reply: it returns a ``GradeResult`` with ``error`` set, so a batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lightning_op.api import episode as ep


@dataclass(frozen=True)
class GradeResult:
    """A score in [0, 1] with its reason, or ``score=None`` and ``error`` when grading failed."""

    score: float | None
    reason: str = ""
    error: str | None = None
    #: the failure is transient (429, 5xx, timeout): the labeling pipeline retries it with backoff
    retryable: bool = False
    #: seconds the server asked us to wait (Retry-After), if it said
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.score is not None


@runtime_checkable
class Grader(Protocol):
    #: the spec's name, recorded on labels
    name: str
    #: a short hash of the spec, recorded on labels; rerunning a batch skips episodes it already labeled
    version: str

    async def grade(self, episode: ep.Episode) -> GradeResult: ...

    async def aclose(self) -> None: ...
