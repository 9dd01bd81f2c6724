"""Labeling at scale, the sample test and the dry run: a grader applied to a store's episodes.

The CLI (``test-grader``, ``label-batch``, ``dry-run``) and the RewardLabeling controller both call
these three functions; they return report objects and never print.

How ``label_batch`` works, and why:

- *Reading*: episodes come from ``store.iter_json`` (stored JSON, no model validation) on a store
  thread, a page ahead of the workers; an episode this grader version already labeled is skipped
  before it is validated, so rerunning a finished batch costs one scan and grades nothing
  (resumable). An episode is validated into an ``Episode`` only when a worker takes it.
- *Grading*: ``concurrency`` workers (default 16) pull episodes and call ``grader.grade``, so at
  most that many gradings are in flight. An optional token-bucket ``RateLimiter`` caps requests per
  second and (estimated) tokens per minute for LLM judges. A retryable result (429, 5xx, timeout) is
  retried after the server's Retry-After when it sent one (which also pauses the limiter for every
  worker), else after an exponential backoff with jitter. Each attempt has its own timeout. A
  grading that still fails, or a grader that raises, becomes a ``Label`` with ``error`` on that
  episode: the batch goes on. A rerun retries failed episodes (``retry_failed``), a few times at most.
- *A backend that never answers*: until the grader has answered once in a run (a score, or a failure
  that retrying would not fix), failures with errors that may pass (a judge down, 429, 5xx,
  timeouts, retries spent) are held back, not written. Once it answers they are written as usual.
  When ``OUTAGE_STOP_AFTER`` gradings in a row fail so before any answer, or the run ends without
  one, the run stops and writes none of them (``LabelingReport.backend_down``): an outage must not
  use up the episodes' tries, and grading thousands of episodes against a dead endpoint is wasted.
- *Writing*: labels are written in batches on the store thread (``run_in_executor``) while grading
  goes on, through ``add_labels`` (one transaction per batch) when the store implements
  ``BatchLabelWriter``, else one ``add_label`` per episode. Each write carries the revision the
  episode was read at; on a conflict the episode is re-read and written again unless this grader
  version labeled it meanwhile. An episode is graded at most once per run and never gets two labels
  from one grader version in one run. A manual label keeps winning: the store's ``effective_reward``
  prefers it over any automatic label.

Talks to ``store.base`` (the EpisodeStore protocol) and ``graders`` (the Grader protocol, dry-run
metrics and verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import pydantic
from pydantic.alias_generators import to_camel

from lightning_op.api import episode as ep
from lightning_op.graders import base as graders_base
from lightning_op.graders import dryrun
from lightning_op.store import base as store_base

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CONCURRENCY = 16
DEFAULT_MAX_RETRIES = 3
DEFAULT_TIMEOUT_S = 60.0
#: episodes per store read page and labels per store write transaction
READ_PAGE_SIZE = 1000
WRITE_BATCH_SIZE = 1000
#: tokens a judge prompt adds around the episode (rubric, instructions), for the token limiter
PROMPT_OVERHEAD_TOKENS = 256
#: at most this long is waited for one Retry-After, whatever the server says
MAX_RETRY_AFTER_S = 300.0
#: error messages kept on labels and in reports are cut to this length
MAX_ERROR_CHARS = 2000
#: distinct error messages a report keeps counts for
MAX_ERROR_KINDS = 20
#: reruns retry an episode this grader version failed on until it has failed this many times
MAX_FAILED_ATTEMPTS = 3
#: a run whose first this-many gradings all failed with errors that may pass stops: the backend is down
OUTAGE_STOP_AFTER = 20
#: a store write that fails with StoreUnavailableError is tried this many times in all
STORE_WRITE_ATTEMPTS = 4
#: seconds before the first retry of a store write; doubled each time
STORE_RETRY_BASE_S = 0.2


# --------------------------------------------------------------------------------------------------
# Rate limiting


class RateLimiter:
    """Token buckets for requests per second and tokens per minute, shared by all workers.

    Each bucket holds at most one interval's worth (``requests_per_second`` requests, ``tokens_per_minute``
    tokens) and starts full. ``acquire`` waits, first come first served, until both buckets can pay.
    A request estimated larger than the whole token bucket waits for a full bucket and empties it.
    ``pause`` stops every acquisition for a while (a server's Retry-After applies to all callers).
    """

    def __init__(
        self,
        requests_per_second: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_second is not None and not requests_per_second > 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
        if tokens_per_minute is not None and not tokens_per_minute > 0:
            raise ValueError(f"tokens_per_minute must be positive, got {tokens_per_minute}")
        self._clock = clock
        self._rps = requests_per_second
        self._req_capacity = max(1.0, requests_per_second or 0.0)
        self._req_level = self._req_capacity
        self._tps = tokens_per_minute / 60.0 if tokens_per_minute else None
        self._tok_capacity = float(tokens_per_minute or 0.0)
        self._tok_level = self._tok_capacity
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def limits_tokens(self) -> bool:
        return self._tps is not None

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        if self._rps is not None:
            self._req_level = min(self._req_capacity, self._req_level + elapsed * self._rps)
        if self._tps is not None:
            self._tok_level = min(self._tok_capacity, self._tok_level + elapsed * self._tps)

    def _wait_needed(self, now: float, tokens: float) -> float:
        wait = self._paused_until - now
        if self._rps is not None and self._req_level < 1.0:
            wait = max(wait, (1.0 - self._req_level) / self._rps)
        if self._tps is not None:
            cost = min(tokens, self._tok_capacity)
            if self._tok_level < cost:
                wait = max(wait, (cost - self._tok_level) / self._tps)
        return wait

    async def acquire(self, tokens: float = 0.0) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._refill(now)
                wait = self._wait_needed(now, tokens)
                if wait <= 0:
                    if self._rps is not None:
                        self._req_level -= 1.0
                    if self._tps is not None:
                        self._tok_level -= min(tokens, self._tok_capacity)
                    return
                await asyncio.sleep(wait)


def estimate_tokens(grader: graders_base.Grader, episode: ep.Episode) -> int:
    """Tokens a grading will cost: the grader's own estimate if it has one, else ~4 chars per token."""
    own = getattr(grader, "estimate_tokens", None)
    if callable(own):
        value = own(episode)
        if isinstance(value, int | float) and value >= 0:
            return int(value)
    return (len(episode.state.query) + len(episode.output_text())) // 4 + PROMPT_OVERHEAD_TOKENS


# --------------------------------------------------------------------------------------------------
# Grading with retries and timeouts


class _Graded(NamedTuple):
    episode: ep.Episode
    result: graders_base.GradeResult
    attempts: int


def _cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _GradingEngine:
    """Grades episodes with retries, backoff, per-attempt timeouts and the rate limiter."""

    def __init__(
        self,
        grader: graders_base.Grader,
        *,
        max_retries: int,
        timeout_s: float | None,
        limiter: RateLimiter | None,
        backoff_base_s: float,
        backoff_max_s: float,
        rng: random.Random,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.grader = grader
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.limiter = limiter
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.rng = rng
        self.retries = 0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number ``attempt + 1``: what the server's Retry-After says (it knows
        best), else exponential from ``backoff_base_s`` up to ``backoff_max_s``, with jitter."""
        if retry_after is not None and retry_after >= 0:
            # Up to 10% extra so workers told the same Retry-After do not all come back at once.
            return min(retry_after, MAX_RETRY_AFTER_S) * (1.0 + 0.1 * self.rng.random())
        delay = min(self.backoff_max_s, self.backoff_base_s * (2.0**attempt))
        return delay * (0.5 + 0.5 * self.rng.random())

    async def _attempt(self, episode: ep.Episode, slot: _WorkerSlot) -> graders_base.GradeResult:
        if self.timeout_s is not None:
            slot.deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            result = await self.grader.grade(episode)
        except asyncio.CancelledError:
            if not slot.expired(self.timeout_s is not None):
                raise
            return graders_base.GradeResult(
                score=None, error=f"timed out after {self.timeout_s:g}s", retryable=True
            )
        except Exception as exc:  # the protocol says graders do not raise; one that does fails only here
            logger.warning("grader %s raised on episode %s: %r", self.grader.name, episode.id, exc)
            logger.debug("grader traceback", exc_info=True)
            return graders_base.GradeResult(score=None, error=f"grader raised {type(exc).__name__}: {exc}")
        finally:
            slot.deadline = None
        if slot.fired:  # the grader swallowed our cancellation and answered anyway: keep the answer
            slot.expired(True)
        if result.score is None and result.error is None:
            return graders_base.GradeResult(
                score=None, reason=result.reason, error="grader returned no score"
            )
        if result.score is not None and result.error is None:
            score = result.score
            if not isinstance(score, int | float) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
                return graders_base.GradeResult(
                    score=None, reason=result.reason, error=f"grader returned score {score!r}, outside [0, 1]"
                )
        return result

    async def grade(self, episode: ep.Episode, slot: _WorkerSlot) -> _Graded:
        attempt = 0
        while True:
            if self.limiter is not None:
                tokens = estimate_tokens(self.grader, episode) if self.limiter.limits_tokens else 0
                await self.limiter.acquire(tokens)
            result = await self._attempt(episode, slot)
            if result.error is None or not result.retryable or attempt >= self.max_retries:
                return _Graded(episode, result, attempt + 1)
            if result.retry_after and self.limiter is not None:
                self.limiter.pause(min(result.retry_after, MAX_RETRY_AFTER_S))
            delay = self.backoff(attempt, result.retry_after)
            logger.debug(
                "episode %s: %s; retry %d/%d in %.2fs",
                episode.id,
                result.error,
                attempt + 1,
                self.max_retries,
                delay,
            )
            attempt += 1
            self.retries += 1
            await asyncio.sleep(delay)

    async def watch(self, slots: Sequence[_WorkerSlot]) -> None:
        """Cancel every grading attempt that runs past its deadline (runs until cancelled)."""
        assert self.timeout_s is not None
        interval = max(0.005, min(0.05, self.timeout_s / 10))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for slot in slots:
                if slot.deadline is not None and now >= slot.deadline and not slot.fired:
                    slot.fire()


class _WorkerSlot:
    """One worker's attempt in flight: its task and deadline, for ``_GradingEngine.watch``.

    One watchdog per batch instead of ``asyncio.timeout``/``wait_for`` per attempt: those schedule a
    timer (wait_for also a Task) for every grading, a cost that dominates rule graders at tens of
    thousands of episodes per second. The deadline is set just before ``grader.grade`` and cleared
    right after it returns, with no await in between, so when the watchdog sees a deadline passed the
    worker is suspended inside the grader and the cancellation lands there.
    """

    __slots__ = ("task", "deadline", "fired")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.deadline: float | None = None
        self.fired = False

    def fire(self) -> None:
        if self.task is not None:
            self.fired = True
            self.task.cancel()

    def expired(self, watched: bool) -> bool:
        """After a CancelledError: whether it was our timeout (then withdrawn: the worker goes on),
        rather than a cancellation from outside, which must propagate."""
        if not (watched and self.fired):
            return False
        self.fired = False
        assert self.task is not None
        return self.task.uncancel() == 0


async def _run_workers(
    source: Callable[[], Any],
    handle: Callable[[_Graded], Any],
    engine: _GradingEngine,
    concurrency: int,
) -> None:
    """``concurrency`` workers: each awaits ``source()`` for an episode (None: done), grades it and
    awaits ``handle`` on the result. The first exception (a store failure) cancels the rest and is
    raised as is."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    slots = [_WorkerSlot() for _ in range(concurrency)]

    async def worker(slot: _WorkerSlot) -> None:
        slot.task = asyncio.current_task()
        while True:
            episode = await source()
            if episode is None:
                return
            await handle(await engine.grade(episode, slot))

    watchdog = asyncio.ensure_future(engine.watch(slots)) if engine.timeout_s is not None else None
    try:
        async with asyncio.TaskGroup() as group:
            for slot in slots:
                group.create_task(worker(slot))
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog


# --------------------------------------------------------------------------------------------------
# Store access off the event loop


class _StoreThread:
    """One thread for every store call of a run: the event loop never blocks on the store, and the
    store sees one caller at a time, in order."""

    def __init__(self) -> None:
        self._executor = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightning-store")

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@contextlib.asynccontextmanager
async def _store_thread() -> AsyncIterator[_StoreThread]:
    thread = _StoreThread()
    try:
        yield thread
    finally:
        thread.close()


def _done_by(data: Mapping[str, Any], grader: str, version: str, *, retry_failed: bool) -> bool:
    """Whether this grader version is done with an episode (stored JSON): it labeled it with a score,
    or failed on it (once when not retrying failures, ``MAX_FAILED_ATTEMPTS`` times when retrying)."""
    failures = 0
    for label in data.get("labels") or ():
        if label.get("grader") == grader and label.get("graderVersion") == version:
            if label.get("score") is not None:
                return True
            failures += 1
    return failures >= (MAX_FAILED_ATTEMPTS if retry_failed else 1)


@dataclass
class _Page:
    #: stored JSON of the episodes to grade, validated only when a worker takes one (see _EpisodeFeed)
    docs: list[dict[str, Any]]
    skipped: int


_DONE = object()


def _read_pages(
    store: store_base.EpisodeStore,
    query: store_base.EpisodeQuery,
    grader: graders_base.Grader,
    *,
    limit: int | None,
    retry_failed: bool,
    page_size: int,
) -> Iterator[_Page]:
    """Pages of episodes to grade (runs on the store thread). Skips episodes this grader version
    is done with and ids seen before in this run; stops after ``limit`` episodes to grade."""
    seen: set[str] = set()
    wanted = 0
    docs: list[dict[str, Any]] = []
    skipped = 0
    for data in store.iter_json(query, batch_size=page_size):
        episode_id = data.get("id")
        if not isinstance(episode_id, str) or episode_id in seen:
            continue
        seen.add(episode_id)
        if _done_by(data, grader.name, grader.version, retry_failed=retry_failed):
            skipped += 1
        else:
            docs.append(data)
            wanted += 1
        if len(docs) >= page_size or skipped >= 10 * page_size:
            yield _Page(docs, skipped)
            docs, skipped = [], 0
        if limit is not None and wanted >= limit:
            break
    if docs or skipped:
        yield _Page(docs, skipped)


class _EpisodeFeed:
    """Hands episodes to workers from pages read ahead on the store thread (one page in flight).

    Pages hold the stored JSON; an episode is validated into an ``Episode`` only when a worker takes
    it, so model objects live for one grading and die young: pages of validated models waiting in a
    buffer would survive into the garbage collector's old generation and make its full collections
    a large share of the cost of labeling with a rule grader.
    """

    def __init__(
        self,
        pages: Iterator[_Page],
        thread: _StoreThread,
        on_page: Callable[[_Page], None],
        on_invalid: Callable[[str], None],
    ) -> None:
        self._pages = pages
        self._thread = thread
        self._on_page = on_page
        self._on_invalid = on_invalid
        self._buffer: deque[dict[str, Any]] = deque()
        self._next: asyncio.Future[Any] | None = None
        self._done = False
        self._lock = asyncio.Lock()

    def _prefetch(self) -> None:
        self._next = asyncio.ensure_future(self._thread.call(next, self._pages, _DONE))

    async def next(self) -> ep.Episode | None:
        while True:
            while not self._buffer:
                if self._done:
                    return None
                async with self._lock:
                    if self._buffer or self._done:
                        continue
                    if self._next is None:
                        self._prefetch()
                    assert self._next is not None
                    page = await self._next
                    if page is _DONE:
                        self._done = True
                        self._next = None
                        continue
                    self._prefetch()
                    self._on_page(page)
                    self._buffer.extend(page.docs)
            data = self._buffer.popleft()
            try:
                return ep.Episode.model_validate(data)
            except pydantic.ValidationError as exc:
                episode_id = str(data.get("id"))
                logger.warning("episode %s is not valid, skipped: %s", episode_id, ep.validation_reason(exc))
                self._on_invalid(episode_id)

    async def aclose(self) -> None:
        """Wait for a read in flight and close the page generator (and the store cursor) on the store
        thread, where it ran."""
        if self._next is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._next
            self._next = None
        close = getattr(self._pages, "close", None)
        if callable(close):
            await self._thread.call(close)


# --------------------------------------------------------------------------------------------------
# Writing labels


def _write_labels(
    store: store_base.EpisodeStore, updates: Sequence[store_base.LabelUpdate]
) -> list[store_base.LabelWriteStatus]:
    """Write a batch (store thread): ``add_labels`` when the store has it, else one ``add_label`` each.
    Retries the part not yet written while the store is unavailable."""
    statuses: list[store_base.LabelWriteStatus] = []
    attempt = 0
    while len(statuses) < len(updates):
        try:
            if isinstance(store, store_base.BatchLabelWriter):
                statuses.extend(store.add_labels(updates[len(statuses) :]))
            else:
                for update in updates[len(statuses) :]:
                    statuses.append(_add_one(store, update))
        except store_base.StoreUnavailableError:
            attempt += 1
            if attempt >= STORE_WRITE_ATTEMPTS:
                raise
            logger.warning("store unavailable while writing labels; retry %d", attempt)
            time.sleep(STORE_RETRY_BASE_S * 2**attempt)
    return statuses


def _add_one(store: store_base.EpisodeStore, update: store_base.LabelUpdate) -> store_base.LabelWriteStatus:
    try:
        store.add_label(update.episode_id, update.label, expected_revision=update.expected_revision)
    except store_base.ConflictError:
        return store_base.LabelWriteStatus.CONFLICT
    except store_base.NotFoundError:
        return store_base.LabelWriteStatus.NOT_FOUND
    return store_base.LabelWriteStatus.APPLIED


def _resolve_conflicts(
    store: store_base.EpisodeStore, updates: Sequence[store_base.LabelUpdate], attempts: int = 3
) -> list[store_base.LabelWriteStatus]:
    """Re-read each conflicted episode; write again on the fresh revision unless this grader version
    labeled it meanwhile (then the update is dropped: CONFLICT). Runs on the store thread."""
    statuses: list[store_base.LabelWriteStatus] = []
    for update in updates:
        status = store_base.LabelWriteStatus.CONFLICT
        for _ in range(attempts):
            current = store.get(update.episode_id)
            if current is None:
                status = store_base.LabelWriteStatus.NOT_FOUND
                break
            label = update.label
            if any(
                lb.grader == label.grader
                and lb.grader_version == label.grader_version
                and (lb.score is not None or label.score is None)
                for lb in current.labels
            ):
                status = store_base.LabelWriteStatus.CONFLICT
                break
            status = _write_labels(store, [update._replace(expected_revision=current.revision)])[0]
            if status is not store_base.LabelWriteStatus.CONFLICT:
                break
        statuses.append(status)
    return statuses


class _LabelWriter:
    """Buffers label updates and writes them in batches on the store thread, one batch in flight
    while the next fills; a full buffer waits for the batch in flight (backpressure)."""

    def __init__(
        self,
        store: store_base.EpisodeStore,
        thread: _StoreThread,
        batch_size: int,
        on_written: Callable[[Sequence[store_base.LabelUpdate], list[store_base.LabelWriteStatus]], None],
    ) -> None:
        self._store = store
        self._thread = thread
        self._batch_size = batch_size
        self._on_written = on_written
        self._buffer: list[store_base.LabelUpdate] = []
        self._inflight: asyncio.Future[None] | None = None

    async def submit(self, update: store_base.LabelUpdate) -> None:
        self._buffer.append(update)
        if len(self._buffer) >= self._batch_size:
            await self._flush(force=False)

    async def close(self) -> None:
        await self._flush(force=True)

    async def _flush(self, *, force: bool) -> None:
        while True:
            inflight = self._inflight
            if inflight is not None:
                # Shielded: a worker cancelled while waiting must not cancel the write itself.
                try:
                    await asyncio.shield(inflight)
                finally:
                    if self._inflight is inflight and inflight.done():
                        self._inflight = None
                continue
            if not self._buffer or (not force and len(self._buffer) < self._batch_size):
                return
            batch, self._buffer = self._buffer, []
            self._inflight = asyncio.ensure_future(self._write(batch))
            if not force:
                return

    async def _write(self, batch: list[store_base.LabelUpdate]) -> None:
        statuses = await self._thread.call(_write_labels, self._store, batch)
        conflicted = [
            u for u, s in zip(batch, statuses, strict=True) if s is store_base.LabelWriteStatus.CONFLICT
        ]
        if conflicted:
            resolved = iter(await self._thread.call(_resolve_conflicts, self._store, conflicted))
            statuses = [next(resolved) if s is store_base.LabelWriteStatus.CONFLICT else s for s in statuses]
        self._on_written(batch, statuses)


# --------------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class LabelingProgress:
    """Passed to ``label_batch``'s ``progress`` callback, at most about ten times a second."""

    done: int
    #: an estimate taken at the start (matching episodes, capped by ``limit``); None if unknown
    total: int | None
    labeled: int
    failed: int
    skipped: int


@dataclass
class LabelingReport:
    agent_id: str
    grader: str
    grader_version: str
    auto_label: bool
    min_score: float | None
    #: episodes graded in this run (each once)
    graded: int = 0
    #: graded with a score (written or not)
    scored: int = 0
    #: labels with a score written to the store
    labeled: int = 0
    #: episodes whose grading failed after retries (a label with ``error`` written when auto-labeling)
    failed: int = 0
    #: already labeled by this grader version (resumed), or labeled by it concurrently
    skipped: int = 0
    #: scored below ``min_score``: not written, left for review (``label-episode``)
    below_min_score: int = 0
    #: stored episodes that no longer validate, left untouched (logged)
    invalid: int = 0
    #: episodes deleted between reading and writing
    vanished: int = 0
    retries: int = 0
    duration_s: float = 0.0
    mean_score: float | None = None
    std_score: float | None = None
    #: distinct failure messages and how often each occurred (at most ``MAX_ERROR_KINDS``)
    errors: dict[str, int] = field(default_factory=dict)
    #: the first error when the grader's backend never answered in this run (every grading failed
    #: with an error that may pass): the run stopped early and wrote none of those failures
    backend_down: str | None = None

    @property
    def episodes_per_second(self) -> float:
        return self.graded / self.duration_s if self.duration_s > 0 else 0.0

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "agentId": self.agent_id,
            "grader": self.grader,
            "graderVersion": self.grader_version,
            "autoLabel": self.auto_label,
            "minScore": self.min_score,
            "graded": self.graded,
            "scored": self.scored,
            "labeled": self.labeled,
            "failed": self.failed,
            "skipped": self.skipped,
            "belowMinScore": self.below_min_score,
            "invalid": self.invalid,
            "vanished": self.vanished,
            "retries": self.retries,
            "meanScore": self.mean_score,
            "stdScore": self.std_score,
            "durationSeconds": round(self.duration_s, 3),
            "episodesPerSecond": round(self.episodes_per_second, 1),
            "errors": dict(self.errors),
            "backendDown": self.backend_down,
        }


class _BackendDown(Exception):
    """Raised inside a run to stop it: ``OUTAGE_STOP_AFTER`` gradings failed before any answer."""


class SampleRecord(pydantic.BaseModel):
    """One graded episode of a sample test or dry run (RewardLabeling ``status.sample`` entries)."""

    model_config = pydantic.ConfigDict(alias_generator=to_camel, populate_by_name=True)

    episode_id: str
    score: float | None
    reason: str = ""
    error: str | None = None
    #: the error may pass by itself (a judge's 429, 5xx, timeout or connection refused), retries spent
    retryable: bool = pydantic.Field(default=False, exclude=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _record(graded: _Graded) -> SampleRecord:
    result = graded.result
    return SampleRecord(
        episode_id=graded.episode.id,
        score=result.score if result.error is None else None,
        reason=_cut(result.reason, ep.MAX_TEXT_CHARS),
        error=_cut(result.error) if result.error is not None else None,
        retryable=result.error is not None and result.retryable,
    )


def backend_down(records: Sequence[SampleRecord]) -> str | None:
    """The first error when the grader failed on every record with errors that may pass (a judge
    endpoint down, 429, 5xx, timeouts; retries spent), else None: grading may work again later.
    For a sample test's or a dry run's records: there is no result to judge the grader by."""
    if not records or not all(r.score is None and r.retryable for r in records):
        return None
    return next((r.error for r in records if r.error), "no score")


@dataclass
class SampleTestResult:
    grader: str
    grader_version: str
    records: list[SampleRecord]

    @property
    def average(self) -> float | None:
        scores = [r.score for r in self.records if r.score is not None]
        return math.fsum(scores) / len(scores) if scores else None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "grader": self.grader,
            "graderVersion": self.grader_version,
            "average": self.average,
            "records": [r.to_json_dict() for r in self.records],
        }


@dataclass
class DryRunResult:
    agent_id: str
    grader: str
    grader_version: str
    #: the sample size asked for; ``metrics.count + metrics.failed`` were graded
    sample_size: int
    seed: int
    metrics: dryrun.ScoreMetrics
    verdict: dryrun.Verdict
    ranges: dryrun.HealthyRanges
    records: list[SampleRecord]
    duration_s: float

    def to_json_dict(self, *, include_records: bool = False) -> dict[str, Any]:
        m = self.metrics
        data: dict[str, Any] = {
            "agentId": self.agent_id,
            "grader": self.grader,
            "graderVersion": self.grader_version,
            "sampleSize": self.sample_size,
            "count": m.count,
            "failed": m.failed,
            "mean": m.mean,
            "std": m.std,
            "min": m.min,
            "max": m.max,
            "fractionAboveZero": m.fraction_above_zero,
            "fractionPerfect": m.fraction_perfect,
            "histogram": list(m.histogram),
            "verdict": self.verdict.verdict.value,
            "diagnosis": self.verdict.messages,
            "findings": [d.to_json_dict() for d in self.verdict.diagnosis],
            "ranges": self.ranges.to_json_dict(),
            "seed": self.seed,
            "durationSeconds": round(self.duration_s, 3),
        }
        if include_records:
            data["records"] = [r.to_json_dict() for r in self.records]
        return data


# --------------------------------------------------------------------------------------------------
# The three entry points


def _engine(
    grader: graders_base.Grader,
    *,
    max_retries: int,
    timeout_s: float | None,
    requests_per_second: float | None,
    tokens_per_minute: float | None,
    backoff_base_s: float,
    backoff_max_s: float,
    seed: int | None,
) -> _GradingEngine:
    limiter = None
    if requests_per_second is not None or tokens_per_minute is not None:
        limiter = RateLimiter(requests_per_second, tokens_per_minute)
    return _GradingEngine(
        grader,
        max_retries=max_retries,
        timeout_s=timeout_s,
        limiter=limiter,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        rng=random.Random(seed),
    )


async def _grade_all(
    engine: _GradingEngine, episodes: Sequence[ep.Episode], concurrency: int
) -> list[_Graded]:
    """Grade a list (no writes); results in input order."""
    results: dict[str, _Graded] = {}
    queue = deque(episodes)

    async def source() -> ep.Episode | None:
        return queue.popleft() if queue else None

    async def handle(graded: _Graded) -> None:
        results[graded.episode.id] = graded

    await _run_workers(source, handle, engine, max(1, min(concurrency, len(episodes) or 1)))
    return [results[e.id] for e in episodes]


async def label_batch(
    store: store_base.EpisodeStore,
    grader: graders_base.Grader,
    *,
    agent_id: str,
    unlabeled_only: bool = False,
    limit: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    requests_per_second: float | None = None,
    tokens_per_minute: float | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    min_score: float | None = None,
    auto_label: bool = True,
    retry_failed: bool = True,
    progress: Callable[[LabelingProgress], None] | None = None,
    write_batch_size: int = WRITE_BATCH_SIZE,
    read_page_size: int = READ_PAGE_SIZE,
    backoff_base_s: float = 0.5,
    backoff_max_s: float = 30.0,
    seed: int | None = None,
) -> LabelingReport:
    """Grade an agent's episodes and write the scores as labels; see the module docstring.

    ``limit`` caps the episodes graded, oldest first (already-labeled ones skipped do not count). With
    ``auto_label=False`` nothing is written: a review pass that only reports. With ``min_score``,
    scores below it are not written either (left unlabeled for a person to review). With
    ``retry_failed`` (default) an episode whose earlier grading by this version failed is graded again
    (at most ``MAX_FAILED_ATTEMPTS`` failures per episode and grader version).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be within [0, 1], got {min_score}")
    if write_batch_size < 1 or read_page_size < 1:
        raise ValueError("write_batch_size and read_page_size must be at least 1")
    engine = _engine(
        grader,
        max_retries=max_retries,
        timeout_s=timeout_s,
        requests_per_second=requests_per_second,
        tokens_per_minute=tokens_per_minute,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        seed=seed,
    )
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    report = LabelingReport(
        agent_id=agent_id,
        grader=grader.name,
        grader_version=grader.version,
        auto_label=auto_label,
        min_score=min_score,
    )
    query = store_base.EpisodeQuery(
        agent_id=agent_id, since=since, until=until, labeled=False if unlabeled_only else None
    )
    started = time.perf_counter()
    score_sum = score_sq = 0.0
    errors: Counter[str] = Counter()
    last_progress = 0.0
    done = 0
    total: int | None = None
    # Failures that may pass, held back until the backend first answers (see the module docstring).
    answered = False
    held: list[store_base.LabelUpdate] = []

    def report_progress(force: bool = False) -> None:
        nonlocal last_progress
        if progress is None:
            return
        now = time.monotonic()
        if force or now - last_progress >= 0.1:
            last_progress = now
            progress(LabelingProgress(done, total, report.labeled, report.failed, report.skipped))

    def on_page(page: _Page) -> None:
        nonlocal done
        report.skipped += page.skipped
        done += page.skipped
        report_progress()

    def on_invalid(episode_id: str) -> None:
        nonlocal done
        report.invalid += 1
        done += 1

    def on_written(
        updates: Sequence[store_base.LabelUpdate], statuses: list[store_base.LabelWriteStatus]
    ) -> None:
        for update, status in zip(updates, statuses, strict=True):
            if status is store_base.LabelWriteStatus.APPLIED:
                if update.label.score is not None:
                    report.labeled += 1
            elif status is store_base.LabelWriteStatus.CONFLICT:
                report.skipped += 1  # labeled by this grader version concurrently
            else:
                report.vanished += 1

    async with _store_thread() as thread:
        if progress is not None:
            counted = await thread.call(_count_selected, store, query)
            total = counted if limit is None else min(counted, limit)
            report_progress(force=True)
        pages = _read_pages(
            store, query, grader, limit=limit, retry_failed=retry_failed, page_size=read_page_size
        )
        feed = _EpisodeFeed(pages, thread, on_page, on_invalid)
        writer = _LabelWriter(store, thread, write_batch_size, on_written)

        async def handle(graded: _Graded) -> None:
            nonlocal done, score_sum, score_sq, answered
            result = graded.result
            report.graded += 1
            done += 1
            label: ep.Label | None = None
            if result.error is None and result.score is not None:
                score = float(result.score)
                report.scored += 1
                score_sum += score
                score_sq += score * score
                if min_score is not None and score < min_score:
                    report.below_min_score += 1
                else:
                    label = ep.Label(
                        score=score,
                        grader=grader.name,
                        grader_version=grader.version,
                        reason=_cut(result.reason, ep.MAX_TEXT_CHARS),
                        at=datetime.now(UTC),
                    )
            else:
                report.failed += 1
                message = _cut(result.error or "grading failed")
                if graded.attempts > 1:
                    message = f"{message} (after {graded.attempts} attempts)"
                if len(errors) < MAX_ERROR_KINDS or message in errors:
                    errors[message] += 1
                label = ep.Label(
                    score=None,
                    grader=grader.name,
                    grader_version=grader.version,
                    reason=_cut(result.reason, ep.MAX_TEXT_CHARS),
                    error=message,
                    at=datetime.now(UTC),
                )
            update = (
                None
                if label is None
                else store_base.LabelUpdate(graded.episode.id, label, graded.episode.revision)
            )
            if not answered:
                if update is not None and update.label.error is not None and result.retryable:
                    held.append(update)  # the backend may be down: no try used yet
                    report_progress()
                    if len(held) >= OUTAGE_STOP_AFTER:
                        raise _BackendDown()
                    return
                answered = True  # it answered: what failed before it counts after all
                if auto_label:
                    for earlier in held:
                        await writer.submit(earlier)
                held.clear()
            if update is not None and auto_label:
                await writer.submit(update)
            report_progress()

        try:
            if limit != 0:
                with contextlib.suppress(_BackendDown):
                    await _run_workers(feed.next, handle, engine, concurrency)
        except BaseException:
            # Cancelled (an operator shutdown, the object deleted) or failed: the labels already
            # graded are written all the same, not thrown away with the judge calls they cost.
            with contextlib.suppress(Exception):
                await asyncio.shield(writer.close())
            raise
        else:
            await writer.close()
        finally:
            await feed.aclose()
    if held:  # the backend never answered: none of its failures was written (they keep their tries)
        report.backend_down = held[0].label.error

    report.retries = engine.retries
    report.errors = dict(errors.most_common())
    report.duration_s = time.perf_counter() - started
    if report.scored:
        report.mean_score = score_sum / report.scored
        report.std_score = math.sqrt(max(0.0, score_sq / report.scored - report.mean_score**2))
    report_progress(force=True)
    logger.info(
        "labeled %d, failed %d, skipped %d episodes of %s with %s@%s in %.2fs",
        report.labeled,
        report.failed,
        report.skipped,
        agent_id,
        grader.name,
        grader.version,
        report.duration_s,
    )
    return report


def _count_selected(store: store_base.EpisodeStore, query: store_base.EpisodeQuery) -> int:
    """The episodes ``query`` selects: the store's count, or a scan when a time window is set (the
    count knows agent and labeled only)."""
    if query.since is None and query.until is None:
        return store.count(query.agent_id, query.labeled)
    return sum(1 for _ in store.iter_json(query))


async def sample_test(
    store: store_base.EpisodeStore,
    grader: graders_base.Grader,
    agent_id: str,
    size: int = 5,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_retries: int = DEFAULT_MAX_RETRIES,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> SampleTestResult:
    """Grade the agent's ``size`` newest episodes (from ``since`` until ``until``), writing nothing:
    does the grader do what I meant?"""
    if size < 1:
        raise ValueError(f"sample size must be at least 1, got {size}")
    engine = _engine(
        grader,
        max_retries=max_retries,
        timeout_s=timeout_s,
        requests_per_second=None,
        tokens_per_minute=None,
        backoff_base_s=0.5,
        backoff_max_s=30.0,
        seed=None,
    )
    async with _store_thread() as thread:
        query = store_base.EpisodeQuery(agent_id=agent_id, since=since, until=until, limit=size)
        page = await thread.call(store.query, query)
    graded = await _grade_all(engine, page.items, concurrency)
    return SampleTestResult(
        grader=grader.name, grader_version=grader.version, records=[_record(g) for g in graded]
    )


def _reservoir_sample(
    store: store_base.EpisodeStore, query: store_base.EpisodeQuery, size: int, seed: int
) -> list[ep.Episode]:
    """``size`` episodes drawn uniformly (algorithm R, seeded: the same store and seed give the same
    sample), in store order. Runs on the store thread; validates only the chosen ones."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, dict[str, Any]]] = []
    for index, data in enumerate(store.iter_json(query)):
        if index < size:
            reservoir.append((index, data))
        else:
            slot = rng.randrange(index + 1)
            if slot < size:
                reservoir[slot] = (index, data)
    reservoir.sort(key=lambda item: item[0])
    sample: list[ep.Episode] = []
    for _, data in reservoir:
        try:
            sample.append(ep.Episode.model_validate(data))
        except pydantic.ValidationError as exc:
            logger.warning(
                "episode %s is not valid, left out of the sample: %s",
                data.get("id"),
                ep.validation_reason(exc),
            )
    return sample


async def dry_run(
    store: store_base.EpisodeStore,
    grader: graders_base.Grader,
    agent_id: str,
    sample_size: int = 200,
    ranges: dryrun.HealthyRanges | None = None,
    *,
    seed: int = 0,
    unlabeled_only: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    requests_per_second: float | None = None,
    tokens_per_minute: float | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    backoff_base_s: float = 0.5,
    backoff_max_s: float = 30.0,
) -> DryRunResult:
    """Grade a seeded random sample (of the episodes from ``since`` until ``until``) WITHOUT writing
    labels, then compute metrics and the verdict (against ``ranges``, the defaults when None)."""
    if sample_size < 1:
        raise ValueError(f"sample size must be at least 1, got {sample_size}")
    ranges = ranges or dryrun.HealthyRanges()
    engine = _engine(
        grader,
        max_retries=max_retries,
        timeout_s=timeout_s,
        requests_per_second=requests_per_second,
        tokens_per_minute=tokens_per_minute,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        seed=seed,
    )
    started = time.perf_counter()
    query = store_base.EpisodeQuery(
        agent_id=agent_id, since=since, until=until, labeled=False if unlabeled_only else None
    )
    async with _store_thread() as thread:
        sample = await thread.call(_reservoir_sample, store, query, sample_size, seed)
    graded = await _grade_all(engine, sample, concurrency)
    records = [_record(g) for g in graded]
    metrics = dryrun.score_metrics(r.score for r in records)
    return DryRunResult(
        agent_id=agent_id,
        grader=grader.name,
        grader_version=grader.version,
        sample_size=sample_size,
        seed=seed,
        metrics=metrics,
        verdict=dryrun.dry_run_verdict(metrics, ranges),
        ranges=ranges,
        records=records,
        duration_s=time.perf_counter() - started,
    )


def label_summary(report: LabelingReport) -> str:
    """One line for logs and events: ``labeled 950, failed 3, skipped 47 (mean 0.62) in 1.2s``."""
    mean = f" (mean {report.mean_score:.2f})" if report.mean_score is not None else ""
    return (
        f"labeled {report.labeled}, failed {report.failed}, skipped {report.skipped}{mean} "
        f"in {report.duration_s:.1f}s"
    )
