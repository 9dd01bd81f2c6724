"""The collector: an aiohttp service that validates episode batches and commits them to the store.

Agents (through ``capture.EpisodeRecorder``) post batches to ``POST /v1/episodes``; every item is
validated with ``api.episode.Episode`` and the valid ones are written through ``store``'s
``EpisodeStore.insert_many``. ``lightning-op collector`` (``cli/collector_cmd.py``) runs it.

Contract of ``POST /v1/episodes``:

- Body: a JSON array of episodes (a single JSON object is taken as a batch of one) or JSON Lines,
  UTF-8, optionally ``Content-Encoding: gzip``. The format is read from the body, not from the
  Content-Type: a body starting with ``[`` is an array, one JSON document an episode, anything else
  JSON Lines (errors name the line). Clients send JSON Lines as ``application/json``, or with plain
  ``curl --data-binary`` as form-urlencoded, or with no Content-Type; ``application/x-ndjson`` (and
  the other JSON Lines types) always means JSON Lines. Other Content-Types (multipart, XML...) are
  refused with 415. The body, and the body after decompression, must fit in
  ``max_body_bytes`` (413 otherwise: that is the gzip-bomb guard), with at most ``max_items`` items.
  JSON is parsed strictly (orjson: no NaN or Infinity literals, no BOM).
- 200 with per-item results in input order when at least one item was stored or already present (or
  the batch was empty); 422 with the same body when every item was rejected::

      {"accepted": 2, "duplicates": 1, "rejected": 1,
       "results": [{"index": 0, "id": "ep-...", "status": "accepted", "reason": null}, ...]}

  ``status`` is ``accepted`` (written now), ``duplicate`` (that id is already stored: retries are
  safe) or ``rejected`` (``reason`` names the fields that were wrong, or says the store refused the
  episode (over ``MAX_EPISODE_BYTES``, 1 MiB, as stored: its size is given), or that it has none of
  ``state.query``, ``action`` or ``messages``; resending will not help). The good items of a mixed
  batch are kept. A response is sent only after its episodes are committed.
- 400: not UTF-8, not JSON, not an array/object, bad gzip; 401: missing or wrong bearer token (when
  a token is configured); 413: too large; 415: unsupported Content-Type or Content-Encoding;
  429 with ``Retry-After``: the write queue is full, or the bodies of the requests being handled
  already hold ``max_inflight_bytes``; 503 with ``Retry-After``: the store cannot write.
  Error bodies are ``{"error": "<what was wrong and what to do>"}``.

Writes go through a bounded queue to one writer (SQLite allows one writer): the writer takes every
batch waiting in the queue, writes them in one ``insert_many`` transaction (group commit) on a
dedicated thread, and then answers each request. The store is opened, used and closed on that thread.
The queue holds ``queue_size`` batches (requests); one group commit takes up to ``max_group_episodes``.
Memory is bounded by ``max_inflight_bytes`` (default 4 x ``max_body_bytes``): the bodies of every
request being read, parsed, queued or written, counted from its Content-Length (or as read, for a
chunked body) until it is answered; a request beyond it gets 429 at once instead of growing the heap
with the number of agents uploading. Parsed, a body takes about 10x its size (measured on typical
JSON Lines episodes: 8 MiB of body, 81 MiB of episodes, 103 MiB at the peak), so the process needs
about 12 x ``max_inflight_bytes`` above its base (the chart's 512 MiB limit fits the default).

On SIGTERM or SIGINT (``serve``) the collector stops listening, lets the requests in flight finish
(their batches are committed and answered), closes the store and returns.

``GET /healthz`` (the process answers), ``GET /readyz`` (the store answers a read; a full write
queue is backpressure, answered with 429 and Retry-After on ingest and reported in the body here, not
unreadiness: taking the only replica out of its Service would turn those 429s into connection errors
and stop the scrapes) and ``GET /metrics`` (Prometheus, one registry per app) need no token: probes
and scrapers carry no secret, and they expose only counts. Episode contents are never logged (they
may hold personal data); logs carry counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import logging
import re
import signal
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import prometheus_client
import pydantic
from aiohttp import web

from lightning_op import store as store_mod
from lightning_op.api import episode as ep
from lightning_op.store import base as store_base
from lightning_op.store import redaction

log = logging.getLogger(__name__)

T = TypeVar("T")

TOKEN_ENV = "LIGHTNING_COLLECTOR_TOKEN"
EPISODES_PATH = "/v1/episodes"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_QUEUE_SIZE = 64
DEFAULT_MAX_ITEMS = 10_000
# Bodies of requests in flight, as a multiple of max_body_bytes, when max_inflight_bytes is not set.
DEFAULT_INFLIGHT_BODIES = 4
# Upper bound on one group commit: bounds a transaction's duration and the writer's memory.
DEFAULT_MAX_GROUP_EPISODES = 10_000
JSON_TYPES = frozenset({"application/json"})
JSONL_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-lines",
        "application/jsonlines",
    }
)
# Types that say nothing about the body's format (what curl and other plain clients send): the body
# decides. No Content-Type at all is taken the same way.
RAW_TYPES = frozenset({"application/x-www-form-urlencoded", "text/plain", "application/octet-stream"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Bodies above this are parsed and validated on a worker thread so probes stay responsive.
_INLINE_PARSE_BYTES = 512 * 1024
_READ_CHUNK = 256 * 1024
_RETRY_AFTER_QUEUE_FULL_S = 1
_RETRY_AFTER_UNAVAILABLE_S = 5
_READY_PROBE_TIMEOUT_S = 2.0
_PROBE_ID = "lightning-collector-readyz-probe"


class ItemStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class CollectorConfig:
    """How a collector runs. ``store_url`` None means the default store (``store.default_url``)."""

    store_url: str | None = None
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_items: int = DEFAULT_MAX_ITEMS
    max_group_episodes: int = DEFAULT_MAX_GROUP_EPISODES
    # Bytes of request bodies held at once by the requests being handled (None: 4 x max_body_bytes).
    max_inflight_bytes: int | None = None
    # How long SIGTERM waits for in-flight requests before closing their connections.
    shutdown_timeout: float = 30.0
    # Redaction applied by the store before anything is written: builtin detector names (None: all)
    # and custom regexes (EpisodeCapture's spec.redaction).
    redact_builtins: tuple[str, ...] | None = None
    redact_patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "queue_size", "max_items", "max_group_episodes"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"collector {name} must be at least 1, got {value}")
        if self.max_inflight_bytes is not None and self.max_inflight_bytes < self.max_body_bytes:
            raise ValueError(
                f"collector max_inflight_bytes ({self.max_inflight_bytes}) is below max_body_bytes "
                f"({self.max_body_bytes}): a body of the largest allowed size could never be taken"
            )
        if self.token is not None and not self.token.strip():
            raise ValueError("collector token is empty: give a non-empty token or none")

    @property
    def inflight_limit(self) -> int:
        return self.max_inflight_bytes or DEFAULT_INFLIGHT_BODIES * self.max_body_bytes


class ByteBudget:
    """Bytes of request bodies held by the requests being handled; used on the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextlib.contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """One request's share of the budget, given back when the request is answered."""
        share = Reservation(self)
        try:
            yield share
        finally:
            self.held -= share.size


class Reservation:
    """The bytes one request holds of a ``ByteBudget``."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> bool:
        """Hold ``size`` bytes in all (nothing to do if it holds that many already); False, and
        nothing more held, when that would take the budget over its limit."""
        extra = size - self.size
        if extra <= 0:
            return True
        if self.budget.held + extra > self.budget.limit:
            return False
        self.budget.held += extra
        self.size = size
        return True


class ListenError(Exception):
    """The collector could not bind its address (port in use, bad host)."""


class QueueFullError(Exception):
    """The write queue is full; the client should retry after a moment."""


class CollectorMetrics:
    """The collector's Prometheus metrics, in a registry of their own (one per app, so tests and
    several apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        r = self.registry
        self.accepted = prometheus_client.Counter(
            "lightning_collector_episodes_accepted", "Episodes committed to the store.", registry=r
        )
        self.duplicates = prometheus_client.Counter(
            "lightning_collector_episodes_duplicate",
            "Episodes whose id was already stored (retried batches).",
            registry=r,
        )
        self.rejected = prometheus_client.Counter(
            "lightning_collector_episodes_rejected",
            "Episodes rejected by validation, by the first error's type.",
            ["reason"],
            registry=r,
        )
        self.requests = prometheus_client.Counter(
            "lightning_collector_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.batch_seconds = prometheus_client.Histogram(
            "lightning_collector_batch_seconds",
            "Time from receiving a batch to acknowledging it (parse, validate, queue, commit).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.commit_seconds = prometheus_client.Histogram(
            "lightning_collector_commit_seconds",
            "Duration of one group commit (one store transaction).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.commit_episodes = prometheus_client.Histogram(
            "lightning_collector_commit_episodes",
            "Episodes written by one group commit.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.queue_depth = prometheus_client.Gauge(
            "lightning_collector_queue_depth", "Batches waiting for the writer.", registry=r
        )
        self.pending = prometheus_client.Gauge(
            "lightning_collector_batches_pending",
            "Batches received and not yet answered: queued or being written.",
            registry=r,
        )
        self.queue_capacity = prometheus_client.Gauge(
            "lightning_collector_queue_capacity", "Size of the write queue (batches).", registry=r
        )
        self.inflight_bytes = prometheus_client.Gauge(
            "lightning_collector_inflight_bytes",
            "Bytes of request bodies held by the requests being handled.",
            registry=r,
        )
        self.inflight_limit = prometheus_client.Gauge(
            "lightning_collector_inflight_limit_bytes",
            "Most bytes of request bodies held at once (429 beyond).",
            registry=r,
        )


# What the writer did with one episode, and why when it was not accepted.
Outcome = tuple[ItemStatus, str | None]


class _Pending:
    """One request's validated episodes waiting for the writer, and the future its handler awaits."""

    __slots__ = ("episodes", "future")

    def __init__(self, episodes: list[ep.Episode], future: asyncio.Future[list[Outcome]]) -> None:
        self.episodes = episodes
        self.future = future


class StoreWriter:
    """The single writer: a bounded queue of batches, written in groups on one dedicated thread.

    While one group is being committed, new batches wait in the queue; the next commit takes all of
    them (up to ``max_group_episodes``) in one transaction. The store is opened, used and closed on the
    writer thread, so backends bound to their creating thread (sqlite3) work unchanged.
    """

    def __init__(
        self,
        store_factory: Callable[[], store_base.EpisodeStore],
        *,
        queue_size: int,
        max_group_episodes: int,
        metrics: CollectorMetrics,
    ) -> None:
        self._store_factory = store_factory
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_size)
        self._max_group = max_group_episodes
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-writer")
        self._store: store_base.EpisodeStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Future[ep.Episode | None] | None = None
        self.committed_groups = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def full(self) -> bool:
        return self._queue.full()

    async def _in_thread(self, func: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def start(self) -> None:
        self._store = await self._in_thread(self._store_factory)
        self._task = asyncio.create_task(self._run(), name="collector-writer")

    def submit(self, episodes: list[ep.Episode]) -> asyncio.Future[list[Outcome]]:
        """Queue a validated batch; the future gives one status per episode once it is committed."""
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(episodes, future))
        except asyncio.QueueFull:
            raise QueueFullError from None
        self._metrics.queue_depth.set(self._queue.qsize())
        self._metrics.pending.inc()
        future.add_done_callback(lambda _: self._metrics.pending.dec())
        return future

    async def probe(self) -> str | None:
        """None when the store answers a read in time, else why not."""
        store = self._store
        if store is None or self._task is None or self._task.done():
            return "the writer is not running"
        # One probe at a time on the writer thread: a stuck store must not collect a backlog of them.
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._in_thread(lambda: store.get(_PROBE_ID)))
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), _READY_PROBE_TIMEOUT_S)
        except TimeoutError:
            return f"the store did not answer within {_READY_PROBE_TIMEOUT_S:g} s"
        except Exception as exc:  # any failure means not ready; the reason goes to the probe's body
            return f"the store cannot be read: {type(exc).__name__}: {exc}"
        return None

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            size = len(group[0].episodes)
            while size < self._max_group and not self._queue.empty():
                pending = self._queue.get_nowait()
                group.append(pending)
                size += len(pending.episodes)
            self._metrics.queue_depth.set(self._queue.qsize())
            try:
                await self._write_group(group, size)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _write_group(self, group: list[_Pending], size: int) -> None:
        batches = [pending.episodes for pending in group]
        started = time.perf_counter()
        try:
            results = await self._in_thread(lambda: self._commit(batches))
        except store_base.StoreUnavailableError as exc:
            log.warning(
                "store unavailable, %d episodes from %d requests not written: %s", size, len(group), exc
            )
            for pending in group:
                _set_exception(pending.future, exc)
            return
        except Exception as exc:
            if len(group) == 1:
                log.error("writing %d episodes failed: %s: %s", size, type(exc).__name__, exc)
                _set_exception(group[0].future, exc)
                return
            # One request's batch must not fail the others grouped with it: write them one by one.
            log.warning("group commit of %d requests failed (%s); writing them separately", len(group), exc)
            for pending in group:
                await self._write_group([pending], len(pending.episodes))
            return
        elapsed = time.perf_counter() - started
        self.committed_groups += 1
        self._metrics.commit_seconds.observe(elapsed)
        self._metrics.commit_episodes.observe(size)
        log.debug("committed %d episodes from %d requests in %.1f ms", size, len(group), elapsed * 1000)
        for pending, statuses in zip(group, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(statuses)

    def _commit(self, batches: Sequence[Sequence[ep.Episode]]) -> list[list[Outcome]]:
        """Runs on the writer thread: one transaction for every batch of the group."""
        store = self._store
        assert store is not None
        seen: set[str] = set()
        unique: list[ep.Episode] = []
        for batch in batches:
            for episode in batch:
                if episode.id not in seen:
                    seen.add(episode.id)
                    unique.append(episode)
        refused: dict[str, str] = {}
        try:
            accepted = set(store.insert_many(unique).accepted) if unique else set()
        except store_base.StoreUnavailableError:
            raise
        except (ValueError, store_base.StoreError):
            # The store refused one episode (say, a field grown past its limit by redaction), which
            # fails the whole transaction: write them one by one so only that episode is rejected.
            accepted = set()
            for episode in unique:
                try:
                    accepted.update(store.insert_many([episode]).accepted)
                except store_base.StoreUnavailableError:
                    raise
                except (ValueError, store_base.StoreError) as exc:
                    refused[episode.id] = f"refused by the store: {exc}"
        # The first occurrence of a newly written id is 'accepted'; any later one in the group and any
        # id that was already stored is a 'duplicate'.
        out: list[list[Outcome]] = []
        for batch in batches:
            outcomes: list[Outcome] = []
            for episode in batch:
                if episode.id in accepted:
                    accepted.discard(episode.id)
                    outcomes.append((ItemStatus.ACCEPTED, None))
                elif episode.id in refused:
                    outcomes.append((ItemStatus.REJECTED, refused[episode.id]))
                else:
                    outcomes.append((ItemStatus.DUPLICATE, "already stored"))
            out.append(outcomes)
        return out

    async def stop(self, timeout: float) -> None:
        """Write what is queued (up to ``timeout``), stop the writer and close the store."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.error("shutdown: %d batches still queued after %.0f s, not written", self.depth, timeout)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        unavailable = store_base.StoreUnavailableError("the collector is shutting down")
        while not self._queue.empty():
            _set_exception(self._queue.get_nowait().future, unavailable)
        store, self._store = self._store, None
        if store is not None:
            await self._in_thread(store.close)
        self._executor.shutdown(wait=True)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class RequestError(Exception):
    """A whole request is refused: HTTP ``status`` and a message saying what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ParsedBatch:
    """A request body after parsing and validation, in input order."""

    # For each input item: the valid episode, or (id if any, reason, metric label) when rejected.
    items: list[ep.Episode | tuple[str | None, str, str]]

    @property
    def valid(self) -> list[ep.Episode]:
        return [item for item in self.items if isinstance(item, ep.Episode)]


class _LineError:
    """A JSON Lines line that is not JSON: rejected as one item, the rest of the body is kept."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing more than ``limit`` bytes of output (gzip bombs)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RequestError(
            400, f"body is not valid gzip ({exc}); send it uncompressed or gzip it whole"
        ) from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise RequestError(
            413, f"body decompresses to more than {limit} bytes, the collector's limit: send smaller batches"
        )
    if not decompressor.eof:
        raise RequestError(400, "gzip body is truncated: the gzip stream does not end")
    if decompressor.unused_data:
        raise RequestError(400, "data after the end of the gzip stream: send one gzip member")
    return out


def _check_utf8(body: bytes) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start}): send UTF-8 JSON") from None


def decode_items(body: bytes, content_type: str, max_items: int) -> list[Any]:
    """The items of a body: a JSON array (or one object) or JSON Lines; raises ``RequestError``.

    The body decides, whatever ``content_type`` says (a JSON Lines type only makes a body that is
    not an array JSON Lines from the start). Parsed with orjson (strict JSON: no NaN or Infinity,
    nesting up to 1024 levels; the Episode model then bounds free-form JSON to ``MAX_JSON_DEPTH``).
    """
    starts_array = body.lstrip()[:1] == b"["
    if content_type in JSONL_TYPES and not starts_array:
        return _json_lines(body, max_items)
    if not body.strip():
        raise RequestError(400, "body is empty: send a JSON array of episodes or JSON Lines")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        _check_utf8(body)
        if not starts_array and _a_line_is_an_object(body):
            return _json_lines(body, max_items)
        raise RequestError(
            400, f"body is not valid JSON: {exc}; send a JSON array of episodes or JSON Lines"
        ) from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise RequestError(
            400, f"body is a JSON {_json_type(data)}: send a JSON array of episodes (or one episode object)"
        )
    if len(data) > max_items:
        raise RequestError(
            413, f"batch has {len(data)} episodes, more than the collector's limit of {max_items}: split it"
        )
    return data


def _a_line_is_an_object(body: bytes) -> bool:
    """Whether some line of a body that does not parse whole is a JSON object of its own: then it is
    JSON Lines with bad lines (each rejected by number, the good ones kept), not one broken document.
    Not only the first line: JSON Lines whose first line is cut must keep the rest."""
    for line in body.split(b"\n"):
        if line.strip():
            try:
                if isinstance(orjson.loads(line), dict):
                    return True
            except orjson.JSONDecodeError:
                continue
    return False


def _json_lines(body: bytes, max_items: int) -> list[Any]:
    """One item per non-blank line; a line that is not JSON is one rejected item naming its number."""
    _check_utf8(body)
    lines = [(number, line) for number, line in enumerate(body.split(b"\n"), start=1) if line.strip()]
    if len(lines) > max_items:
        raise RequestError(
            413,
            f"batch has {len(lines)} episodes, more than the collector's limit of {max_items}: split it",
        )
    items: list[Any] = []
    for number, line in lines:
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            items.append(_LineError(f"line {number} is not valid JSON: {exc}"))
    return items


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def validate_items(items: Sequence[Any]) -> ParsedBatch:
    """Validate every item with the Episode model; a bad item is rejected alone, with a reason."""
    out: list[ep.Episode | tuple[str | None, str, str]] = []
    validate = ep.Episode.model_validate
    for raw in items:
        if isinstance(raw, _LineError):
            out.append((None, raw.reason, "invalid_json"))
            continue
        if not isinstance(raw, dict):
            out.append(
                (None, f"expected an episode (a JSON object), got a JSON {_json_type(raw)}", "not_object")
            )
            continue
        try:
            episode = validate(raw)
        except pydantic.ValidationError as exc:
            errors = exc.errors()
            kind = str(errors[0].get("type", "invalid")) if errors else "invalid"
            out.append((_raw_id(raw), ep.validation_reason(exc), kind))
        except (ValueError, TypeError, RecursionError) as exc:
            out.append((_raw_id(raw), f"invalid episode: {type(exc).__name__}", "invalid"))
        else:
            empty = episode.content_problem()
            out.append(episode if empty is None else (_raw_id(raw), empty, "no_content"))
    return ParsedBatch(out)


def _raw_id(raw: dict[str, Any]) -> str | None:
    value = raw.get("id")
    if isinstance(value, str) and 0 < len(value) <= ep.MAX_ID_CHARS:
        return value
    return None


def parse_body(body: bytes, content_type: str, max_items: int) -> ParsedBatch:
    return validate_items(decode_items(body, content_type, max_items))


def ids_from_stored_content(parsed: ParsedBatch, redactor: redaction.Redactor) -> ParsedBatch:
    """An episode sent without an id gets one derived from what the store keeps, its redacted
    content: derived from the content as sent, the id would fingerprint what redaction removes (a
    redacted phone number is found again from the hash in milliseconds). Deterministic still, so a
    resent batch maps to the same ids."""
    for index, item in enumerate(parsed.items):
        if isinstance(item, ep.Episode) and item.id_derived:
            try:
                clean = redactor.mark_redacted(item)  # so the store does not scan it a second time
            except ValueError as exc:
                # A field grown past its limit by redaction: this episode alone is refused, as the
                # store would refuse it; the rest of the batch is written.
                parsed.items[index] = (None, f"refused by the store: {exc}", "store_refused")
                continue
            if clean.redactions != item.redactions:
                clean.id = ep.deterministic_id(clean)
            parsed.items[index] = clean
    return parsed


_STATE: web.AppKey[Collector] = web.AppKey("lightning_collector")


class Collector:
    """The request handlers and their state; ``create_app`` wires one into an aiohttp app."""

    def __init__(
        self, config: CollectorConfig, store_factory: Callable[[], store_base.EpisodeStore] | None = None
    ) -> None:
        self.config = config
        self.metrics = CollectorMetrics()
        self.metrics.queue_capacity.set(config.queue_size)
        redactor = redaction.Redactor(builtins=config.redact_builtins, patterns=config.redact_patterns)
        self.redactor = redactor
        factory = store_factory or (lambda: store_mod.open_store(config.store_url, redaction=redactor))
        self.writer = StoreWriter(
            factory,
            queue_size=config.queue_size,
            max_group_episodes=config.max_group_episodes,
            metrics=self.metrics,
        )
        self.budget = budget = ByteBudget(config.inflight_limit)
        self.metrics.inflight_bytes.set_function(lambda: budget.held)
        self.metrics.inflight_limit.set(budget.limit)
        self._token = config.token.strip().encode() if config.token else None
        self.totals = {status: 0 for status in ItemStatus}
        self.requests = 0

    # -- middleware ------------------------------------------------------------------------------

    @web.middleware
    async def observe(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.path if request.path in OPEN_PATHS or request.path == EPISODES_PATH else "other"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.metrics.requests.labels(route, str(exc.status)).inc()
            raise
        except Exception:
            self.metrics.requests.labels(route, "500").inc()
            raise
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    @web.middleware
    async def authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._token is None or request.path in OPEN_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _error(401, "missing bearer token: send 'Authorization: Bearer <token>'", _CHALLENGE)
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return _error(401, "wrong bearer token", _CHALLENGE)
        return await handler(request)

    # -- handlers ----------------------------------------------------------------------------------

    async def post_episodes(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await self._ingest(request)
        except RequestError as exc:
            headers = None
            if exc.status == 429:
                headers = {"Retry-After": str(_RETRY_AFTER_QUEUE_FULL_S)}
            elif exc.status == 503:
                headers = {"Retry-After": str(_RETRY_AFTER_UNAVAILABLE_S)}
            return _error(exc.status, exc.message, headers)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return response

    async def _ingest(self, request: web.Request) -> web.StreamResponse:
        if self.writer.full():
            raise RequestError(429, "the collector's write queue is full: retry after the Retry-After delay")
        # aiohttp reports a missing Content-Type as application/octet-stream, one of RAW_TYPES.
        content_type = request.content_type
        if not (
            content_type in JSON_TYPES
            or content_type in JSONL_TYPES
            or content_type in RAW_TYPES
            or content_type.endswith("+json")
        ):
            raise RequestError(
                415,
                f"Content-Type {request.headers.get('Content-Type', '(none)')!r} is not supported: send "
                "the body as is (a JSON array of episodes or JSON Lines) with application/json, "
                "application/x-ndjson or no Content-Type",
            )
        charset = request.charset
        if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
            raise RequestError(415, f"charset {charset!r} is not supported: send UTF-8")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", ""):
            raise RequestError(415, f"Content-Encoding {encoding!r} is not supported: send gzip or identity")

        with self.budget.reservation() as share:
            body = await _read_limited(request, self.config.max_body_bytes, share)
            return await self._handle_body(request, body, content_type, encoding)

    async def _handle_body(
        self, request: web.Request, body: bytes, content_type: str, encoding: str
    ) -> web.StreamResponse:
        """Parse, validate and write one read body; answer with per-item results."""
        self.requests += 1
        limit, max_items = self.config.max_body_bytes, self.config.max_items

        redactor = self.redactor

        def parse() -> ParsedBatch:
            raw = gunzip_limited(body, limit) if encoding in ("gzip", "x-gzip") else body
            return ids_from_stored_content(parse_body(raw, content_type, max_items), redactor)

        if len(body) <= _INLINE_PARSE_BYTES and encoding in ("identity", ""):
            parsed = parse()
        else:
            parsed = await asyncio.to_thread(parse)

        valid = parsed.valid
        statuses: list[Outcome] = []
        if valid:
            try:
                future = self.writer.submit(valid)
            except QueueFullError:
                raise RequestError(
                    429, "the collector's write queue is full: retry after the Retry-After delay"
                ) from None
            try:
                # Shielded: a client that hangs up does not cancel a commit other batches share.
                statuses = await asyncio.shield(future)
            except store_base.StoreUnavailableError as exc:
                raise RequestError(503, f"the store cannot write right now ({exc}): retry later") from None
            except Exception as exc:
                raise RequestError(
                    500,
                    f"the store failed to write the batch ({type(exc).__name__}); see the collector's log",
                ) from None
        return self._respond(parsed, statuses)

    def _respond(self, parsed: ParsedBatch, statuses: list[Outcome]) -> web.Response:
        results: list[dict[str, Any]] = []
        counts = {status: 0 for status in ItemStatus}
        written = iter(statuses)
        for index, item in enumerate(parsed.items):
            if isinstance(item, ep.Episode):
                status, reason = next(written)
                if status is ItemStatus.REJECTED:
                    self.metrics.rejected.labels("store_refused").inc()
                results.append({"index": index, "id": item.id, "status": status.value, "reason": reason})
            else:
                item_id, reason, kind = item
                status = ItemStatus.REJECTED
                self.metrics.rejected.labels(kind).inc()
                results.append({"index": index, "id": item_id, "status": status.value, "reason": reason})
            counts[status] += 1
        self.metrics.accepted.inc(counts[ItemStatus.ACCEPTED])
        self.metrics.duplicates.inc(counts[ItemStatus.DUPLICATE])
        for status, count in counts.items():
            self.totals[status] += count
        body = {
            "accepted": counts[ItemStatus.ACCEPTED],
            "duplicates": counts[ItemStatus.DUPLICATE],
            "rejected": counts[ItemStatus.REJECTED],
            "results": results,
        }
        all_rejected = bool(results) and counts[ItemStatus.REJECTED] == len(results)
        return _json(body, status=422 if all_rejected else 200)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        full = self.writer.full()
        if not full:  # a full queue means the writer is busy: the probe would only wait behind it
            problem = await self.writer.probe()
            if problem is not None:
                return _json({"status": "not ready", "reason": problem}, status=503)
        return _json({"status": "ready", "queueDepth": self.writer.depth, "queueFull": full})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        self.metrics.queue_depth.set(self.writer.depth)
        output = prometheus_client.generate_latest(self.metrics.registry)
        return web.Response(body=output, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    # -- lifecycle ---------------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        await self.writer.start()

    async def on_cleanup(self, app: web.Application) -> None:
        await self.writer.stop(self.config.shutdown_timeout)
        log.info(
            "collector stopped: %d requests, %d episodes accepted, %d duplicates, %d rejected",
            self.requests,
            self.totals[ItemStatus.ACCEPTED],
            self.totals[ItemStatus.DUPLICATE],
            self.totals[ItemStatus.REJECTED],
        )


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lightning-collector"'}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status, headers)


async def _read_limited(request: web.Request, limit: int, share: Reservation) -> bytes:
    """The body, at most ``limit`` bytes (413). ``share`` holds its size first (the Content-Length,
    or as much as was read, for a chunked body); 429 when the budget has no room for it."""
    too_large = f"body is larger than {limit} bytes, the collector's limit: send smaller batches"
    busy = RequestError(
        429,
        f"the collector is holding {share.budget.limit} bytes of request bodies already: retry after "
        "the Retry-After delay",
    )
    if request.content_length is not None:
        if request.content_length > limit:
            raise RequestError(413, too_large)
        if not share.grow_to(request.content_length):
            raise busy
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise RequestError(413, too_large)
        if not share.grow_to(size):
            raise busy
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(
    config: CollectorConfig, *, store_factory: Callable[[], store_base.EpisodeStore] | None = None
) -> web.Application:
    """An aiohttp app serving the collector. The store is opened on startup (on the writer thread)
    with ``store_factory``, by default ``store.open_store(config.store_url)``, and closed on cleanup.

    Run it with ``serve`` (or an ``aiohttp.web.AppRunner`` created with ``auto_decompress=False``,
    so that gzip bodies are decompressed here, under the size limit).
    """
    collector = Collector(config, store_factory)
    app = web.Application(middlewares=[collector.observe, collector.authenticate])
    app[_STATE] = collector
    app.router.add_post(EPISODES_PATH, collector.post_episodes)
    app.router.add_get("/healthz", collector.healthz)
    app.router.add_get("/readyz", collector.readyz)
    app.router.add_get("/metrics", collector.metrics_endpoint)
    app.on_startup.append(collector.on_startup)
    app.on_cleanup.append(collector.on_cleanup)
    return app


def collector_of(app: web.Application) -> Collector:
    return app[_STATE]


def make_runner(app: web.Application, config: CollectorConfig) -> web.AppRunner:
    # No access log: it would cost more than validating a small batch, and says nothing counts don't.
    return web.AppRunner(
        app, access_log=None, auto_decompress=False, shutdown_timeout=config.shutdown_timeout
    )


def _safe_url(url: str | None) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url) if url else "(default store)"


async def serve(
    config: CollectorConfig,
    host: str,
    port: int,
    *,
    stop: asyncio.Event | None = None,
    store_factory: Callable[[], store_base.EpisodeStore] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set): then stop accepting connections, finish the
    requests in flight, write what is queued, close the store and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    app = create_app(config, store_factory=store_factory)
    runner = make_runner(app, config)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info(
            "collector listening on http://%s:%d (store %s, auth %s, max body %d bytes, queue %d batches)",
            host,
            bound,
            _safe_url(config.store_url),
            "on" if config.token else "off",
            config.max_body_bytes,
            config.queue_size,
        )
        await stop.wait()
        log.info("collector stopping: draining %d queued batches", collector_of(app).writer.depth)
    finally:
        await runner.cleanup()
        for sig in signals:
            loop.remove_signal_handler(sig)
