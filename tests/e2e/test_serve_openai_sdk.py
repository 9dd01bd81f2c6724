"""``lightning-op serve`` answers the real openai SDK, before and after an adapter swap, with no restart.

A tiny Llama (hidden 64) is trained in the test to answer every query with a ``sales_report`` tool
call; two LoRA adapters, trained with the project's trainer (``training.local``), answer with
``forecast_sales`` and ``top_products``. The server runs as a real process (``python -m
lightning_op.cli serve --port 0``).

Covers:
- ``/v1/models`` lists the base model, and the tuned name only once an adapter is loaded;
- a reply holding ``<tool_call>`` comes back as OpenAI ``tool_calls`` (name, JSON arguments) with
  ``finish_reason == "tool_calls"``, also when streamed;
- asking for the tuned model before any adapter is a 404 ``NotFoundError``; an unknown model too;
- ``POST /admin/adapter`` loads an adapter: the tuned name answers with it while the base name still
  answers without it (same process, same weights); a second POST swaps to another adapter;
- a bad adapter path is refused with a 400 that names it, and the served adapter stays;
- ``seed`` makes sampled replies reproducible; ``top_p: 0`` is greedy; bad parameters are 400s naming
  the parameter;
- two swaps at once both succeed and the tuned name answers with the adapter loaded last;
- a non-loopback ``--host`` without an admin token is refused before the model loads.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from lightning_op.training import config as cfg
from lightning_op.training import local, tiny

pytestmark = pytest.mark.slow

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} for a region",
            "parameters": {"type": "object", "properties": {"region": {"type": "string"}}},
        },
    }
    for name in ("sales_report", "forecast_sales", "top_products")
]
QUERIES = [
    "How are sales?",
    "Show me the numbers.",
    "What happened last month?",
    "Tell me about revenue.",
    "Anything new?",
    "Give me an update.",
    "Where do we stand?",
    "Report please.",
]
_LISTENING = re.compile(r"model server listening on (http://\S+)/v1")


def _rows(tool: str) -> list[dict[str, Any]]:
    call = {"type": "function", "function": {"name": tool, "arguments": '{"region":"north"}'}}
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "tool_calls": [call]}]}
        for q in QUERIES
    ]


def _train_base(path: Path) -> Path:
    """A tiny model fully trained (a few seconds) to call ``sales_report`` for any query."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny.build_tiny_model(path, hidden_size=64, layers=2, heads=4, max_positions=256, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    encoded = [
        tokenizer.apply_chat_template(
            r["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        for r in _rows("sales_report")
    ]
    width = max(len(e["input_ids"]) for e in encoded)
    inputs = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    for i, e in enumerate(encoded):
        ids = torch.tensor(e["input_ids"])
        inputs[i, : len(ids)] = ids
        labels[i, : len(ids)] = torch.where(torch.tensor(e["assistant_masks"]).bool(), ids, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        model(input_ids=inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path


def _train_adapter(base: Path, tool: str, workdir: Path) -> Path:
    workdir.mkdir(parents=True)
    train = workdir / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _rows(tool)))
    config = cfg.parse_config(
        {
            "baseModel": str(base),
            "trainFile": str(train),
            "outputDir": str(workdir / "out"),
            "hyperparameters": {
                "epochs": 60,
                "learningRate": 1e-2,
                "batchSize": 4,
                "loraRank": 8,
                "loraAlpha": 16,
                "loraDropout": 0.0,
                "warmupRatio": 0.0,
                "checkpointSteps": 0,
                "packing": False,
            },
        }
    )
    return local.train(config, writer=local.ProgressWriter(None), handle_sigterm=False).adapter_path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    base = _train_base(root / "analytics-base")
    return {
        "base": base,
        "forecast": _train_adapter(base, "forecast_sales", root / "forecast"),
        "top": _train_adapter(base, "top_products", root / "top"),
    }


class Server:
    def __init__(self, base: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lightning_op.cli",
                "serve",
                "--base",
                str(base),
                "--tuned-name",
                "analytics-tuned",
                "--port",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = ""
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(120) or not self.url:
            self.proc.kill()
            raise RuntimeError("serve did not start; its log:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self.ready.set()
        self.ready.set()

    def swap(self, adapter: Path | str, name: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"adapter": str(adapter)}
        if name:
            body["name"] = name
        return httpx.post(f"{self.url}/admin/adapter", json=body, timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[Server]:
    srv = Server(models["base"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=60)


def tool_call(
    client: openai.OpenAI, model: str, query: str = "Anything new this week?"
) -> tuple[str, dict[str, Any]]:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": query}],
        tools=TOOLS,
        temperature=0,
        max_tokens=80,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.tool_calls, choice.message
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    return call.function.name, json.loads(call.function.arguments)


def model_ids(client: openai.OpenAI) -> list[str]:
    return sorted(m.id for m in client.models.list())


def test_serves_the_base_model_with_openai_tool_calls(client: openai.OpenAI) -> None:
    assert model_ids(client) == ["analytics-base"]
    name, arguments = tool_call(client, "analytics-base")
    assert name == "sales_report"
    assert arguments == {"region": "north"}


def test_streaming_returns_the_tool_call_in_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="analytics-base",
        messages=[{"role": "user", "content": "How are sales?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=80,
        stream=True,
    )
    chunks = list(stream)
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function is not None and calls[0].function.name == "sales_report"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tuned_model_is_not_found_before_an_adapter_is_loaded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no adapter loaded"):
        tool_call(client, "analytics-tuned")
    with pytest.raises(openai.NotFoundError, match="analytics-base"):
        tool_call(client, "gpt-4o")


def test_bad_parameters_are_rejected_with_the_parameter_named(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model="analytics-base", messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="analytics-base", messages=[])


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str | None:
        reply = client.chat.completions.create(
            model="analytics-base",
            messages=[{"role": "user", "content": "Hello there"}],
            temperature=1.5,
            max_tokens=24,
            seed=seed,
        )
        message = reply.choices[0].message
        return message.content or str(message.tool_calls)

    assert sample(7) == sample(7)


def test_top_p_zero_is_greedy(client: openai.OpenAI) -> None:
    """top_p 0 keeps only the most likely token (it was read as 1.0: the most random sampling)."""

    def reply(**sampling: Any) -> str | None:
        message = (
            client.chat.completions.create(
                model="analytics-base",
                messages=[{"role": "user", "content": "Hello there"}],
                max_tokens=24,
                **sampling,
            )
            .choices[0]
            .message
        )
        return message.content or str(message.tool_calls)

    greedy = reply(temperature=0)
    assert [reply(temperature=1.5, top_p=0, seed=seed) for seed in (1, 2, 3)] == [greedy] * 3


def test_adapter_swap_changes_the_tuned_model_without_a_restart(
    server: Server, client: openai.OpenAI, models: dict[str, Path]
) -> None:
    pid = server.proc.pid
    response = server.swap(models["forecast"])
    assert response.status_code == 200, response.text
    assert response.json()["adapterVersion"] == 1
    assert model_ids(client) == ["analytics-base", "analytics-tuned"]
    assert tool_call(client, "analytics-tuned")[0] == "forecast_sales"
    # The base name is still the base model: the adapter is disabled for it, not merged in.
    assert tool_call(client, "analytics-base")[0] == "sales_report"

    response = server.swap(models["top"], name="analytics-tuned-v2")
    assert response.status_code == 200, response.text
    assert model_ids(client) == ["analytics-base", "analytics-tuned-v2"]
    assert tool_call(client, "analytics-tuned-v2")[0] == "top_products"
    assert tool_call(client, "analytics-base")[0] == "sales_report"
    assert server.proc.poll() is None and server.proc.pid == pid

    refused = server.swap("/nonexistent/adapter")
    assert refused.status_code == 400
    assert "/nonexistent/adapter" in refused.json()["error"]["message"]
    assert tool_call(client, "analytics-tuned-v2")[0] == "top_products"
    served = httpx.get(f"{server.url}/admin/adapter", timeout=10).json()
    assert served["adapter"] == str(models["top"].resolve())


def test_concurrent_swaps_leave_one_adapter_serving(
    server: Server, client: openai.OpenAI, models: dict[str, Path]
) -> None:
    """Two swaps at once: both succeed in some order and the tuned name answers with the one loaded
    last (before, both picked one slot name and the second deleted the adapter: every request 500)."""
    before = httpx.get(f"{server.url}/admin/adapter", timeout=10).json()["adapterVersion"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda name: server.swap(models[name]), ["forecast", "top"]))
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    served = httpx.get(f"{server.url}/admin/adapter", timeout=10).json()
    assert served["adapterVersion"] == before + 2
    expected = {
        str(models["forecast"].resolve()): "forecast_sales",
        str(models["top"].resolve()): "top_products",
    }
    assert tool_call(client, "analytics-tuned-v2")[0] == expected[served["adapter"]]


def test_a_public_address_needs_an_admin_token(models: dict[str, Path]) -> None:
    """Anyone who reaches /admin/adapter can make the server load a directory: not without a token."""
    args = [sys.executable, "-m", "lightning_op.cli", "serve", "--base", str(models["base"]), "--port", "0"]
    done = subprocess.run([*args, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 without --admin-token (env LIGHTNING_SERVE_ADMIN_TOKEN) would let anyone "
        "who reaches it load adapters through /admin/adapter: give a token, or listen on 127.0.0.1"
    ]
