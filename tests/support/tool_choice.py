"""The trainer tests' toy task: map a query's keyword to one of five tools.

Chat rows in the trainer's format (a user query, an assistant tool call), written as JSONL, a tiny
Llama to train on them and the hyperparameters that teach it the task, for the CPU trainer tests
and their GPU twins.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TOOLS = {
    "analyze_churn": ["churn", "leaving customers", "cancellations"],
    "sales_report": ["sales report", "revenue summary", "sales numbers"],
    "top_products": ["top products", "best sellers", "most popular items"],
    "segment_risk": ["risky segments", "segment risk", "at-risk groups"],
    "forecast_sales": ["forecast", "next quarter sales", "projected sales"],
}
#: teach the tiny Llama the task in 30 epochs of 64 rows (16 steps each)
HYPERPARAMETERS: dict[str, Any] = {
    "epochs": 30,
    "learningRate": 0.01,
    "batchSize": 4,
    "maxSeqLength": 256,
    "loraRank": 16,
    "loraAlpha": 32,
    "loraDropout": 0.05,
    "checkpointSteps": 20,
    "warmupRatio": 0.05,
    "seed": 7,
}
PHRASES = ["Show me {}", "I need the {} please", "What about {}?", "Give me {} for Q3", "Can you get {}"]


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows cycling through the tools, phrased at random (deterministic for ``seed``)."""
    rng = random.Random(seed)
    names = sorted(TOOLS)
    out = []
    for i in range(n):
        tool = names[i % len(names)]
        query = rng.choice(PHRASES).format(rng.choice(TOOLS[tool]))
        call = {"id": "call_0", "type": "function", "function": {"name": tool, "arguments": "{}"}}
        out.append(
            {"messages": [{"role": "user", "content": query}, {"role": "assistant", "tool_calls": [call]}]}
        )
    return out


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return path


def make_workdir(root: Path) -> Path:
    """``root`` with a tiny Llama (``tiny``), ``train.jsonl`` (64 rows) and ``valid.jsonl`` (20)."""
    from lightning_op.training import tiny

    tiny.build_tiny_model(root / "tiny", hidden_size=64, layers=2)
    write_jsonl(root / "train.jsonl", rows(64, seed=1))
    write_jsonl(root / "valid.jsonl", rows(20, seed=2))
    return root


def score_on_the_cpu(workdir: Path, adapter: str | Path) -> float:
    """The ``tool_selection`` score of ``workdir``'s tiny Llama with ``adapter`` on ``valid.jsonl``,
    evaluated (merged, greedy, 48 new tokens) on the CPU."""
    from lightning_op import graders
    from lightning_op.training import data, evaluate

    return evaluate.evaluate_model(
        workdir / "tiny",
        adapter,
        data.read_rows(workdir / "valid.jsonl"),
        graders.build_grader(graders.load_grader_spec("tool_selection")),
        48,
        device="cpu",
    ).score
