"""The demo's base model: a tiny Llama pre-trained briefly on the analytics agent's flawed habits.

``build_flawed_base`` writes a model directory (``training.tiny``: config-built, byte-level tokenizer,
ChatML with ``<tool_call>``) and trains all of its weights for a few hundred steps on rows where, for
the families in ``agent.CONFUSIONS``, the wrong tool is called ``1 - p_right`` of the time and the
right one ``p_right`` of the time, for every query of the family alike. So the model called greedily
picks the wrong tool for those families, while sampling at temperature 1 picks the right one about
``p_right`` of the time: the agent's traffic then holds some high-reward episodes for every family,
which is what fine-tuning learns from. The other families are always answered right.

This is the only place the demo trains outside ``lightning_op.trainer``: the trainer fine-tunes LoRA
adapters on a base model, and a base model has to come from somewhere first. No model hub is needed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_op.demo import agent
from lightning_op.training import tiny


@dataclass(frozen=True)
class BaseModelSettings:
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 3e-3
    #: how often the flawed families' rows call the right tool
    p_right: float = 0.3
    #: rows per (template, value) combination; ``p_right * repeats`` of them call the right tool
    repeats: int = 10
    seed: int = 0


def flawed_rows(settings: BaseModelSettings) -> list[dict[str, Any]]:
    """The pre-training rows: every query combination ``repeats`` times, the flaw applied exactly."""
    right = round(settings.p_right * settings.repeats)
    rows = []
    for query in agent.all_queries():
        wrong = agent.CONFUSIONS.get(query.expected_tool)
        for k in range(settings.repeats):
            tool = wrong if wrong is not None and k >= right else query.expected_tool
            rows.append(agent.tool_call_row(query, tool))
    random.Random(settings.seed).shuffle(rows)
    return rows


def build_flawed_base(
    path: str | Path,
    settings: BaseModelSettings = BaseModelSettings(),
    *,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Write the flawed base model to ``path``; ``on_progress(step, steps, loss)`` every 25 steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tiny.build_tiny_model(
        path,
        hidden_size=settings.hidden_size,
        layers=settings.layers,
        heads=settings.heads,
        max_positions=512,
        seed=settings.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    model: Any = AutoModelForCausalLM.from_pretrained(out)
    examples = []
    for row in flawed_rows(settings):
        encoded: Any = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = torch.tensor(encoded["input_ids"])
        mask = torch.tensor(encoded["assistant_masks"]).bool()
        examples.append((ids, torch.where(mask, ids, -100)))
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    warmup = max(1, settings.steps // 25)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1.0 - s / settings.steps)
    )
    model.train()
    pad = tokenizer.pad_token_id
    for step in range(settings.steps):
        batch = [
            examples[(step * settings.batch_size + j) % len(examples)] for j in range(settings.batch_size)
        ]
        width = max(len(ids) for ids, _ in batch)
        inputs = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, target) in enumerate(batch):
            inputs[i, : len(ids)] = ids
            labels[i, : len(ids)] = target
            attention[i, : len(ids)] = 1
        loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if on_progress is not None and ((step + 1) % 25 == 0 or step + 1 == settings.steps):
            on_progress(step + 1, settings.steps, float(loss.item()))
    model.eval()
    model.save_pretrained(out)
    (out / "lightning-op-demo.json").write_text(json.dumps(fingerprint(settings), indent=2) + "\n")
    return out


def fingerprint(settings: BaseModelSettings) -> dict[str, Any]:
    """What a built base model depends on: its settings and the exact pre-training rows."""
    rows = json.dumps(flawed_rows(settings), sort_keys=True).encode()
    return {**asdict(settings), "rowsSha256": hashlib.sha256(rows).hexdigest()}
