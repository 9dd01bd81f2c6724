"""A simulated analytics agent with the seed's five tools, and the queries users send it.

The agent asks an OpenAI-compatible model (``lightning-op serve``) which tool to call for a user's
query, runs that tool (made-up but deterministic data), and records the turn with the capture client
(``collector.capture.EpisodeRecorder``): the chat messages, the tool call as ``action``, the result,
and in ``state.context`` the query family and the tool it called for (``expected_tool``), which is
where the ``tool_selection`` grader preset looks for the right answer.

Queries come in five families, one per tool. Three families have a tempting wrong tool (a risk query
looks like a churn query, a forecast or a top-products query like a sales report): ``CONFUSIONS``
is the flaw the demo's base model is pre-trained with (``demo.model``). Every (template, value)
combination belongs either to the traffic the agent sees or to the fixed held-out set the demo
measures accuracy on, by a stable hash, so the before/after figures are on queries the fine-tune
never saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are an analytics agent. Call one tool."
SEGMENTS = [
    "enterprise",
    "smb",
    "startup",
    "retail",
    "education",
    "healthcare",
    "government",
    "nonprofit",
    "media",
    "logistics",
]
REGIONS = ["north", "south", "east", "west", "emea", "apac", "latam", "nordics", "benelux", "iberia"]
#: the share of (template, value) combinations held out for measuring accuracy
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Family:
    tool: str
    description: str
    slot: str
    values: tuple[str, ...]
    templates: tuple[str, ...]


FAMILIES: tuple[Family, ...] = (
    Family(
        "analyze_churn",
        "Explain why customers of a segment churn (drivers, churn rate).",
        "segment",
        tuple(SEGMENTS),
        (
            "Why are {v} customers churning?",
            "Explain churn among {v} customers.",
            "What drives churn for {v} accounts?",
            "Analyze churn in the {v} segment.",
            "Why do {v} clients cancel?",
            "Break down {v} churn reasons.",
        ),
    ),
    Family(
        "segment_risk",
        "Score which accounts of a segment are at risk of leaving.",
        "segment",
        tuple(SEGMENTS),
        (
            "Which {v} accounts are at risk of churning?",
            "Score the churn risk of the {v} segment.",
            "How risky is the {v} segment?",
            "Flag at-risk {v} customers.",
            "Which {v} clients might cancel soon?",
            "Rank {v} accounts by risk.",
        ),
    ),
    Family(
        "sales_report",
        "Past sales figures of a region.",
        "region",
        tuple(REGIONS),
        (
            "Show the sales report for {v}.",
            "How did sales go in {v} last month?",
            "Give me revenue numbers for {v}.",
            "Summarize sales in {v}.",
            "What did we sell in {v} last quarter?",
            "Sales figures for {v} please.",
        ),
    ),
    Family(
        "forecast_sales",
        "Forecast future sales of a region.",
        "region",
        tuple(REGIONS),
        (
            "Forecast sales for {v} next quarter.",
            "Predict revenue in {v} for next month.",
            "What will sales be in {v} next year?",
            "Project next quarter's sales in {v}.",
            "How much will we sell in {v} soon?",
            "Expected sales for {v} next season?",
        ),
    ),
    Family(
        "top_products",
        "The best-selling products of a region.",
        "region",
        tuple(REGIONS),
        (
            "What are the best selling products in {v}?",
            "List the top products in {v}.",
            "Which products sell most in {v}?",
            "Top sellers in {v} please.",
            "What are our most popular items in {v}?",
            "Best products by sales in {v}?",
        ),
    ),
)
FAMILY_BY_TOOL = {f.tool: f for f in FAMILIES}
#: the flaw: for these families the base model usually calls the tool on the right instead
CONFUSIONS = {
    "segment_risk": "analyze_churn",
    "forecast_sales": "sales_report",
    "top_products": "sales_report",
}


@dataclass(frozen=True)
class Query:
    text: str
    expected_tool: str
    arguments: dict[str, str]
    template: int

    @property
    def family(self) -> str:
        return self.expected_tool


def all_queries() -> list[Query]:
    """Every (family, template, value) combination, in a fixed order."""
    return [
        Query(template.format(v=value), family.tool, {family.slot: value}, index)
        for family in FAMILIES
        for index, template in enumerate(family.templates)
        for value in family.values
    ]


def is_heldout(query: Query) -> bool:
    """A stable split: a combination is held out when its hash falls below ``HELDOUT_FRACTION``."""
    digest = hashlib.sha256(query.text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_FRACTION


def heldout_queries() -> list[Query]:
    """The fixed set accuracy is measured on, before and after; never in the agent's traffic."""
    return [q for q in all_queries() if is_heldout(q)]


def traffic(n: int, seed: int) -> list[Query]:
    """``n`` user queries the agent receives (families uniform), none from the held-out set."""
    pool = [q for q in all_queries() if not is_heldout(q)]
    by_family: dict[str, list[Query]] = {}
    for query in pool:
        by_family.setdefault(query.expected_tool, []).append(query)
    rng = random.Random(seed)
    families = sorted(by_family)
    return [rng.choice(by_family[rng.choice(families)]) for _ in range(n)]


def openai_tools() -> list[dict[str, Any]]:
    """The five tools in OpenAI's ``tools`` format."""
    return [
        {
            "type": "function",
            "function": {
                "name": f.tool,
                "description": f.description,
                "parameters": {
                    "type": "object",
                    "properties": {f.slot: {"type": "string", "enum": list(f.values)}},
                    "required": [f.slot],
                },
            },
        }
        for f in FAMILIES
    ]


def tool_call_row(query: Query, tool: str) -> dict[str, Any]:
    """A chat-format training row: the agent's prompt and ``tool`` called with the query's value.

    Arguments are encoded like ``datasets`` encodes them (compact JSON, sorted keys), so the base
    model and the fine-tuning data agree on the bytes of a tool call.
    """
    slot = FAMILY_BY_TOOL[tool].slot
    value = next(iter(query.arguments.values()))
    arguments = json.dumps({slot: value}, separators=(",", ":"), sort_keys=True)
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": query.text},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": tool, "arguments": arguments}}
                ],
            },
        ]
    }


# ------------------------------------------------------------------------------------------- tools


def _figure(*parts: str, low: float = 0.0, high: float = 1.0) -> float:
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return round(low + (high - low) * int.from_bytes(digest[:4], "big") / 2**32, 3)


def analyze_churn(segment: str) -> dict[str, Any]:
    return {
        "segment": segment,
        "churnRate": _figure("churn", segment, high=0.2),
        "drivers": ["price increase", "support response time", "missing integrations"],
    }


def segment_risk(segment: str) -> dict[str, Any]:
    return {
        "segment": segment,
        "atRiskAccounts": int(_figure("risk", segment, high=300)),
        "riskScore": _figure("score", segment),
    }


def sales_report(region: str) -> dict[str, Any]:
    return {
        "region": region,
        "revenue": int(_figure("sales", region, low=1e5, high=5e6)),
        "growth": _figure("growth", region, low=-0.1, high=0.3),
    }


def forecast_sales(region: str) -> dict[str, Any]:
    return {
        "region": region,
        "forecast": int(_figure("forecast", region, low=1e5, high=6e6)),
        "confidence": _figure("confidence", region, low=0.6, high=0.95),
    }


def top_products(region: str) -> dict[str, Any]:
    products = ["Atlas", "Beacon", "Comet", "Delta", "Ember", "Flux"]
    ranked = sorted(products, key=lambda p: _figure("top", region, p), reverse=True)
    return {"region": region, "products": ranked[:3]}


TOOL_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "analyze_churn": analyze_churn,
    "segment_risk": segment_risk,
    "sales_report": sales_report,
    "forecast_sales": forecast_sales,
    "top_products": top_products,
}


def run_tool(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Call a tool; ``ValueError`` for an unknown tool or missing/extra arguments."""
    function = TOOL_FUNCTIONS.get(name)
    if function is None:
        raise ValueError(f"unknown tool {name!r}")
    slot = FAMILY_BY_TOOL[name].slot
    if set(arguments) != {slot} or not isinstance(arguments[slot], str):
        raise ValueError(f"tool {name} takes one string argument {slot!r}, got {dict(arguments)}")
    return function(arguments[slot])


# ------------------------------------------------------------------------------------------- agent


@dataclass
class Turn:
    """One answered query."""

    query: Query
    tool: str | None
    arguments: dict[str, Any]
    result: Any
    error: str | None

    @property
    def correct(self) -> bool:
        return self.tool == self.query.expected_tool


class AnalyticsAgent:
    """Answers a query with one tool call chosen by the model behind ``client``, recording each turn.

    ``client`` is an ``openai.OpenAI`` pointed at any OpenAI-compatible server; ``recorder`` an
    ``EpisodeRecorder`` (or ``None`` to record nothing). The model name decides what the server
    answers with (the base model or the tuned one), and is what the recorder stores as
    ``modelVersion`` unless it was configured with one.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        recorder: Any = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 96,
    ) -> None:
        self.client = client
        self.model = model
        self.recorder = recorder
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.tools = openai_tools()

    def answer(self, query: Query, *, session_id: str, turn: int, seed: int | None = None) -> Turn:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": query.text},
        ]
        reply = self.client.chat.completions.create(
            model=self.model,
            messages=messages,
            tools=self.tools,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=seed,
        )
        message = reply.choices[0].message
        calls = message.tool_calls or []
        tool: str | None = calls[0].function.name if calls else None
        arguments: dict[str, Any] = {}
        result: Any = None
        error: str | None = None
        if calls:
            try:
                parsed = json.loads(calls[0].function.arguments or "{}")
                arguments = parsed if isinstance(parsed, dict) else {}
                result = run_tool(tool or "", arguments)
            except ValueError as exc:
                error = str(exc)
        else:
            error = "the model called no tool"
        self._record(query, messages, message, tool, arguments, result, error, session_id, turn)
        return Turn(query=query, tool=tool, arguments=arguments, result=result, error=error)

    def _record(
        self,
        query: Query,
        messages: Sequence[Mapping[str, Any]],
        message: Any,
        tool: str | None,
        arguments: dict[str, Any],
        result: Any,
        error: str | None,
        session_id: str,
        turn: int,
    ) -> None:
        if self.recorder is None:
            return
        context = {"expected_tool": query.expected_tool, "family": query.family, "template": query.template}
        rec = self.recorder.record(
            query.text, session_id=session_id, turn=turn, context=context, model_version=self.model
        )
        with rec:
            for m in messages:
                rec.message(m["role"], m["content"])
            calls = [c.model_dump() for c in message.tool_calls or []]
            if calls:
                rec.message("assistant", message.content, tool_calls=calls)
            else:
                rec.message("assistant", message.content or "")
            if tool is not None:
                rec.action(tool, arguments)
                if calls:
                    rec.message(
                        "tool",
                        json.dumps(result if error is None else {"error": error}),
                        tool_call_id=calls[0].get("id") or "call_0",
                    )
            rec.result(result)
            if error is not None:
                rec.error(error)
