"""The trainer tests' toy task: map a query's keyword to one of five tools.

Chat rows in the trainer's format (a user query, an assistant tool call), written as JSONL, for the
CPU trainer tests and their GPU twins.
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
