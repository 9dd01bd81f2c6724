"""An OpenAI-compatible chat server for a local base model and a swappable LoRA adapter.

Endpoints (aiohttp):

- ``POST /v1/chat/completions``: ``messages``, ``tools``, ``temperature``, ``top_p``, ``max_tokens``
  (or ``max_completion_tokens``), ``seed``, ``stream``. The prompt is the model's chat template
  with the tools; a reply holding ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` comes
  back as OpenAI ``tool_calls`` with ``finish_reason: "tool_calls"`` (parsing is
  ``training.evaluate.parse_assistant_output``, the same the trainer's evaluation uses).
- ``GET /v1/models``: the base model's name and, once an adapter is loaded, the tuned name.
- ``GET /admin/adapter``, ``POST /admin/adapter`` ``{"adapter": PATH | null, "name": NAME?}``:
  what is served, and load/swap (or, with ``null``, unload) the adapter without a restart. With an
  admin token set, these need ``Authorization: Bearer TOKEN`` (compared in constant time); the CLI
  refuses a non-loopback address without one, since a caller could load any directory it names.
- ``GET /healthz``.

A request naming the base model is generated with the adapter disabled (peft's ``disable_adapter()``),
one naming the tuned model with it, on the same weights in memory. Generation runs on a worker thread,
never on the event loop, and one lock around the model orders generations and adapter swaps, so a
swap never lands in the middle of a reply; whether a request gets the adapter is settled under that
lock too (an adapter unloaded meanwhile is a 404, never a base-model answer under the tuned name).
A ``seed`` makes sampling reproducible; ``top_p: 0`` (or ``temperature: 0``) is greedy.

A load that fails (an adapter trained for another base model, a weights file cut short, target modules
LoRA cannot wrap) is a 400 naming the adapter, and changes nothing: peft wraps the targeted layers
before it reads the weights, so what it put in the model (the LoRA layers of a first load, the
half-loaded slot of a swap) is taken out again under the same lock, before any generation can run on
it. The base model and the adapter already served answer as they did.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from lightning_op.training import evaluate as evaluate_mod

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096
MAX_BODY_BYTES = 4 * 1024 * 1024
#: the files peft reads an adapter's weights from, the first one found
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class ServingError(Exception):
    """A request the server cannot answer; ``status`` and ``code`` go into OpenAI's error shape."""

    def __init__(
        self, message: str, *, status: int = 400, code: str = "invalid_request", param: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    #: the adapter version that answered (None: the base model)
    adapter_version: int | None = None


def _stop_ids(tokenizer: Any, model: Any) -> list[int]:
    ids: set[int] = set()
    for candidate in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list):
            ids.update(c for c in candidate if isinstance(c, int))
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(ids)


def _strip_peft_layers(model: Any) -> None:
    """Put back the layers peft wrapped in ``model``, and drop the config it hung on it.

    What ``PeftModel.unload()`` does, for a first load that raised inside ``PeftModel.from_pretrained``
    and so never returned the ``PeftModel`` to unload.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if getattr(parent, child) is layer:
            setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def _load_failure(exc: Exception, lines: int = 3) -> str:
    """The error in a few lines: torch lists every tensor that does not fit, one line each."""
    text = [line.strip() for line in str(exc).strip().splitlines()] or [""]
    more = f" (and {len(text) - lines} more lines)" if len(text) > lines else ""
    return f"{type(exc).__name__}: {' '.join(text[:lines]).rstrip('.')}{more}"


class ModelServer:
    """The model in memory: a base causal LM, at most one LoRA adapter, and the lock around both."""

    def __init__(
        self,
        base_path: str | Path,
        *,
        base_name: str | None = None,
        tuned_name: str | None = None,
        adapter: str | Path | None = None,
        device: str = "auto",
    ) -> None:
        from lightning_op.training import local

        self.base_path = Path(base_path).expanduser().resolve()
        if not (self.base_path / "config.json").is_file():
            raise ValueError(f"--base {base_path} is not a model directory (no config.json)")
        self.base_name = base_name or self.base_path.name
        self.tuned_name = tuned_name or f"{self.base_name}-tuned"
        if self.tuned_name == self.base_name:
            raise ValueError(f"the tuned name {self.tuned_name!r} must differ from the base model's name")
        self.lock = threading.Lock()
        self.device = local.resolve_device(device)
        self.tokenizer = local.load_tokenizer(self.base_path)
        self.model: Any = local.load_base_model(self.base_path, self.device)
        self.model.eval()
        self.peft: Any = None
        self.adapter_path: Path | None = None
        self.adapter_version = 0
        self.loaded_at: datetime | None = None
        self.stop_ids = _stop_ids(self.tokenizer, self.model)
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        )
        if adapter is not None:
            self.load_adapter(adapter)

    # -- adapter -------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "baseName": self.base_name,
            "basePath": str(self.base_path),
            "tunedName": self.tuned_name,
            "adapter": str(self.adapter_path) if self.adapter_path else None,
            "adapterVersion": self.adapter_version,
            "loadedAt": self.loaded_at.isoformat() if self.loaded_at else None,
        }

    def load_adapter(self, path: str | Path | None, name: str | None = None) -> dict[str, Any]:
        """Load (or swap to) the adapter at ``path``; ``None`` unloads it. Blocks until done."""
        from peft import PeftModel

        from lightning_op.training import local

        if name is not None and name == self.base_name:
            raise ServingError(f"the tuned name {name!r} is the base model's name", param="name")
        if path is None:
            with self.lock:
                if self.peft is not None:
                    self.model = self.peft.unload()
                    self.peft = None
                self.adapter_path, self.loaded_at = None, None
                self.tuned_name = name or self.tuned_name
            return self.info()
        adapter = Path(path).expanduser().resolve()
        if not (adapter / "adapter_config.json").is_file():
            raise ServingError(
                f"adapter {path} has no adapter_config.json (not a LoRA adapter directory)", param="adapter"
            )
        # checked here: without a local weights file peft would look the path up on the model hub
        if not any((adapter / name).is_file() for name in ADAPTER_WEIGHT_FILES):
            raise ServingError(
                f"adapter {path} has no adapter_model.safetensors (nor adapter_model.bin): its weights "
                "were not saved, or not copied with its config",
                param="adapter",
            )
        with self.lock:
            # named under the lock: two loads at once must not pick one name (the second would delete
            # the adapter the first just made active)
            slot = f"adapter-{self.adapter_version + 1}"
            served = self.peft.active_adapter if self.peft is not None else None
            try:
                with local.quiet_peft_deprecations():
                    if self.peft is None:
                        self.peft = PeftModel.from_pretrained(self.model, str(adapter), adapter_name=slot)
                    else:
                        self.peft.load_adapter(str(adapter), adapter_name=slot)
            except Exception as exc:  # whatever the adapter's files make peft or torch raise
                self._undo_failed_load(slot, served)
                kept = f"adapter {self.adapter_path} is" if self.adapter_path else "base model alone is"
                raise ServingError(
                    f"adapter {path} cannot be loaded on base model {self.base_name}: {_load_failure(exc)}. "
                    f"Check that it was trained from {self.base_path} and that its files are complete; "
                    f"the {kept} still served",
                    param="adapter",
                ) from exc
            if served is not None:
                self.peft.set_adapter(slot)
                self.peft.delete_adapter(served)
            self.peft.eval()
            self.adapter_version += 1
            self.adapter_path = adapter
            self.loaded_at = datetime.now(UTC)
            if name:
                self.tuned_name = name
        log.info("serving adapter %s as %s (version %d)", adapter, self.tuned_name, self.adapter_version)
        return self.info()

    def _undo_failed_load(self, slot: str, served: str | None) -> None:
        """Take out what a load that raised part-way left in the model; called under the lock."""
        if self.peft is None:
            _strip_peft_layers(self.model)
            return
        from peft import functional

        if slot in self.peft.peft_config:
            self.peft.delete_adapter(slot)
        # peft's add_adapter forgets the config of an adapter it failed to inject, not the layers it
        # had wrapped by then
        functional.delete_adapter(self.model, slot, prefix=self.peft.base_model.prefix)
        self.peft.set_adapter(served)

    def models(self) -> list[str]:
        return [self.base_name] + ([self.tuned_name] if self.peft is not None else [])

    def uses_adapter(self, model: str) -> bool:
        """Whether a request for ``model`` is answered with the adapter; ``ServingError`` if unknown."""
        if model == self.base_name:
            return False
        if model == self.tuned_name:
            if self.peft is None:
                raise ServingError(
                    f"model {model!r} has no adapter loaded yet: promote one (POST /admin/adapter) or "
                    f"ask for {self.base_name!r}",
                    status=404,
                    code="model_not_found",
                    param="model",
                )
            return True
        raise ServingError(
            f"model {model!r} is not served here; available: {', '.join(self.models())}",
            status=404,
            code="model_not_found",
            param="model",
        )

    # -- generation ----------------------------------------------------------------------------------

    def generate(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Any] | None = None,
        use_adapter: bool,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        seed: int | None = None,
    ) -> Generation:
        import torch

        try:
            encoded = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages],
                tools=list(tools) if tools else None,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )
        except Exception as exc:  # jinja errors: the messages do not fit the model's chat template
            raise ServingError(
                f"messages do not fit the model's chat template: {exc}", param="messages"
            ) from exc
        ids = list(encoded["input_ids"])
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        do_sample = temperature > 0 and top_p > 0  # top_p 0 keeps only the top token: greedy
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": do_sample,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.stop_ids,
            "attention_mask": torch.ones_like(input_ids),
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        with self.lock:
            # decided under the lock: an adapter unloaded since the request was checked must not
            # leave the base model answering for the tuned one
            if use_adapter and self.peft is None:
                raise ServingError(
                    f"model {self.tuned_name!r} has no adapter loaded any more",
                    status=404,
                    code="model_not_found",
                )
            version = self.adapter_version if use_adapter else None
            model = self.peft if self.peft is not None else self.model
            context = (
                self.peft.disable_adapter()
                if self.peft is not None and not use_adapter
                else contextlib.nullcontext()
            )
            if seed is not None:
                torch.manual_seed(seed)
            with torch.inference_mode(), context:
                output = model.generate(input_ids=input_ids, **kwargs)
        new = output[0, len(ids) :].tolist()
        stop = set(self.stop_ids)
        kept: list[int] = []
        finish = "length"
        for token in new:
            if token in stop or token == self.pad_id:
                finish = "stop"
                break
            kept.append(token)
        text = str(self.tokenizer.decode(kept, skip_special_tokens=False))
        for special in (self.tokenizer.bos_token, self.tokenizer.pad_token):
            if special:
                text = text.replace(special, "")
        return Generation(
            text=text,
            prompt_tokens=len(ids),
            completion_tokens=len(kept),
            finish_reason=finish,
            adapter_version=version,
        )


# ------------------------------------------------------------------------------------------ requests


def _error(exc: ServingError) -> web.Response:
    body = {
        "error": {
            "message": exc.message,
            "type": "invalid_request_error",
            "param": exc.param,
            "code": exc.code,
        }
    }
    return web.json_response(body, status=exc.status)


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ServingError(f"{key} must be a number between {low:g} and {high:g}, got {value!r}", param=key)
    return float(value)


def _content_text(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ServingError(f"{where}: only text content parts are supported", param="messages")
        return "".join(parts)
    raise ServingError(f"{where}: content must be a string or a list of text parts", param="messages")


def parse_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as the chat template takes them; ``ServingError`` naming the bad one."""
    if not isinstance(raw, list) or not raw:
        raise ServingError("messages must be a non-empty list of chat messages", param="messages")
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise ServingError(f"{where} must be an object", param="messages")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ServingError(
                f"{where}.role {role!r} is not one of system, developer, user, assistant, tool",
                param="messages",
            )
        out: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content_text(message.get("content"), where),
        }
        if message.get("tool_calls"):
            out["tool_calls"] = message["tool_calls"]
        for key in ("tool_call_id", "name"):
            if message.get(key):
                out[key] = message[key]
        messages.append(out)
    return messages


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    tools: list[Any] | None
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    stream: bool


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, Mapping):
        raise ServingError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ServingError(
            "model is required: name the base model or the tuned model (GET /v1/models)", param="model"
        )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ServingError("tools must be a list of tool definitions", param="tools")
    n = body.get("n", 1)
    if n != 1:
        raise ServingError("only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise ServingError(
            f"max_tokens must be an integer between 1 and {MAX_TOKENS_LIMIT}", param="max_tokens"
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ServingError("seed must be an integer", param="seed")
    return ChatRequest(
        model=model,
        messages=parse_messages(body.get("messages")),
        tools=tools or None,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=max_tokens,
        seed=seed,
        stream=bool(body.get("stream")),
    )


def completion_body(request: ChatRequest, generation: Generation, fingerprint: str) -> dict[str, Any]:
    message = evaluate_mod.parse_assistant_output(generation.text)
    finish = "tool_calls" if message.get("tool_calls") else generation.finish_reason
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
    }


def _stream_chunks(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A finished completion as OpenAI stream chunks: the message as one delta, then the finish."""
    choice = body["choices"][0]
    message = choice["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    base = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")}
    return [
        {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}],
        },
        {
            **base,
            "object": "chat.completion.chunk",
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"], "logprobs": None}
            ],
            "usage": body["usage"],
        },
    ]


# ---------------------------------------------------------------------------------------------- app

SERVER_KEY: web.AppKey[ModelServer] = web.AppKey("model_server", ModelServer)
EXECUTOR_KEY: web.AppKey[ThreadPoolExecutor] = web.AppKey("executor", ThreadPoolExecutor)
TOKEN_KEY: web.AppKey[str] = web.AppKey("admin_token", str)


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServingError(f"the request body is not valid JSON: {exc}") from exc


async def chat_completions(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    try:
        chat = parse_chat_request(await _json_body(request))
        use_adapter = server.uses_adapter(chat.model)
        loop = asyncio.get_running_loop()
        generation = await loop.run_in_executor(
            request.app[EXECUTOR_KEY],
            lambda: server.generate(
                chat.messages,
                tools=chat.tools,
                use_adapter=use_adapter,
                temperature=chat.temperature,
                top_p=chat.top_p,
                max_tokens=chat.max_tokens,
                seed=chat.seed,
            ),
        )
    except ServingError as exc:
        return _error(exc)
    version = generation.adapter_version
    body = completion_body(chat, generation, "base" if version is None else f"adapter-v{version}")
    if not chat.stream:
        return web.json_response(body)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in _stream_chunks(body):
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    created = int(server.base_path.stat().st_mtime)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "lightning-op"}
        for name in server.models()
    ]
    return web.json_response({"object": "list", "data": data})


def _check_admin(request: web.Request) -> None:
    token = request.app.get(TOKEN_KEY)
    given = request.headers.get("Authorization", "").encode()
    if token and not hmac.compare_digest(given, f"Bearer {token}".encode()):
        raise ServingError(
            "admin endpoints need Authorization: Bearer <admin token>", status=401, code="unauthorized"
        )


async def get_adapter(request: web.Request) -> web.Response:
    try:
        _check_admin(request)
    except ServingError as exc:
        return _error(exc)
    return web.json_response(request.app[SERVER_KEY].info())


async def post_adapter(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    try:
        _check_admin(request)
        body = await _json_body(request)
        if not isinstance(body, Mapping) or "adapter" not in body:
            raise ServingError(
                'the body must be {"adapter": PATH or null, "name": NAME (optional)}', param="adapter"
            )
        path, name = body.get("adapter"), body.get("name")
        if path is not None and not isinstance(path, str):
            raise ServingError("adapter must be a path (string) or null", param="adapter")
        if name is not None and (not isinstance(name, str) or not name):
            raise ServingError("name must be a non-empty string", param="name")
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(request.app[EXECUTOR_KEY], lambda: server.load_adapter(path, name))
    except ServingError as exc:
        return _error(exc)
    return web.json_response(info)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "models": request.app[SERVER_KEY].models()})


def create_app(server: ModelServer, *, admin_token: str | None = None, workers: int = 2) -> web.Application:
    """The aiohttp application around a loaded ``ModelServer``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SERVER_KEY] = server
    app[EXECUTOR_KEY] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generate")
    if admin_token:
        app[TOKEN_KEY] = admin_token
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/admin/adapter", get_adapter)
    app.router.add_post("/admin/adapter", post_adapter)
    app.router.add_get("/healthz", healthz)

    async def shutdown(app: web.Application) -> None:
        app[EXECUTOR_KEY].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app


class ListenError(OSError):
    """The server could not bind its address (port in use, bad host)."""


async def serve(
    server: ModelServer,
    host: str,
    port: int,
    *,
    admin_token: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set); logs the bound address once listening."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(server, admin_token=admin_token), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info(
            "model server listening on http://%s:%d/v1 (models: %s; adapter %s)",
            host,
            bound,
            ", ".join(server.models()),
            server.adapter_path or "none",
        )
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
