"""A fake OpenAI-compatible judge: ``POST /v1/chat/completions`` with deterministic scores and faults.

The LLM-as-judge graders (``graders``) call a chat-completions endpoint through the openai SDK. This
server stands in for that endpoint in the tests, the demo and the benchmarks, over real HTTP:

- it answers ``POST /v1/chat/completions`` and, Azure style,
  ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``;
- the reply's content comes from a *scorer*, a callable on the request (``JudgeRequest``): a string
  is sent as it is; a float in [0, 1] becomes ``{"score": ..., "reason": "..."}``, scaled to the range
  the prompt asks for (``"score": <a number from 0 to 10>``, as the judge graders' format line says),
  or, when the prompt asks for ``"label": <one of "a", "b", ...>``, ``{"label": ...}`` with the label
  at that fraction of the list (0 the first, 1 the last). The default scorer is deterministic: the
  same prompt always gets the same score;
- every answer waits ``latency_ms`` first (a sleep, so many requests overlap as with a real service);
- ``Faults`` injects failures: 429 with ``Retry-After`` (for the first N requests and/or a seeded
  fraction), 500, a hang (no answer until the client gives up), or a junk reply that no parser can
  read. ``fault_rule`` decides per request, e.g. from the prompt, for faults tied to certain episodes;
- ``stats`` counts requests by outcome and records the most requests ever in flight at once.

In process::

    server = JudgeServer(latency_ms=50, faults=Faults(rate_limit_first=10))
    async with server as base_url:          # http://127.0.0.1:PORT/v1
        client = openai.AsyncOpenAI(base_url=base_url, api_key="test")

or, for code that runs its own event loop (the CLI under test), ``with server.in_thread() as base_url``.
As a process: ``python -m lightning_op.testing.judge_server --port 8089 --latency-ms 50``; it prints
``judge server listening on http://HOST:PORT/v1`` on stdout once it accepts connections.
``GET /healthz`` answers ok, ``GET /stats`` the counters as JSON, ``GET /v1/models`` one model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

#: the model name ``/v1/models`` lists (any model name is accepted in requests)
DEFAULT_MODEL = "judge-test"


class Fault(StrEnum):
    """What the server does instead of a normal answer."""

    RATE_LIMIT = "rate_limit"  # 429 with Retry-After
    SERVER_ERROR = "server_error"  # 500
    HANG = "hang"  # no answer for ``hang_s`` (the client times out first)
    JUNK = "junk"  # 200 with content no judge parser can read
    BAD_BODY = "bad_body"  # 200 with a body that is not JSON


@dataclass(frozen=True)
class JudgeRequest:
    """One chat-completions request as the scorer and fault rules see it."""

    #: 1-based arrival order
    seq: int
    model: str
    messages: Sequence[Mapping[str, Any]]
    #: the messages' text contents joined by newlines
    prompt: str
    #: the Azure deployment from the path, if the request came Azure style
    deployment: str | None
    body: Mapping[str, Any]
    headers: Mapping[str, str]
    #: the score range the prompt asks for (``from LO to HI``), if any
    score_range: tuple[float, float] | None = None
    #: the labels the prompt asks to choose from (``"label": <one of "a", "b">``), if any
    labels: tuple[str, ...] | None = None


#: returns the reply: a score in [0, 1] (sent as JSON with a reason) or the raw content text
Scorer = Callable[[JudgeRequest], float | str]
FaultRule = Callable[[JudgeRequest], Fault | None]


def hash_scorer(request: JudgeRequest) -> float:
    """A deterministic score from the prompt's hash: 0, 0.25, 0.5, 0.75 or 1 with equal odds."""
    digest = hashlib.sha256(request.prompt.encode()).digest()
    return digest[0] % 5 / 4


def keyword_scorer(good: str = "CORRECT", bad: str = "WRONG", default: float = 0.5) -> Scorer:
    """A scorer that gives 1.0 when the prompt contains ``good``, 0.0 for ``bad``, else ``default``."""

    def score(request: JudgeRequest) -> float:
        if good in request.prompt:
            return 1.0
        if bad in request.prompt:
            return 0.0
        return default

    return score


@dataclass
class Faults:
    """Injected failures. ``*_first`` counts requests in arrival order; fractions are seeded draws.

    Precedence per request: ``rule`` (if it returns a fault), then rate limit, server error, hang,
    junk, bad body, each checked as ``first`` then ``fraction``.
    """

    rate_limit_first: int = 0
    rate_limit_fraction: float = 0.0
    #: Retry-After sent with each 429 (seconds; also sent as ``retry-after-ms``); None sends neither
    retry_after_s: float | None = 0.05
    server_error_first: int = 0
    server_error_fraction: float = 0.0
    hang_first: int = 0
    hang_fraction: float = 0.0
    #: how long a hanging request waits before it answers anyway (the server's shutdown ends it sooner)
    hang_s: float = 60.0
    junk_first: int = 0
    junk_fraction: float = 0.0
    bad_body_first: int = 0
    bad_body_fraction: float = 0.0
    rule: FaultRule | None = None
    seed: int = 0


@dataclass
class JudgeStats:
    """What the server saw; read it from the test while or after the server runs."""

    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    #: prompts of the requests answered with a score, in completion order
    scored_prompts: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "outcomes": dict(self.outcomes),
            "inFlight": self.in_flight,
            "maxInFlight": self.max_in_flight,
        }


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


_RANGE = re.compile(r'"score"\s*:\s*<[^>]*?from\s+(-?\d+(?:\.\d+)?)\s+to\s+(-?\d+(?:\.\d+)?)')
_LABELS = re.compile(r'"label"\s*:\s*<\s*one of\s+((?:"(?:[^"\\]|\\.)*"\s*,?\s*)+)>')


def _asked_range(prompt: str) -> tuple[float, float] | None:
    match = _RANGE.search(prompt)
    return (float(match.group(1)), float(match.group(2))) if match else None


def _asked_labels(prompt: str) -> tuple[str, ...] | None:
    match = _LABELS.search(prompt)
    if not match:
        return None
    try:
        labels = json.loads(f"[{match.group(1).strip().rstrip(',')}]")
    except ValueError:
        return None
    return tuple(str(label) for label in labels) or None


def reply_content(request: JudgeRequest, score: float) -> str:
    """The reply a judge following the prompt's format line would give for ``score`` in [0, 1]."""
    score = min(1.0, max(0.0, float(score)))
    if request.labels:
        label = request.labels[min(int(score * len(request.labels)), len(request.labels) - 1)]
        return json.dumps({"label": label, "reason": f"test judge chose {label}"})
    lo, hi = request.score_range or (0.0, 1.0)
    value = round(lo + score * (hi - lo), 6)
    return json.dumps({"score": value, "reason": f"test judge scored {value:g}"})


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class JudgeServer:
    """The fake judge; see the module docstring. Not reusable: start it once."""

    def __init__(
        self,
        *,
        scorer: Scorer = hash_scorer,
        latency_ms: float = 0.0,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self.scorer = scorer
        self.latency_s = latency_ms / 1000.0
        self.faults = faults or Faults()
        self.host = host
        self.port = port
        self.model = model
        self.stats = JudgeStats()
        self._random = random.Random(self.faults.seed)
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    # -- URLs ---------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http://host:port``: the ``azure_endpoint`` for ``AsyncAzureOpenAI``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: the ``base_url`` for ``AsyncOpenAI``."""
        return f"{self.root_url}/v1"

    # -- lifecycle ----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/stats", self._stats)
        return app

    async def start(self) -> str:
        """Start listening (on a free port when ``port`` is 0); returns ``base_url``."""
        if self._runner is not None:
            raise RuntimeError("judge server already started")
        self._closing = asyncio.Event()
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        if self.port == 0:
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
        logger.info("judge server listening on %s", self.base_url)
        return self.base_url

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[str]:
        """Run the server on its own event loop in a daemon thread; yields ``base_url``."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="judge-server", daemon=True)
        thread.start()
        started.wait(timeout=30)
        if failure:
            loop.close()
            raise RuntimeError(f"judge server failed to start: {failure[0]}") from failure[0]
        try:
            yield self.base_url
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    # -- handlers -----------------------------------------------------------------------------

    def _pick_fault(self, request: JudgeRequest) -> Fault | None:
        f = self.faults
        if f.rule is not None:
            chosen = f.rule(request)
            if chosen is not None:
                return chosen
        seq = request.seq
        draw = self._random.random()
        # One draw per request, split into bands, so adding one fault mode does not shift the others.
        bands = [
            (Fault.RATE_LIMIT, f.rate_limit_first, f.rate_limit_fraction),
            (Fault.SERVER_ERROR, f.server_error_first, f.server_error_fraction),
            (Fault.HANG, f.hang_first, f.hang_fraction),
            (Fault.JUNK, f.junk_first, f.junk_fraction),
            (Fault.BAD_BODY, f.bad_body_first, f.bad_body_fraction),
        ]
        for fault, first, _ in bands:
            if seq <= first:
                return fault
        low = 0.0
        for fault, _, fraction in bands:
            if low <= draw < low + fraction:
                return fault
            low += fraction
        return None

    async def _chat(self, http_request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        seq = self.stats.requests
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            return await self._answer(http_request, seq)
        finally:
            self.stats.in_flight -= 1

    def _record(self, outcome: str) -> None:
        self.stats.outcomes[outcome] += 1

    async def _answer(self, http_request: web.Request, seq: int) -> web.StreamResponse:
        try:
            body = await http_request.json()
        except (ValueError, UnicodeDecodeError):
            self._record("bad_request")
            return web.json_response(
                _error_body("request body is not JSON", "invalid_request_error"), status=400
            )
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            self._record("bad_request")
            return web.json_response(
                _error_body("'messages' must be a non-empty array", "invalid_request_error", "messages"),
                status=400,
            )
        if body.get("stream"):
            self._record("bad_request")
            return web.json_response(
                _error_body("streaming is not supported by the test judge", "invalid_request_error"),
                status=400,
            )
        deployment = http_request.match_info.get("deployment")
        prompt = "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, Mapping))
        request = JudgeRequest(
            seq=seq,
            model=str(body.get("model") or deployment or self.model),
            messages=messages,
            prompt=prompt,
            deployment=deployment,
            body=body,
            headers=dict(http_request.headers),
            score_range=_asked_range(prompt),
            labels=_asked_labels(prompt),
        )
        fault = self._pick_fault(request)
        if fault is Fault.HANG:
            self._record(fault.value)
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=self.faults.hang_s)
            return web.json_response(_error_body("hung request released", "server_error"), status=504)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault is Fault.RATE_LIMIT:
            self._record(fault.value)
            headers = {}
            if self.faults.retry_after_s is not None:
                headers["Retry-After"] = f"{self.faults.retry_after_s:g}"
                headers["retry-after-ms"] = f"{self.faults.retry_after_s * 1000:.0f}"
            return web.json_response(
                _error_body("Rate limit reached for the test judge", "requests", "rate_limit_exceeded"),
                status=429,
                headers=headers,
            )
        if fault is Fault.SERVER_ERROR:
            self._record(fault.value)
            return web.json_response(_error_body("the test judge failed", "server_error"), status=500)
        if fault is Fault.BAD_BODY:
            self._record(fault.value)
            return web.Response(text="<html>upstream proxy error</html>", content_type="application/json")
        if fault is Fault.JUNK:
            self._record(fault.value)
            content = "I'd rather not put a number on that, it depends."
        else:
            try:
                answer = self.scorer(request)
            except Exception as exc:  # a broken scorer is a test bug: answer 500 and log it
                logger.exception("judge scorer failed")
                self._record("scorer_error")
                return web.json_response(_error_body(f"scorer failed: {exc}", "server_error"), status=500)
            content = answer if isinstance(answer, str) else reply_content(request, answer)
            self._record("scored")
            self.stats.scored_prompts.append(request.prompt)
        prompt_tokens = max(1, len(request.prompt) // 4)
        completion_tokens = max(1, len(content) // 4)
        return web.json_response(
            {
                "id": f"chatcmpl-judge-{seq}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]}
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json_dict())


@contextlib.asynccontextmanager
async def serve(**kwargs: Any) -> AsyncIterator[JudgeServer]:
    """``async with serve(latency_ms=50) as server:`` when the test needs the server object first."""
    server = JudgeServer(**kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_op.testing.judge_server",
        description="A fake OpenAI-compatible judge for tests, the demo and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--scorer",
        choices=["hash", "keyword"],
        default="hash",
        help="hash: a score from the prompt's hash; keyword: 1 for CORRECT, 0 for WRONG",
    )
    parser.add_argument("--rate-limit-first", type=int, default=0)
    parser.add_argument("--rate-limit-fraction", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.05, help="seconds sent in Retry-After")
    parser.add_argument("--error-first", type=int, default=0)
    parser.add_argument("--error-fraction", type=float, default=0.0)
    parser.add_argument("--hang-fraction", type=float, default=0.0)
    parser.add_argument("--junk-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


async def _serve_forever(server: JudgeServer) -> None:
    await server.start()
    sys.stdout.write(f"judge server listening on {server.base_url}\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    faults = Faults(
        rate_limit_first=args.rate_limit_first,
        rate_limit_fraction=args.rate_limit_fraction,
        retry_after_s=args.retry_after,
        server_error_first=args.error_first,
        server_error_fraction=args.error_fraction,
        hang_fraction=args.hang_fraction,
        junk_fraction=args.junk_fraction,
        seed=args.seed,
    )
    scorer: Scorer = hash_scorer if args.scorer == "hash" else keyword_scorer()
    server = JudgeServer(
        scorer=scorer, latency_ms=args.latency_ms, faults=faults, host=args.host, port=args.port
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(server))


if __name__ == "__main__":
    main()
