"""Score a model (base, or base + LoRA adapter) on held-out chat rows: generate, parse, grade.

The trainer runs this after a round (``python -m lightning_op.trainer``) and for the baseline
(``python -m lightning_op.trainer evaluate``); the evaluation-rounds loop compares the figures.
For each row the prompt is every message before the last assistant turn and the reference is that
turn. The model generates greedily (batched, left-padded); ``parse_assistant_output`` turns the
text into an OpenAI assistant message (``<tool_call>{json}</tool_call>`` -> ``tool_calls``; the
server reuses it); the reply becomes an ``Episode`` the grader scores, with the expected answer in
``state.context`` as the graders' presets expect it: ``expected_tool``, ``expected_arguments``
(a JSON object) and ``expected_output`` (the reference's text, when it has one).

Graders come in as objects with ``async grade(episode)``; this module does not import
``graders`` (the layers keep ``training`` and ``graders`` independent): the caller builds one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from lightning_op.api import episode as ep

T = TypeVar("T")

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
#: end-of-turn markers some templates leave in decoded text
_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<|end|>", "<end_of_turn>")
EVAL_AGENT_ID = "evaluation"
#: a grading that fails with an error that may pass (a judge's 429, 5xx, timeout) is tried this
#: many times in all, after 1, 2, 4 ... seconds (or the Retry-After the judge sent, up to 30 s)
GRADE_ATTEMPTS = 4
RETRY_BASE_S = 1.0
MAX_RETRY_AFTER_S = 30.0


class EvaluationUnavailable(RuntimeError):
    """The grader's backend failed on every example with errors that may pass (a judge endpoint down
    or overloaded): there is no score to give, rather than a score of 0."""


class GradeResultLike(Protocol):
    @property
    def score(self) -> float | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def error(self) -> str | None: ...


class GraderLike(Protocol):
    """What evaluation needs of a grader (``graders.base.Grader`` satisfies it)."""

    def grade(self, episode: ep.Episode) -> Awaitable[GradeResultLike]: ...


# ------------------------------------------------------------------------------------------- parsing


def _tool_call(body: str, index: int) -> dict[str, Any] | None:
    try:
        obj = json.loads(body.strip())
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > ep.MAX_NAME_CHARS:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": name.strip(), "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def parse_assistant_output(text: str) -> dict[str, Any]:
    """A model's raw reply as an OpenAI assistant message: ``content`` and/or ``tool_calls``.

    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes/Qwen style; a
    missing closing tag at the end of the text is tolerated) become ``tool_calls`` with the
    arguments JSON-encoded as OpenAI sends them; a reply that is nothing but such a JSON object
    counts too. A block that does not parse stays in ``content`` as it was, so nothing is lost.
    """
    cleaned = text
    for marker in _END_MARKERS:
        cleaned = cleaned.replace(marker, "")
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    last = 0
    for match in _TOOL_CALL.finditer(cleaned):
        call = _tool_call(match.group(1), len(calls))
        kept.append(cleaned[last : match.start()])
        if call is None:
            kept.append(match.group(0))
        else:
            calls.append(call)
        last = match.end()
    kept.append(cleaned[last:])
    content = "".join(kept).strip()
    if not calls and content.startswith("{") and content.endswith("}"):
        call = _tool_call(content, 0)
        if call is not None and '"name"' in content:
            calls.append(call)
            content = ""
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _is_parse_failure(text: str, message: Mapping[str, Any]) -> bool:
    """The model tried to call a tool (``<tool_call>`` in its reply) but no call came out of it."""
    return "<tool_call>" in text and not message.get("tool_calls")


# ------------------------------------------------------------------------------------------- results


@dataclass
class ExampleResult:
    index: int
    query: str
    output: str
    expected_tool: str | None
    predicted_tool: str | None
    predicted_arguments: dict[str, Any] | None
    score: float | None
    reason: str = ""
    error: str | None = None
    parse_failure: bool = False

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "query": self.query,
            "output": self.output,
            "expectedTool": self.expected_tool,
            "predictedTool": self.predicted_tool,
            "predictedArguments": self.predicted_arguments,
            "score": self.score,
            "reason": self.reason,
            "error": self.error,
            "parseFailure": self.parse_failure,
        }


@dataclass
class EvalResult:
    """The mean grader score (failed gradings count 0), per-metric figures and every example."""

    score: float
    per_metric: dict[str, float] = field(default_factory=dict)
    per_example: list[ExampleResult] = field(default_factory=list)

    @property
    def perMetric(self) -> dict[str, float]:  # noqa: N802 - the JSON name, for callers that use it
        return self.per_metric

    @property
    def perExample(self) -> list[ExampleResult]:  # noqa: N802
        return self.per_example

    def to_json_dict(self, *, examples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score": self.score,
            "perMetric": self.per_metric,
            "examples": len(self.per_example),
        }
        if examples:
            out["perExample"] = [e.to_json_dict() for e in self.per_example]
        return out


# ----------------------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class _Case:
    prompt: list[dict[str, Any]]
    tools: Any
    query: str
    expected_tool: str | None
    expected_arguments: dict[str, Any] | None
    expected_output: str | None


def _case(row: Mapping[str, Any]) -> _Case:
    messages = list(row.get("messages") or [])
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "assistant":
            break
    else:
        raise ValueError("row has no assistant turn to compare with")
    prompt = [dict(m) for m in messages[:index]]
    target = messages[index]
    query = next((str(m.get("content") or "") for m in reversed(prompt) if m.get("role") == "user"), "")
    expected_tool: str | None = None
    expected_arguments: dict[str, Any] | None = None
    calls = target.get("tool_calls") or []
    if calls:
        function = calls[0].get("function") or {}
        expected_tool = function.get("name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                arguments = {}
        expected_arguments = arguments if isinstance(arguments, dict) else {}
    content = target.get("content")
    return _Case(prompt, row.get("tools"), query, expected_tool, expected_arguments, content or None)


def build_episode(case_row: Mapping[str, Any], reply: Mapping[str, Any], *, index: int = 0) -> ep.Episode:
    """The Episode a grader scores: the prompt, the parsed reply, the expected answer in context."""
    case = _case(case_row)
    return _episode(case, reply, index)


def _episode(case: _Case, reply: Mapping[str, Any], index: int) -> ep.Episode:
    context: dict[str, Any] = {}
    if case.expected_tool is not None:
        context["expected_tool"] = case.expected_tool
        context["expected_arguments"] = case.expected_arguments or {}
    if case.expected_output is not None:
        context["expected_output"] = case.expected_output
    action = None
    calls = reply.get("tool_calls") or []
    if calls:
        function = calls[0]["function"]
        arguments = json.loads(function["arguments"])
        action = ep.Action(tool=function["name"], arguments=arguments)
    messages = [*case.prompt, dict(reply)]
    return ep.Episode(
        agent_id=EVAL_AGENT_ID,
        session_id="evaluation",
        turn=index,
        state=ep.State(query=case.query, context=context or None),
        action=action,
        messages=[ep.Message.model_validate(m) for m in messages],
    )


# ---------------------------------------------------------------------------------------- generation


def _stop_ids(tokenizer: Any, model: Any) -> list[int]:
    ids: set[int] = set()
    for candidate in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list):
            ids.update(c for c in candidate if isinstance(c, int))
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return sorted(ids)


def _decode(tokenizer: Any, ids: Sequence[int], stop: set[int], pad_id: int | None) -> str:
    kept: list[int] = []
    for token in ids:
        if token in stop or token == pad_id:
            break
        kept.append(token)
    text = str(tokenizer.decode(kept, skip_special_tokens=False))
    for special in (tokenizer.bos_token, tokenizer.pad_token):
        if special:
            text = text.replace(special, "")
    return text


def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Mapping[str, Any]]],
    *,
    tools: Sequence[Any] | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> list[str]:
    """Greedy replies to chat prompts, in order; batches of similar length, left-padded."""
    import contextlib

    import torch

    from lightning_op.training import data

    data.ensure_chat_template(tokenizer)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = _stop_ids(tokenizer, model)
    encoded: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        out = tokenizer.apply_chat_template(
            list(prompt),
            tools=tools[i] if tools is not None else None,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )
        encoded.append(list(out["input_ids"]))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    replies: list[str] = [""] * len(encoded)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            with torch.inference_mode(), autocast:
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=stop,
                )
            new_tokens = generated[:, width:].tolist()
            for row, i in enumerate(chunk):
                replies[i] = _decode(tokenizer, new_tokens[row], set(stop), pad_id)
    finally:
        if was_training:
            model.train()
    return replies


# ---------------------------------------------------------------------------------------- evaluation


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _grade_all(
    grader: GraderLike, episodes: Sequence[ep.Episode | None], concurrency: int
) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(episode: ep.Episode | None) -> Any:
        if episode is None:
            return None
        async with semaphore:
            for attempt in range(GRADE_ATTEMPTS):
                try:
                    grade = await grader.grade(episode)
                except Exception as exc:  # a grader should not raise; count it as a failed grading
                    return _Failed(f"{type(exc).__name__}: {exc}")
                if grade.error is None or not _retryable(grade) or attempt == GRADE_ATTEMPTS - 1:
                    return grade
                after = getattr(grade, "retry_after", None)
                wait = min(float(after), MAX_RETRY_AFTER_S) if after else RETRY_BASE_S * 2**attempt
                await asyncio.sleep(wait)
            raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(e) for e in episodes)))


def _retryable(grade: Any) -> bool:
    return bool(getattr(grade, "retryable", False))


@dataclass(frozen=True)
class _Failed:
    error: str
    score: float | None = None
    reason: str = ""


def score_replies(
    rows: Sequence[Mapping[str, Any]],
    replies: Sequence[str],
    grader: GraderLike,
    *,
    concurrency: int = 16,
) -> EvalResult:
    """Grade raw replies against their rows and sum up the metrics. A grading that fails with an
    error that may pass is tried again (``GRADE_ATTEMPTS``); when every grading still failed that
    way, raises ``EvaluationUnavailable`` instead of scoring the model 0."""
    cases = [_case(row) for row in rows]
    messages = [parse_assistant_output(text) for text in replies]
    episodes: list[ep.Episode | None] = []
    build_errors: list[str | None] = []
    for index, (case, message) in enumerate(zip(cases, messages, strict=True)):
        try:
            episodes.append(_episode(case, message, index))
            build_errors.append(None)
        except (ValidationError, ValueError) as exc:
            episodes.append(None)
            build_errors.append(f"reply cannot form an episode: {ep.validation_reason(exc)}")
    grades = _run(_grade_all(grader, episodes, concurrency))
    graded = [g for g in grades if g is not None]
    if graded and all(g.error is not None and _retryable(g) for g in graded):
        raise EvaluationUnavailable(
            f"the evaluation grader's backend failed on all {len(graded)} examples, with errors that "
            f"may pass (after {GRADE_ATTEMPTS} tries each): {graded[0].error}"
        )
    results: list[ExampleResult] = []
    for index, (case, text, message, grade, build_error) in enumerate(
        zip(cases, replies, messages, grades, build_errors, strict=True)
    ):
        calls = message.get("tool_calls") or []
        predicted_tool = calls[0]["function"]["name"] if calls else None
        predicted_args = json.loads(calls[0]["function"]["arguments"]) if calls else None
        error = build_error if grade is None else grade.error
        results.append(
            ExampleResult(
                index=index,
                query=case.query,
                output=text,
                expected_tool=case.expected_tool,
                predicted_tool=predicted_tool,
                predicted_arguments=predicted_args,
                score=None if grade is None or grade.error else grade.score,
                reason="" if grade is None else grade.reason,
                error=error,
                parse_failure=_is_parse_failure(text, message),
            )
        )
    return summarise(results)


def summarise(results: Sequence[ExampleResult]) -> EvalResult:
    n = len(results)
    if n == 0:
        return EvalResult(score=0.0)
    score = sum(r.score or 0.0 for r in results) / n
    with_tool = [r for r in results if r.expected_tool is not None]
    metrics: dict[str, float] = {
        "score": round(score, 6),
        "gradeErrors": float(sum(1 for r in results if r.error is not None)),
        "parseFailures": round(sum(1 for r in results if r.parse_failure) / n, 6),
        "examples": float(n),
    }
    if with_tool:
        right = [r for r in with_tool if r.predicted_tool == r.expected_tool]
        metrics["toolAccuracy"] = round(len(right) / len(with_tool), 6)
        metrics["noToolCall"] = round(
            sum(1 for r in with_tool if r.predicted_tool is None) / len(with_tool), 6
        )
    return EvalResult(score=round(score, 6), per_metric=metrics, per_example=list(results))


def evaluate_loaded(
    model: Any,
    tokenizer: Any,
    eval_rows: Sequence[Mapping[str, Any]],
    grader: GraderLike,
    max_new_tokens: int = 128,
    *,
    batch_size: int = 16,
    limit: int | None = None,
) -> EvalResult:
    """``evaluate_model`` for a model already in memory (the trainer's, right after training)."""
    rows = list(eval_rows[:limit] if limit is not None else eval_rows)
    cases = [_case(row) for row in rows]
    replies = generate_replies(
        model,
        tokenizer,
        [c.prompt for c in cases],
        tools=[c.tools for c in cases],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    result = score_replies(rows, replies, grader)
    _add_argument_accuracy(result, cases)
    return result


def _add_argument_accuracy(result: EvalResult, cases: Sequence[_Case]) -> None:
    scored = [(r, c) for r, c in zip(result.per_example, cases, strict=True) if c.expected_tool is not None]
    if scored:
        exact = sum(
            1
            for r, c in scored
            if r.predicted_tool == c.expected_tool
            and (r.predicted_arguments or {}) == (c.expected_arguments or {})
        )
        result.per_metric["argumentAccuracy"] = round(exact / len(scored), 6)


def load_for_inference(
    model_path: str | Path, adapter_path: str | Path | None, device: str = "auto"
) -> tuple[Any, Any]:
    """Base model (bf16 on a GPU) with the adapter merged in when given, and its tokenizer."""
    from lightning_op.training import local

    torch_device = local.resolve_device(device)
    tokenizer = local.load_tokenizer(Path(model_path))
    model = local.load_base_model(Path(model_path), torch_device)
    if adapter_path is not None:
        from peft import PeftModel

        adapter = Path(adapter_path)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"adapter {adapter}: no adapter_config.json (not a LoRA adapter directory)"
            )
        with local.quiet_peft_deprecations():
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, tokenizer


def evaluate_model(
    model_path: str | Path,
    adapter_path: str | Path | None,
    eval_rows: Sequence[Mapping[str, Any]],
    grader: GraderLike,
    max_new_tokens: int = 128,
    *,
    batch_size: int = 16,
    limit: int | None = None,
    device: str = "auto",
) -> EvalResult:
    """Score base model + adapter (``None``: the base alone) on chat rows with ``grader``."""
    model, tokenizer = load_for_inference(model_path, adapter_path, device)
    return evaluate_loaded(
        model, tokenizer, eval_rows, grader, max_new_tokens, batch_size=batch_size, limit=limit
    )
