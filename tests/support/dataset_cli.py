"""Shared by the ``build-dataset`` CLI tests: labeled episodes and the command run in-process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from click.testing import CliRunner, Result

from lightning_op import cli
from lightning_op.api import episode as ep

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def make_episode(
    number: int, reward: float = 0.9, *, query: str | None = None, agent: str = "bot"
) -> ep.Episode:
    """A labeled tool-call episode, ``number`` minutes after ``T0``."""
    return ep.Episode(
        agent_id=agent,
        session_id=f"s-{number}",
        turn=0,
        timestamp=T0 + timedelta(minutes=number),
        state=ep.State(query=query or f"where is order {number}?"),
        action=ep.Action(tool="lookup_order", arguments={"order": number}),
        reward=reward,
        labeled=True,
        labels=[ep.Label(score=reward, grader="rule")],
    )


def run(store_url: str, *args: str) -> Result:
    """``lightning-op ARGS[0] --store STORE_URL ARGS[1:]``, in-process."""
    return CliRunner(env={"COLUMNS": "200"}).invoke(
        cli.cli, [args[0], "--store", store_url, *args[1:]], catch_exceptions=False
    )


def build_json(store_url: str, *args: str) -> dict[str, Any]:
    """``build-dataset --agent-id bot ARGS -o json``, which must succeed; its JSON object."""
    result = run(store_url, "build-dataset", "--agent-id", "bot", *args, "-o", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data
