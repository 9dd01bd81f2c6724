"""The capture client: what an agent uses to record its interactions as episodes.

``EpisodeRecorder`` keeps recorded episodes in a bounded in-memory buffer and posts them in batches to
the collector (``server``, ``POST /v1/episodes``) from one background daemon thread, with httpx.
Recording costs microseconds and never blocks or raises into the agent: when the collector is slow or
down, episodes wait in the buffer, and when the buffer is full new ones are dropped and counted in
``stats`` (logged once). Episodes are validated with ``api.episode.Episode`` on the background thread;
the id is derived from agent, session, turn and content, so a retried batch never duplicates.

Configuration comes from the environment that ``EpisodeCapture`` sets on the agent's Deployment
(``ENABLE_EPISODE_CAPTURE``, ``EPISODE_COLLECTOR_URL``, ``EPISODE_AGENT_ID``,
``EPISODE_SAMPLING_RATE``, ``EPISODE_REDACT_BUILTINS``, ``EPISODE_REDACT_PATTERNS``,
``EPISODE_COLLECTOR_TOKEN``; ``EpisodeRecorder.from_env()``) or from arguments. ``modelVersion`` is
``TUNED_MODEL_NAME`` when ``USE_TUNED_MODEL=true``, else ``MODEL_NAME`` (set by ``ModelPromotion``),
unless given.

Redaction: the EpisodeCapture's ``spec.redaction`` (builtins comma-separated, patterns a JSON array)
becomes a ``store.redaction.Redactor`` that runs on the background thread, before an episode is
serialised for sending, so those values never leave the agent. The collector redacts again with its
own detectors as a safety net. The client fails safe: redaction env it cannot use (not JSON, a pattern
that does not compile here, an unknown builtin) turns capture off with a logged error, since every
episode would meet the same settings, and an episode the redactor fails on is dropped (counted in
``stats['redaction_failed']``): nothing is sent unredacted.

Usage::

    recorder = EpisodeRecorder.from_env()

    with recorder.record(query=user_text, session_id=sid, turn=n) as rec:
        rec.action("get_weather", {"city": "Paris"})
        rec.result(call_tool(...))          # an exception here is recorded as `error`, then re-raised

    @recorder.capture                       # one episode per call: arguments, result or error
    def get_weather(city: str, query: str = "") -> dict: ...

    recorder.submit({"agentId": "a", "state": {"query": "hi"}})   # a ready episode (dict or Episode)

Values passed to ``action``/``result``/``submit`` are serialised later, on the background thread:
do not mutate them afterwards. Non-JSON values (objects, sets, bytes) are converted to JSON-safe
forms there.
"""

from __future__ import annotations

import atexit
import dataclasses
import email.utils
import functools
import gzip as gzip_mod
import hashlib
import inspect
import json
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

import httpx
import orjson
import pydantic

from lightning_op import __version__
from lightning_op.api import constants
from lightning_op.api import episode as ep
from lightning_op.store import redaction

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

EPISODES_PATH = "/v1/episodes"
_MAX_RETRY_AFTER_S = 120.0
_MAX_ERROR_CHARS = 4096
_SKIP_PARAMS = frozenset({"self", "cls"})

Sampling = Literal["session", "episode"]


def redactor_from_env(environ: Mapping[str, str]) -> redaction.Redactor | None:
    """The redaction ``EpisodeCapture`` asked for in ``EPISODE_REDACT_BUILTINS`` (comma-separated;
    empty: none) and ``EPISODE_REDACT_PATTERNS`` (a JSON array of regexes); None when neither is set.
    Raises ``ValueError`` naming the variable when a value cannot be used."""
    raw_builtins = environ.get(constants.ENV_REDACT_BUILTINS)
    raw_patterns = environ.get(constants.ENV_REDACT_PATTERNS)
    if raw_builtins is None and raw_patterns is None:
        return None
    builtins = [name.strip() for name in (raw_builtins or "").split(",") if name.strip()]
    patterns: Any = []
    if raw_patterns is not None and raw_patterns.strip():
        try:
            patterns = json.loads(raw_patterns)
        except ValueError as exc:
            raise ValueError(f"{constants.ENV_REDACT_PATTERNS} is not JSON: {exc}") from None
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{constants.ENV_REDACT_PATTERNS} must be a JSON array of strings")
    try:
        return redaction.Redactor(builtins=builtins, patterns=patterns)
    except ValueError as exc:
        names = f"{constants.ENV_REDACT_BUILTINS}/{constants.ENV_REDACT_PATTERNS}"
        raise ValueError(f"{names}: {exc}") from None


def _session_name(value: Any) -> str | None:
    """A session as the agent gave it: a string, or a UUID or number that names one too (dropped,
    sampling would split the session and its episodes would carry none)."""
    if value is None or isinstance(value, bool):
        return None
    return value if isinstance(value, str) else str(value)


def _endpoint(url: str) -> str:
    """Accept the collector's base URL or the full endpoint."""
    url = url.strip().rstrip("/")
    return url if url.endswith(EPISODES_PATH) else url + EPISODES_PATH


def session_sampled(agent_id: str, session_id: str, rate: float) -> bool:
    """A stable per-session decision: every episode of a session is kept, or none is."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(f"{agent_id}\x00{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < rate


class Recording:
    """One interaction being recorded; returned by ``EpisodeRecorder.record``.

    Use it as a context manager: on exit the episode is queued for sending, with ``error`` set when
    the block raised (the exception still propagates). An unsampled or disabled recording accepts
    the same calls and does nothing.
    """

    __slots__ = ("_recorder", "_data", "_done")

    def __init__(self, recorder: EpisodeRecorder | None, data: dict[str, Any] | None) -> None:
        self._recorder = recorder
        self._data = data
        self._done = False

    @property
    def sampled(self) -> bool:
        """Whether this interaction will be sent."""
        return self._data is not None

    def action(self, tool: str, arguments: Mapping[str, Any] | None = None) -> None:
        """The tool the agent called and its arguments."""
        if self._data is not None:
            self._data["action"] = {"tool": tool, "arguments": {} if arguments is None else arguments}

    def result(self, value: Any) -> None:
        """What the interaction produced (the tool's result, the answer)."""
        if self._data is not None:
            self._data["result"] = value

    def set_context(self, value: Any) -> None:
        """What else the agent saw (retrieved documents, user profile, ...)."""
        if self._data is not None:
            self._data["state"]["context"] = value

    def message(self, role: str, content: str | None = None, **fields: Any) -> None:
        """Append a chat message (OpenAI format: ``tool_calls=``, ``tool_call_id=``, ``name=``)."""
        if self._data is not None:
            self._data.setdefault("messages", []).append({"role": role, "content": content, **fields})

    def error(self, message: str) -> None:
        """Mark the interaction as failed (done for you when the ``with`` block raises)."""
        if self._data is not None:
            self._data["error"] = message[:_MAX_ERROR_CHARS]

    def __enter__(self) -> Recording:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.finish(exc)
        return False

    def finish(self, exc: BaseException | None = None) -> None:
        """Queue the episode (once); ``exc`` is recorded as its error. Never raises."""
        if self._done or self._data is None or self._recorder is None:
            return
        self._done = True
        try:
            if exc is not None and "error" not in self._data:
                self._data["error"] = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
            self._recorder._enqueue(self._data)
        except Exception:  # the agent must never fail because of capture
            log.debug("capture: could not queue an episode", exc_info=True)


_NOOP = Recording(None, None)


#: the id an episode sent without one carries through validation, then leaves behind
_UNSENT_ID = "unsent"

#: how long one batch may wait in all when the collector answers 429/503 with Retry-After before
#: those waits count as failed attempts (a store outage of a few minutes loses nothing)
MAX_ASKED_WAIT_S = 300.0


@dataclasses.dataclass
class _Batch:
    episodes: list[dict[str, Any]]
    attempts: int = 0
    #: seconds waited because the collector asked (429/503 with Retry-After)
    asked_wait: float = 0.0


class EpisodeRecorder:
    """Records episodes and sends them to the collector in the background; see the module docstring.

    ``redactor``: applied to every episode before it is sent (None: the collector's redaction only).

    Thread-safe. Sending starts with the first episode. ``flush`` waits for what is buffered to be
    sent; ``close`` flushes and stops the thread; at interpreter exit open recorders are flushed for at
    most ``exit_timeout`` seconds in all. A recorder that is disabled (``enabled=False``, or no URL or
    agent id) does nothing, cheaply.
    """

    def __init__(
        self,
        collector_url: str | None = None,
        agent_id: str | None = None,
        *,
        enabled: bool = True,
        sampling_rate: float = 1.0,
        sampling: Sampling = "session",
        token: str | None = None,
        model_version: str | None = None,
        redactor: redaction.Redactor | None = None,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_buffer: int = 10_000,
        max_retries: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        timeout: float = 10.0,
        gzip: bool = False,
        exit_timeout: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not 0.0 <= sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must be between 0 and 1, got {sampling_rate}")
        if sampling not in ("session", "episode"):
            raise ValueError(f"sampling must be 'session' or 'episode', got {sampling!r}")
        for name, value in (("batch_size", batch_size), ("max_buffer", max_buffer)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.url = _endpoint(collector_url) if collector_url else None
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"collector URL {collector_url!r} must start with http:// or https://")
        self.agent_id = agent_id
        self.enabled = bool(enabled and collector_url and agent_id)
        self.sampling_rate = sampling_rate
        self.sampling: Sampling = sampling
        self.model_version = (
            model_version if model_version is not None else ep.model_version_from_env(os.environ)
        )
        self.redactor = redactor
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.gzip = gzip
        self.exit_timeout = exit_timeout
        self._token = token
        self._transport = transport
        self._init_state()
        _RECORDERS.add(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._buffer: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._flush_requested = False
        self._closing = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats = {
            "recorded": 0,  # queued for sending
            "sampled_out": 0,  # not kept by sampling
            "dropped": 0,  # the buffer was full
            "invalid": 0,  # not a valid episode (checked before sending)
            "redaction_failed": 0,  # not sent: the redactor failed on it
            "accepted": 0,  # stored by the collector
            "duplicates": 0,  # already stored (a retry)
            "rejected": 0,  # refused by the collector's validation
            "failed": 0,  # given up after retries, or refused as a whole (401, 400, ...)
            "retries": 0,  # posts repeated after an error, 429 or 503
        }
        self._logged: set[str] = set()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EpisodeRecorder:
        """A recorder configured by ``EpisodeCapture``'s env vars; disabled unless
        ``ENABLE_EPISODE_CAPTURE`` is true and a collector URL and agent id are set. A malformed value
        is logged and ignored (the agent keeps running), except the redaction settings: those that
        cannot be used turn capture off, with an error logged, unless ``redactor`` is given."""
        env = os.environ if environ is None else environ
        enabled = env.get(constants.ENV_ENABLE_CAPTURE, "").strip().lower() in ep.TRUE_VALUES
        url = env.get(constants.ENV_COLLECTOR_URL, "").strip() or None
        agent_id = env.get(constants.ENV_AGENT_ID, "").strip() or None
        rate = 1.0
        raw_rate = env.get(constants.ENV_SAMPLING_RATE, "").strip()
        if raw_rate:
            try:
                rate = float(raw_rate)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError
            except ValueError:
                if enabled:
                    log.warning(
                        "capture: %s=%r is not a number between 0 and 1; sampling everything",
                        constants.ENV_SAMPLING_RATE,
                        raw_rate,
                    )
                rate = 1.0
        if enabled and (url is None or agent_id is None):
            missing = constants.ENV_COLLECTOR_URL if url is None else constants.ENV_AGENT_ID
            log.warning(
                "capture: %s is true but %s is not set; capture is off", constants.ENV_ENABLE_CAPTURE, missing
            )
        if url is not None and not url.startswith(("http://", "https://")):
            if enabled:
                log.warning(
                    "capture: %s=%r is not an http(s) URL; capture is off", constants.ENV_COLLECTOR_URL, url
                )
            url = None
        redactor: redaction.Redactor | None = None
        unusable: str | None = None
        if enabled and "redactor" not in overrides:
            try:
                redactor = redactor_from_env(env)
            except ValueError as exc:
                unusable = str(exc)
        kwargs: dict[str, Any] = {
            "collector_url": url,
            "agent_id": agent_id,
            "enabled": enabled,
            "sampling_rate": rate,
            "token": env.get(constants.ENV_COLLECTOR_TOKEN, "").strip() or None,
            "model_version": ep.model_version_from_env(env),
            "redactor": redactor,
        }
        kwargs.update(overrides)
        if unusable is not None:
            # Fail safe: never send what the EpisodeCapture asked to redact. Turning capture off once
            # (rather than dropping episode after episode) makes the cause one clear log line.
            log.error(
                "capture: %s; capture is off so that nothing unredacted leaves this agent (fix the "
                "EpisodeCapture's spec.redaction)",
                unusable,
            )
            kwargs["enabled"] = False
        return cls(**kwargs)

    # -- the agent's side: cheap, never raises ---------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start (a copy): recorded, sampled_out, dropped, invalid, redaction_failed,
        accepted, duplicates, rejected, failed, retries."""
        with self._lock:
            return dict(self._stats)

    def _keep(self, session_id: str | None) -> bool:
        rate = self.sampling_rate
        if rate >= 1.0:
            return True
        if self.sampling == "session" and session_id is not None:
            return session_sampled(self.agent_id or "", session_id, rate)
        return random.random() < rate

    def record(
        self,
        query: str = "",
        *,
        session_id: str | None = None,
        turn: int | None = None,
        context: Any = None,
        model_version: str | None = None,
        episode_id: str | None = None,
    ) -> Recording:
        """Start recording one interaction; use the result as a context manager."""
        if not self.enabled:
            return _NOOP
        if not self._keep(session_id):
            self._count("sampled_out")
            return _NOOP
        data: dict[str, Any] = {
            "agentId": self.agent_id,
            "timestamp": time.time(),
            "state": {"query": query, "context": context},
        }
        if session_id is not None:
            data["sessionId"] = session_id
        if turn is not None:
            data["turn"] = turn
        version = model_version if model_version is not None else self.model_version
        if version is not None:
            data["modelVersion"] = version
        if episode_id is not None:
            data["id"] = episode_id
        return Recording(self, data)

    def submit(self, episode: ep.Episode | Mapping[str, Any]) -> bool:
        """Queue a complete episode (an ``Episode`` or its JSON dict form). ``agentId`` and
        ``modelVersion`` default to the recorder's. False when it was not queued (disabled, sampled
        out, buffer full). Never raises."""
        if not self.enabled:
            return False
        try:
            if isinstance(episode, ep.Episode):
                data = episode.to_json_dict()
            else:
                data = dict(episode)
            key = "sessionId" if "sessionId" in data else "session_id"
            session = _session_name(data.get(key))
            if session is not None:
                data[key] = session
            if not self._keep(session):
                self._count("sampled_out")
                return False
            if "agentId" not in data and "agent_id" not in data:
                data["agentId"] = self.agent_id
            if self.model_version is not None and "modelVersion" not in data and "model_version" not in data:
                data["modelVersion"] = self.model_version
            return self._enqueue(data)
        except Exception:
            log.debug("capture: could not queue an episode", exc_info=True)
            return False

    @overload
    def capture(self, func: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def capture(
        self, *, tool: str | None = None, query_arg: str = "query", session_arg: str = "session_id"
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def capture(
        self,
        func: Callable[..., Any] | None = None,
        *,
        tool: str | None = None,
        query_arg: str = "query",
        session_arg: str = "session_id",
    ) -> Any:
        """Decorate a tool-calling function (sync or async): each call is one episode with the tool
        (``tool`` or the function's name), its arguments, and its return value as result or its
        exception as error (re-raised). Arguments named ``query_arg``/``session_arg`` fill
        ``state.query`` and ``sessionId``."""

        def decorate(f: Callable[P, R]) -> Callable[P, R]:
            name: str = tool or str(getattr(f, "__name__", "tool"))
            signature = inspect.signature(f)

            def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Recording:
                if not self.enabled:
                    return _NOOP
                try:
                    try:
                        bound = signature.bind_partial(*args, **kwargs)
                        arguments = {k: v for k, v in bound.arguments.items() if k not in _SKIP_PARAMS}
                    except TypeError:  # the call itself is wrong; the function will say so
                        arguments = {"args": list(args), **kwargs}
                    query = arguments.get(query_arg)
                    session = arguments.get(session_arg)
                    rec = self.record(
                        query if isinstance(query, str) else "",
                        session_id=_session_name(session),
                    )
                    rec.action(name, arguments)
                except Exception:  # the agent must never fail because of capture
                    log.debug("capture: could not start recording %s", name, exc_info=True)
                    return _NOOP
                return rec

            if inspect.iscoroutinefunction(f):
                async_f = cast(Callable[..., Awaitable[Any]], f)

                @functools.wraps(f)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    rec = start(args, kwargs)
                    with rec:
                        value = await async_f(*args, **kwargs)
                        rec.result(value)
                        return value

                return cast(Callable[P, R], async_wrapper)

            @functools.wraps(f)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                rec = start(args, kwargs)
                with rec:
                    value = f(*args, **kwargs)
                    rec.result(value)
                    return value

            return wrapper

        return decorate(func) if func is not None else decorate

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _enqueue(self, data: dict[str, Any]) -> bool:
        with self._lock:
            if self._closing:
                self._stats["dropped"] += 1
                return False
            if len(self._buffer) >= self.max_buffer:
                self._stats["dropped"] += 1
                first = "dropped" not in self._logged
                self._logged.add("dropped")
            else:
                self._buffer.append(data)
                self._stats["recorded"] += 1
                if len(self._buffer) >= self.batch_size:
                    self._cond.notify()
                if self._thread is None:
                    self._start_thread()
                return True
        if first:
            log.warning(
                "capture: buffer full (%d episodes), dropping new episodes; the collector at %s is "
                "slow or unreachable (see recorder.stats['dropped'])",
                self.max_buffer,
                self.url,
            )
        return False

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="episode-capture", daemon=True)
        self._thread.start()

    # -- flushing and closing --------------------------------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every buffered episode was sent (or given up); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._thread is None:
                return not self._buffer
            self._flush_requested = True
            self._cond.notify_all()
            try:
                while self._buffer or self._in_flight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                # also after a timeout: left set, every later episode would go out alone at once
                self._flush_requested = False

    def close(self, timeout: float | None = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop the background thread; what could not be
        sent by then is counted as failed (and logged). Later episodes are dropped."""
        with self._lock:
            failed_before = self._stats["failed"]
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if not flushed:
            self._abort.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Bounded: a daemon thread stuck in a slow POST must not hold up the exit of the agent.
            thread.join(timeout=None if flushed else 1.0)
        with self._lock:
            self._stats["failed"] += len(self._buffer)
            self._buffer.clear()
            lost = self._stats["failed"] - failed_before
        if lost:
            log.warning("capture: closed with %d episodes not sent to %s", lost, self.url)

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the background thread --------------------------------------------------------------------

    def _run(self) -> None:
        client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0)),
            transport=self._transport,
            headers=self._headers(),
        )
        try:
            while True:
                with self._cond:
                    batch = self._next_batch()
                    if batch is None:
                        return
                    self._in_flight = len(batch)
                try:
                    self._send(client, batch)
                except Exception as exc:  # a bug here must not kill sending for good
                    self._log_once(
                        "unexpected", "capture: sending a batch failed: %s: %s", type(exc).__name__, exc
                    )
                    self._count("failed", len(batch))
                finally:
                    with self._cond:
                        self._in_flight = 0
                        self._cond.notify_all()
        finally:
            client.close()

    def _next_batch(self) -> list[dict[str, Any]] | None:
        """Under the lock: wait for a full batch, the flush interval, a flush or close; None to stop."""
        while not self._buffer:
            if self._closing:
                return None
            self._cond.wait(self.flush_interval)
        deadline = time.monotonic() + self.flush_interval
        while len(self._buffer) < self.batch_size and not (self._flush_requested or self._closing):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        n = min(self.batch_size, len(self._buffer))
        return [self._buffer.popleft() for _ in range(n)]

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"lightning-op-capture/{__version__}"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        return headers

    def _send(self, client: httpx.Client, raw: list[dict[str, Any]]) -> None:
        episodes = []
        for data in raw:
            episode = self._validate(data)
            if episode is not None:
                episodes.append(episode)
        if episodes:
            self._post(client, _Batch(episodes))

    def _validate(self, data: dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(data.get("timestamp"), float):
            data["timestamp"] = datetime.fromtimestamp(data["timestamp"], UTC)
        # An episode without an id is sent without one: the collector derives it from the content it
        # stores (redacted); derived here from the content before the collector's redaction it would
        # fingerprint what that removes. A placeholder spares validation the hashing.
        unnamed = not data.get("id")
        if unnamed:
            data["id"] = _UNSENT_ID
        try:
            try:
                episode = ep.Episode.model_validate(data)
            except (pydantic.ValidationError, TypeError):
                # Perhaps only non-JSON values (objects, sets, bytes, non-string keys): convert them
                # to JSON-safe forms and try again.
                episode = ep.Episode.model_validate(_json_safe(data))
        except (pydantic.ValidationError, ValueError, TypeError, RecursionError) as exc:
            self._drop_invalid(exc)
            return None
        if self.redactor is not None:
            try:
                episode = self.redactor.redacted_episode(episode)
            except Exception as exc:  # whatever went wrong, the unredacted episode must not be sent
                self._count("redaction_failed")
                # The redactor's ValueError names the field; other messages might quote the data.
                reason = str(exc)[:300] if type(exc) is ValueError else type(exc).__name__
                self._log_once(
                    "redaction",
                    "capture: an episode could not be redacted and was not sent (%s); further ones are "
                    "counted in recorder.stats['redaction_failed']",
                    reason,
                )
                return None
        try:
            data = episode.to_json_dict()
        except (ValueError, TypeError, RecursionError) as exc:
            self._drop_invalid(exc)
            return None
        if unnamed:
            del data["id"]  # a resent batch carries the same content and timestamp: the same id
        return data

    def _drop_invalid(self, exc: Exception) -> None:
        self._count("invalid")
        self._log_once(
            "invalid",
            "capture: an episode is not valid and was not sent (%s); further ones are counted in "
            "recorder.stats['invalid']",
            ep.validation_reason(exc),
        )

    def _post(self, client: httpx.Client, batch: _Batch) -> None:
        try:
            body = orjson.dumps(batch.episodes)
        except TypeError:  # integers over 64 bits, non-string keys: the slower, more lenient encoder
            body = json.dumps(batch.episodes, ensure_ascii=False, default=str).encode()
        if self.gzip:
            body = gzip_mod.compress(body, compresslevel=5)
        while True:
            if self._abort.is_set():
                self._count("failed", len(batch.episodes))
                return
            batch.attempts += 1
            delay: float | None
            try:
                response = client.post(self.url or "", content=body)
            except httpx.HTTPError as exc:
                delay = self._backoff(batch.attempts)
                self._log_once(
                    "unreachable", "capture: collector %s unreachable (%s); retrying", self.url, exc
                )
            else:
                status = response.status_code
                if status in (200, 207, 422):
                    self._count_results(response, len(batch.episodes))
                    return
                if status == 413 and len(batch.episodes) > 1:
                    half = len(batch.episodes) // 2
                    self._post(client, _Batch(batch.episodes[:half]))
                    self._post(client, _Batch(batch.episodes[half:]))
                    return
                if status in (429, 503) or status >= 500:
                    delay = _retry_after(response) if status in (429, 503) else None
                    if delay is not None and batch.asked_wait + delay <= MAX_ASKED_WAIT_S:
                        # the collector is up and said when to come back (a full queue, a store
                        # restarting): waiting as asked is not a failed attempt, up to a budget
                        batch.attempts -= 1
                        batch.asked_wait += max(1.0, min(delay, _MAX_RETRY_AFTER_S))
                    if delay is None:
                        delay = self._backoff(batch.attempts)
                else:
                    self._count("failed", len(batch.episodes))
                    self._log_once(
                        f"http-{status}",
                        "capture: the collector refused a batch with HTTP %d (%s); not retrying",
                        status,
                        _error_text(response),
                    )
                    return
            if batch.attempts > self.max_retries:
                self._count("failed", len(batch.episodes))
                log.warning(
                    "capture: gave up on %d episodes after %d attempts to reach %s",
                    len(batch.episodes),
                    batch.attempts,
                    self.url,
                )
                return
            self._count("retries")
            if self._abort.wait(min(delay, _MAX_RETRY_AFTER_S)):
                self._count("failed", len(batch.episodes))
                return

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with full jitter: many agents restarting together do not retry in step.
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _count_results(self, response: httpx.Response, sent: int) -> None:
        try:
            body = response.json()
            accepted, duplicates, rejected = body["accepted"], body["duplicates"], body["rejected"]
            results = body.get("results", [])
        except (ValueError, KeyError, TypeError):
            self._log_once(
                "bad-response", "capture: the collector's answer is not understood; counted as sent"
            )
            self._count("accepted", sent)
            return
        with self._lock:
            self._stats["accepted"] += int(accepted)
            self._stats["duplicates"] += int(duplicates)
            self._stats["rejected"] += int(rejected)
        if rejected:
            reason = next((r.get("reason") for r in results if r.get("status") == "rejected"), None)
            self._log_once(
                "rejected",
                "capture: the collector rejected %d episodes (first reason: %s); not retrying them, "
                "further rejections are counted in recorder.stats['rejected']",
                rejected,
                reason,
            )

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.warning(message, *args)

    def _after_fork(self) -> None:
        # A forked child has no sending thread and a copied lock that may be held: start afresh
        # (episodes buffered in the parent are the parent's to send).
        self._init_state()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))[:300]
    except (ValueError, AttributeError):
        return response.reason_phrase


def _json_default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def _json_safe(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data, default=_json_default, allow_nan=False))


# Every live recorder, for the exit flush and the fork reset; weak so recorders can be collected.
_RECORDERS: weakref.WeakSet[EpisodeRecorder] = weakref.WeakSet()


def _flush_all_at_exit() -> None:
    recorders = [r for r in list(_RECORDERS) if r._thread is not None and not r._closing]
    if not recorders:
        return
    deadline = time.monotonic() + max(r.exit_timeout for r in recorders)
    for recorder in recorders:
        try:
            recorder.close(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:
            log.debug("capture: flush at exit failed", exc_info=True)


def _reset_after_fork() -> None:
    for recorder in list(_RECORDERS):
        recorder._after_fork()


atexit.register(_flush_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
