"""``list-episodes`` and ``label-episode``: look at captured episodes and label them by hand.

Both read and write through the ``EpisodeStore`` protocol (``store.open_store`` via ``_common``), so they
work on the embedded SQLite store and on Cosmos DB alike. What they print is what the store holds,
which was redacted before it was written. Flags and the ``-o json`` shapes are a contract
(DESIGN.md): ``list-episodes -o json`` prints a JSON array of episode dicts (``Episode.to_json_dict``,
with ``id``, ``agentId``, ``reward``, ``labeled``), ``label-episode -o json`` one episode object.
"""

from __future__ import annotations

import math
from typing import Any

import click
import pydantic

from lightning_op.api import episode as ep
from lightning_op.cli import _common
from lightning_op.store import base as store_base

QUERY_WIDTH = 60
#: the grader name manual labels carry
MANUAL_GRADER = "manual"


@click.command("list-episodes")
@_common.store_option
@click.option("--agent-id", default=None, metavar="AGENT", help="Only this agent's episodes (default: all).")
@click.option(
    "--limit", default="20", show_default=True, metavar="N", help="Show at most N episodes, newest first."
)
@click.option("--unlabeled-only", is_flag=True, help="Only episodes without a reward yet.")
@click.option("--labeled-only", is_flag=True, help="Only episodes with a reward.")
@click.option(
    "--since", default=None, metavar="TIME", help="Only episodes from TIME on: ISO 8601 or an age (6h, 7d)."
)
@click.option(
    "--model-version", default=None, metavar="VERSION", help="Only episodes served by this model version."
)
@_common.output_option
@_common.handle_errors
def list_episodes(
    store_url: str | None,
    agent_id: str | None,
    limit: str,
    unlabeled_only: bool,
    labeled_only: bool,
    since: str | None,
    model_version: str | None,
    output: str,
) -> None:
    """List captured episodes, newest first."""
    if unlabeled_only and labeled_only:
        _common.fail("--unlabeled-only and --labeled-only exclude each other: give at most one")
    count = parse_int(limit, "--limit", minimum=1)
    query = store_base.EpisodeQuery(
        agent_id=agent_id,
        since=_common.parse_time(since, "--since"),
        labeled=True if labeled_only else False if unlabeled_only else None,
        model_version=model_version,
    )
    with _common.open_store(store_url) as store:
        episodes = newest_episodes(store, query, count)
    if output == "json":
        _common.print_json([episode.to_json_dict() for episode in episodes])
        return
    if not episodes:
        click.echo("no episodes match" + (f" for agent {agent_id}" if agent_id else ""))
        return
    columns = ["id", "time"] + ([] if agent_id else ["agent"]) + ["query", "tool", "reward"]
    _common.print_table(
        f"{len(episodes)} episodes" + (f" of {agent_id}" if agent_id else ""),
        columns,
        (_summary_row(episode, with_agent=agent_id is None) for episode in episodes),
        whole=["id"],
    )


@click.command("label-episode")
@_common.store_option
@click.option("--episode-id", required=True, metavar="ID", help="The episode to label (see list-episodes).")
@click.option("--reward", required=True, metavar="0..1", help="The reward: 0 (bad) to 1 (perfect).")
@click.option("--reason", default="", help="Why: kept with the label and shown to reviewers.")
@_common.output_option
@_common.handle_errors
def label_episode(store_url: str | None, episode_id: str, reward: str, reason: str, output: str) -> None:
    """Label one episode by hand; a manual label wins over graders' labels."""
    score = parse_float(reward, "--reward", 0.0, 1.0, hint="give a reward between 0 (bad) and 1 (perfect)")
    try:
        label = ep.Label(score=score, grader=MANUAL_GRADER, reason=reason, manual=True)
    except pydantic.ValidationError as exc:
        _common.fail(f"--reason: {ep.validation_reason(exc)}")
    not_found = f"episode {episode_id} not found: list episode ids with 'lightning-op list-episodes'"
    with _common.open_store(store_url) as store:
        if store.get(episode_id) is None:
            _common.fail(not_found)
        try:
            episode = store.add_label(episode_id, label)
        except store_base.NotFoundError:
            _common.fail(not_found)
    if output == "json":
        _common.print_json(episode.to_json_dict())
        return
    _common.print_table(f"episode {episode.id}", ["field", "value"], _detail_rows(episode))


def newest_episodes(
    store: store_base.EpisodeStore, query: store_base.EpisodeQuery, count: int
) -> list[ep.Episode]:
    """Up to ``count`` episodes matching ``query``, newest first, following page cursors."""
    episodes: list[ep.Episode] = []
    cursor: str | None = None
    while len(episodes) < count:
        page = store.query(
            store_base.EpisodeQuery(
                agent_id=query.agent_id,
                since=query.since,
                until=query.until,
                labeled=query.labeled,
                min_reward=query.min_reward,
                model_version=query.model_version,
                limit=min(count - len(episodes), 1000),
                cursor=cursor,
            )
        )
        episodes.extend(page.items)
        cursor = page.next_cursor
        if not cursor or not page.items:
            break
    return episodes[:count]


def parse_int(value: str, option: str, *, minimum: int, maximum: int = _common.MAX_COUNT) -> int:
    """An integer flag within ``[minimum, maximum]``, or a one-line error naming the flag."""
    try:
        number = int(value)
    except ValueError:
        _common.fail(f"{option} {value!r} is not a whole number")
    if number < minimum:
        _common.fail(f"{option} must be at least {minimum}, got {number}")
    if number > maximum:
        _common.fail(f"{option} must be at most {maximum}, got {value}")
    return number


def parse_float(value: str, option: str, low: float, high: float, *, hint: str) -> float:
    """A number flag within ``[low, high]``, or a one-line error naming the flag and what to give."""
    try:
        number = float(value)
    except ValueError:
        _common.fail(f"{option} {value!r} is not a number: {hint}")
    if math.isnan(number) or not low <= number <= high:
        _common.fail(f"{option} {value} is outside {low:g}..{high:g}: {hint}")
    return number


def query_text(episode: ep.Episode) -> str:
    """What the user asked: ``state.query``, else the first user message."""
    if episode.state.query:
        return episode.state.query
    for message in episode.messages or []:
        if message.role == "user" and message.content:
            return message.content
    return ""


def _truncate(text: str, width: int = QUERY_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _reward(episode: ep.Episode) -> str:
    return "-" if episode.reward is None else f"{episode.reward:.2f}"


def _summary_row(episode: ep.Episode, *, with_agent: bool) -> list[Any]:
    call = episode.effective_tool_call()
    row: list[Any] = [episode.id, episode.timestamp.strftime("%Y-%m-%d %H:%M:%S")]
    if with_agent:
        row.append(episode.agent_id)
    row += [_truncate(query_text(episode)), call[0] if call else "", _reward(episode)]
    return row


def _detail_rows(episode: ep.Episode) -> list[tuple[str, Any]]:
    call = episode.effective_tool_call()
    rows: list[tuple[str, Any]] = [
        ("id", episode.id),
        ("agent", episode.agent_id),
        ("time", episode.timestamp.isoformat()),
        ("model version", episode.model_version or ""),
        ("query", _truncate(query_text(episode), 200)),
        ("tool", call[0] if call else ""),
        ("reward", _reward(episode)),
        ("labeled", "yes" if episode.labeled else "no"),
    ]
    if episode.labels:
        last = episode.labels[-1]
        rows.append(("last label", f"{last.grader}: {last.score} {last.reason}".strip()))
    return rows
