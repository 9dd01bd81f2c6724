"""LLM-as-judge graders (``score_model``, ``label_model``) over any OpenAI-compatible endpoint.

The judge's prompt is the spec's ``input`` messages with their templates rendered, plus (unless
``format_instructions: false``) one line asking for ``{"score": ..., "reason": ...}`` (or
``{"label": ...}``). The call goes through the openai SDK (``AsyncOpenAI``, or ``AsyncAzureOpenAI`` for
a spec with ``azure``), at temperature 0 unless the spec says otherwise, with ``max_retries=0``: the
labeling pipeline owns retries, so 429, 5xx, 408/409, timeouts and connection errors come back as a
``GradeResult`` with ``retryable=True`` and ``retry_after`` from the ``retry-after-ms``/``Retry-After``
headers; other HTTP errors (400, 401, 404) are plain failures.

Replies are parsed robustly (:func:`parse_score_reply`, :func:`parse_label_reply`): a JSON object
(possibly fenced, possibly after ``<think>`` text) with a score/label and a reason, a bare number,
``Score: 7/10``, ``**Rating:** 8``, ``8 out of 10``. A reply that cannot be read, or a score outside
the range, is a failed grading with the reply quoted in the error, never an exception.

Where the judge is: ``base_url``, else the env var named by ``base_url_env``, else the SDK's default
(``OPENAI_BASE_URL``, else api.openai.com); the key from the env var named by ``api_key_env`` (default
``OPENAI_API_KEY``, ``AZURE_OPENAI_API_KEY`` for Azure); a custom base URL without a key gets a
placeholder (local servers need none). ``model_env`` may override ``model``. Clients are made by a
factory (injectable for tests), lazily, on the event loop that grades.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import openai

from lightning_op.graders import base, common, spec, templates

log = logging.getLogger(__name__)

MAX_REPLY_QUOTE = 200
_PLACEHOLDER_KEY = "not-needed"


class JudgeConfigError(ValueError):
    """The judge's endpoint cannot be resolved (no key, no Azure endpoint)."""


class ReplyParseError(ValueError):
    """The judge's reply holds no usable score or label."""


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where and how to call the judge, resolved from the spec and the environment."""

    model: str
    base_url: str | None
    api_key: str | None
    timeout_s: float
    azure_endpoint: str | None = None
    azure_deployment: str | None = None
    api_version: str | None = None

    @property
    def is_azure(self) -> bool:
        return self.azure_endpoint is not None

    def describe(self) -> str:
        if self.is_azure:
            return f"Azure OpenAI {self.azure_endpoint} deployment {self.azure_deployment}"
        return self.base_url or "the OpenAI API"


def _env(name: str | None, env: Mapping[str, str]) -> str | None:
    if not name:
        return None
    value = env.get(name, "").strip()
    return value or None


def resolve_endpoint(
    s: spec.ScoreModelSpec | spec.LabelModelSpec, env: Mapping[str, str] | None = None, *, strict: bool = True
) -> JudgeEndpoint:
    """Resolve the endpoint from the spec and ``env`` (default ``os.environ``).

    With ``strict``, raise :class:`JudgeConfigError` when the judge could not be called (no key for
    OpenAI's own API or Azure, no Azure endpoint).
    """
    env = os.environ if env is None else env
    model = _env(s.model_env, env) or s.model
    if s.azure is not None:
        endpoint = s.azure.endpoint or _env(s.azure.endpoint_env, env)
        key_env = s.api_key_env or "AZURE_OPENAI_API_KEY"
        key = _env(key_env, env)
        if strict and endpoint is None:
            raise JudgeConfigError(
                f"Azure judge has no endpoint: set azure.endpoint or env {s.azure.endpoint_env}"
            )
        if strict and key is None:
            raise JudgeConfigError(f"Azure judge has no API key: set env {key_env} (from a Secret)")
        return JudgeEndpoint(
            model=model,
            base_url=None,
            api_key=key,
            timeout_s=s.timeout_s,
            azure_endpoint=endpoint or "",
            azure_deployment=s.azure.deployment or model,
            api_version=s.azure.api_version,
        )
    base_url = s.base_url or _env(s.base_url_env, env)
    key_env = s.api_key_env or "OPENAI_API_KEY"
    key = _env(key_env, env)
    if key is None:
        if base_url is None and _env("OPENAI_BASE_URL", env) is None:
            if strict:
                hint = f" or {s.base_url_env} for a local judge" if s.base_url_env else ""
                raise JudgeConfigError(f"judge has no API key: set env {key_env}{hint}")
        else:
            key = _PLACEHOLDER_KEY
    return JudgeEndpoint(model=model, base_url=base_url, api_key=key, timeout_s=s.timeout_s)


def default_client_factory(endpoint: JudgeEndpoint) -> openai.AsyncOpenAI:
    """The SDK client for ``endpoint``, with no SDK retries (the pipeline retries)."""
    if endpoint.is_azure:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=endpoint.azure_endpoint or "",
            azure_deployment=endpoint.azure_deployment,
            api_version=endpoint.api_version,
            api_key=endpoint.api_key,
            max_retries=0,
            timeout=endpoint.timeout_s,
        )
    return openai.AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.api_key or _PLACEHOLDER_KEY,
        max_retries=0,
        timeout=endpoint.timeout_s,
    )


# --- reply parsing ---------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_NUM = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
_BARE = re.compile(rf"^\s*\**\s*({_NUM})\s*\**\s*\.?\s*$")
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|out\s+of)\s*({_NUM})", re.IGNORECASE)
_KEYWORD = re.compile(
    rf"\b(?:score|rating|grade|points)\b\**\s*(?:is|of|=|:)?\s*\**\s*(?:is\s*)?({_NUM})(?:\s*(?:/|out\s+of)\s*({_NUM}))?",
    re.IGNORECASE,
)
_ANY_NUMBER = re.compile(_NUM)
_SCORE_KEYS = ("score", "rating", "grade", "result", "value", "points")
_LABEL_KEYS = ("label", "classification", "category", "verdict", "answer", "result")
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "justification", "comment", "steps")


def _quote(text: str) -> str:
    return repr(common.shorten(text, MAX_REPLY_QUOTE))


def _strip(text: str) -> str:
    return _THINK.sub("", text).strip()


def _json_objects(text: str) -> list[dict[str, Any]]:
    """JSON objects in ``text``: the whole text, fenced blocks, then any ``{...}`` that decodes."""
    found: list[dict[str, Any]] = []
    candidates = [text, *(m.group(1) for m in _FENCE.finditer(text))]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    if found:
        return found
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _lookup(obj: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    folded = {str(k).casefold(): v for k, v in obj.items()}
    for key in keys:
        if key in folded:
            return folded[key]
    return None


def _reason_of(obj: Mapping[str, Any]) -> str:
    reason = _lookup(obj, _REASON_KEYS)
    if isinstance(reason, list):
        reason = " ".join(
            str(_lookup(step, ("description", "text", "reason")) or step)
            if isinstance(step, Mapping)
            else str(step)
            for step in reason
        )
    return common.shorten(str(reason), 500) if reason is not None else ""


def _from_fraction(x: float, y: float, lo: float, hi: float) -> float:
    if y == hi or y == 0:
        return x
    return lo + (x / y) * (hi - lo)


def _number_in_text(text: str, lo: float, hi: float) -> float | None:
    bare = _BARE.match(text)
    if bare:
        return float(bare.group(1))
    keyword = _KEYWORD.search(text)
    if keyword:
        x = float(keyword.group(1))
        return _from_fraction(x, float(keyword.group(2)), lo, hi) if keyword.group(2) else x
    fraction = _FRACTION.search(text)
    if fraction:
        return _from_fraction(float(fraction.group(1)), float(fraction.group(2)), lo, hi)
    numbers = _ANY_NUMBER.findall(text)
    if len(numbers) == 1 and len(text) <= 40:
        return float(numbers[0])
    return None


def parse_score_reply(text: str, lo: float, hi: float) -> tuple[float, str]:
    """The judge's score (in range units) and reason; raises :class:`ReplyParseError`."""
    body = _strip(text)
    if not body:
        raise ReplyParseError("empty reply")
    value: float | None = None
    reason = ""
    for obj in _json_objects(body):
        raw = _lookup(obj, _SCORE_KEYS)
        if isinstance(raw, bool):
            raw = None
        if isinstance(raw, int | float):
            value = float(raw)
        elif isinstance(raw, str):
            value = _number_in_text(raw, lo, hi)
        if value is not None:
            reason = _reason_of(obj)
            break
    if value is None:
        try:
            bare_json = json.loads(body)
        except ValueError:
            bare_json = None
        if isinstance(bare_json, int | float) and not isinstance(bare_json, bool):
            value = float(bare_json)
        else:
            value = _number_in_text(body, lo, hi)
        reason = common.shorten(body, 500)
    if value is None or math.isnan(value) or math.isinf(value):
        raise ReplyParseError(f"no score in reply {_quote(text)}")
    tolerance = 1e-9 * (hi - lo)
    if not lo - tolerance <= value <= hi + tolerance:
        raise ReplyParseError(
            f"score {value:g} is outside the range [{lo:g}, {hi:g}] in reply {_quote(text)}"
        )
    return min(max(value, lo), hi), reason


def parse_label_reply(text: str, labels: list[str]) -> tuple[str, str]:
    """The judge's label (one of ``labels``, as spelled there) and reason; raises :class:`ReplyParseError`."""
    body = _strip(text)
    if not body:
        raise ReplyParseError("empty reply")
    by_fold = {label.casefold(): label for label in labels}
    for obj in _json_objects(body):
        raw = _lookup(obj, _LABEL_KEYS)
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if isinstance(raw, str):
            label = by_fold.get(raw.strip().strip("\"'`*.").casefold())
            if label is None:
                raise ReplyParseError(f"label {raw!r} is not one of {labels} in reply {_quote(text)}")
            return label, _reason_of(obj)
    cleaned = body.strip().strip("\"'`*.").strip()
    label_line = re.search(
        r"\b(?:label|classification|verdict|answer)\b\**\s*[:=]\s*\**\s*([^\n*]+)", body, re.I
    )
    for candidate in (cleaned, label_line.group(1).strip().strip("\"'`*.") if label_line else ""):
        label = by_fold.get(candidate.casefold())
        if label is not None:
            return label, common.shorten(body, 500)
    mentioned = {
        label for label in labels if re.search(rf"(?<!\w){re.escape(label)}(?!\w)", body, re.IGNORECASE)
    }
    if len(mentioned) == 1:
        return mentioned.pop(), common.shorten(body, 500)
    if mentioned:
        raise ReplyParseError(f"reply names several labels {sorted(mentioned)}: {_quote(text)}")
    raise ReplyParseError(f"no label of {labels} in reply {_quote(text)}")


# --- errors ----------------------------------------------------------------------------------------


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), if given."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
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


def _api_failure(exc: openai.OpenAIError, endpoint: JudgeEndpoint) -> base.GradeResult:
    where = endpoint.describe()
    if isinstance(exc, openai.APITimeoutError):
        return common.failed(f"judge at {where} timed out after {endpoint.timeout_s:g}s", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return common.failed(f"cannot reach judge at {where}: {exc}", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in (408, 409, 429) or status >= 500
        wait = retry_after_seconds(exc.response.headers) if retryable else None
        message = common.shorten(str(exc.message), 300)
        return common.failed(
            f"judge at {where} answered HTTP {status}: {message}", retryable=retryable, retry_after=wait
        )
    return common.failed(f"judge call to {where} failed: {common.shorten(str(exc), 300)}")


# --- the grader ------------------------------------------------------------------------------------


class JudgeGrader(common.ContextGrader):
    """``score_model`` / ``label_model``: one chat completion per episode."""

    def __init__(
        self,
        s: spec.ScoreModelSpec | spec.LabelModelSpec,
        name: str,
        version: str,
        *,
        client_factory: Callable[[JudgeEndpoint], openai.AsyncOpenAI] | None = None,
    ) -> None:
        super().__init__(name, version)
        self.spec = s
        self.kind = s.type
        self.endpoint = resolve_endpoint(s, strict=client_factory is None)
        self._factory = client_factory or default_client_factory
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.messages = [(m.role, templates.parse_template(_content(m))) for m in s.input]
        self.request_options = _request_options(s.sampling_params)
        self.instructions = _format_instructions(s) if s.format_instructions else None

    def client(self) -> openai.AsyncOpenAI:
        # An SDK client's connections belong to the event loop that made them: a grader reused under
        # a new loop (two asyncio.run calls in one CLI process) gets a new client.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = self._factory(self.endpoint)
            self._client_loop = loop
        return self._client

    def build_messages(self, ctx: templates.GradingContext) -> list[dict[str, str]]:
        messages = [{"role": role, "content": ctx.render(template)[0]} for role, template in self.messages]
        if self.instructions:
            for message in reversed(messages):
                if message["role"] == "user":
                    message["content"] = f"{message['content']}\n\n{self.instructions}"
                    break
            else:
                messages.append({"role": "user", "content": self.instructions})
        return messages

    def estimate_tokens(self, episode: Any) -> int:
        """Tokens one grading costs, roughly (4 characters a token, plus the reply), for rate limits."""
        chars = sum(len(t.source) for _, t in self.messages) + len(self.instructions or "")
        if hasattr(episode, "output_text"):
            chars += len(episode.output_text()) + len(
                getattr(getattr(episode, "state", None), "query", "") or ""
            )
        return chars // 4 + int(self.request_options.get("max_completion_tokens", 200))

    async def _grade(self, ctx: templates.GradingContext) -> base.GradeResult:
        messages = self.build_messages(ctx)
        model = self.endpoint.azure_deployment if self.endpoint.is_azure else self.endpoint.model
        try:
            completion = await self.client().chat.completions.create(
                model=model or self.endpoint.model,
                messages=messages,  # type: ignore[arg-type]
                **self.request_options,
            )
        except openai.OpenAIError as exc:
            return _api_failure(exc, self.endpoint)
        except ValueError as exc:  # a 200 whose body is not JSON (a proxy's error page, ...)
            return common.failed(f"judge at {self.endpoint.describe()} sent a body that is not JSON: {exc}")
        choices = getattr(completion, "choices", None)
        if not choices:
            return common.failed(f"judge reply has no choices: {_quote(str(completion))}")
        content = choices[0].message.content
        if not isinstance(content, str) or not content.strip():
            refusal = getattr(choices[0].message, "refusal", None)
            return common.failed(f"judge reply is empty{f' (refusal: {refusal})' if refusal else ''}")
        try:
            return self._result(content)
        except ReplyParseError as exc:
            log.info("grader %s: unparsable judge reply for episode %s: %s", self.name, ctx.episode.id, exc)
            return common.failed(f"unparsable judge reply: {exc}")

    def _result(self, content: str) -> base.GradeResult:
        s = self.spec
        if isinstance(s, spec.ScoreModelSpec):
            lo, hi = s.score_range
            value, reason = parse_score_reply(content, lo, hi)
            normalised = (value - lo) / (hi - lo)
            note = f"judge score {value:g} in [{lo:g}, {hi:g}]"
            if s.pass_threshold is not None:
                note += f" ({'pass' if value >= s.pass_threshold else 'fail'} at {s.pass_threshold:g})"
            return base.GradeResult(normalised, reason=f"{note}: {reason}" if reason else note)
        label, reason = parse_label_reply(content, s.labels)
        passed = label in s.passing_labels
        note = f"judge label {label!r} ({'passing' if passed else 'not passing'})"
        return base.GradeResult(1.0 if passed else 0.0, reason=f"{note}: {reason}" if reason else note)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()


def _content(message: spec.JudgeMessage) -> str:
    return message.content if isinstance(message.content, str) else message.content.text


def _request_options(params: spec.SamplingParams | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params is not None:
        if params.temperature is not None:
            options["temperature"] = params.temperature
        if params.top_p is not None:
            options["top_p"] = params.top_p
        if params.seed is not None:
            options["seed"] = params.seed
        if params.max_completions_tokens is not None:
            options["max_completion_tokens"] = params.max_completions_tokens
        if params.reasoning_effort is not None:
            options["reasoning_effort"] = params.reasoning_effort
    # Deterministic by default; reasoning models refuse a temperature, so leave theirs unset.
    if "temperature" not in options and "reasoning_effort" not in options:
        options["temperature"] = 0
    return options


def _format_instructions(s: spec.ScoreModelSpec | spec.LabelModelSpec) -> str:
    if isinstance(s, spec.ScoreModelSpec):
        lo, hi = s.score_range
        return (
            f'Reply with only a JSON object: {{"score": <a number from {lo:g} to {hi:g}>, '
            '"reason": "<one short sentence>"}'
        )
    choices = ", ".join(json.dumps(label) for label in s.labels)
    return f'Reply with only a JSON object: {{"label": <one of {choices}>, "reason": "<one short sentence>"}}'
