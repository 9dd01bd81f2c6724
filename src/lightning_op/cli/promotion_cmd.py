"""``promote-model`` and ``compare-versions``: put a fine-tuned model in front of the agent, then check it.

``promote-model`` takes a training job's best adapter (``--job``) or an adapter directory
(``--adapter``), tells a running ``lightning-op serve`` to switch to it (``--serve-url``) and records
the promotion (previous and promoted model) in the store. ``compare-versions`` sums up the agent's
live episodes per model version (average reward, error rate, counts), the figures a promotion's
verification looks at. Both are thin over ``pipeline.promotion``.
"""

from __future__ import annotations

from pathlib import Path

import click

from lightning_op.cli import _common
from lightning_op.pipeline import promotion


@click.command("promote-model")
@_common.store_option
@click.option(
    "--job", "job_id", default=None, metavar="ID", help="A finished training job: promote its best adapter."
)
@click.option(
    "--adapter",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="An adapter directory to promote (instead of --job).",
)
@click.option("--agent-id", default=None, metavar="AGENT", help="The agent (default: the job's).")
@click.option(
    "--serve-url",
    default=None,
    metavar="URL",
    help="A running `lightning-op serve` (http://host:port) to switch to the adapter without a restart.",
)
@click.option(
    "--model-name",
    "--tuned-name",
    "model_name",
    default=None,
    help="Name the tuned model is served and recorded under (default: the server's tuned name).",
)
@click.option(
    "--previous-model",
    default=None,
    help="What was served before (default: asked from the server, else the agent's last promotion).",
)
@click.option(
    "--admin-token",
    envvar="LIGHTNING_SERVE_ADMIN_TOKEN",
    default=None,
    help="The server's admin token (env LIGHTNING_SERVE_ADMIN_TOKEN).",
)
@_common.output_option
@_common.handle_errors
def promote_model(
    store_url: str | None,
    job_id: str | None,
    adapter: Path | None,
    agent_id: str | None,
    serve_url: str | None,
    model_name: str | None,
    previous_model: str | None,
    admin_token: str | None,
    output: str,
) -> None:
    """Promote a fine-tuned adapter: switch the served model to it and record the promotion."""
    if (job_id is None) == (adapter is None):
        _common.fail("give exactly one of --job ID (a finished training job) or --adapter PATH")
    if adapter is not None and agent_id is None:
        _common.fail(
            "--adapter needs --agent-id AGENT: a promotion belongs to an agent, and compare-versions "
            "finds it by agent"
        )
    with _common.open_store(store_url) as store:
        if job_id is not None:
            adapter_path, job = promotion.adapter_of_job(store, job_id)
            agent_id = agent_id or job.get("agentId")
        else:
            assert adapter is not None
            resolved = adapter.expanduser().resolve()
            if not (resolved / "adapter_config.json").is_file():
                _common.fail(f"--adapter {adapter} has no adapter_config.json: give a LoRA adapter directory")
            adapter_path = str(resolved)
        record = promotion.promote(
            store,
            adapter=adapter_path,
            agent_id=agent_id,
            job_id=job_id,
            model_name=model_name,
            previous_model=previous_model,
            serve_url=serve_url,
            token=admin_token,
        )
    if output == "json":
        _common.print_json(record)
        return
    console = _common.console
    console.print(
        f"promoted [bold]{record['promotedModel']}[/bold] (adapter {record['adapter']}); "
        f"previous model: {record['previousModel'] or 'unknown'}",
        highlight=False,
    )
    if serve_url:
        console.print(f"the server at {serve_url} now answers {record['promotedModel']} with this adapter")
    else:
        console.print("no --serve-url: recorded only; point your model server at the adapter to serve it")
    console.print(
        f"recorded as {record['id']}; verify on live traffic with: lightning-op compare-versions "
        f"--agent-id {agent_id or 'AGENT'}",
        highlight=False,
    )


@click.command("compare-versions")
@_common.store_option
@click.option("--agent-id", required=True, metavar="AGENT", help="The agent whose live episodes to compare.")
@click.option(
    "--before",
    default=None,
    metavar="VERSION",
    help="The earlier model version (default: from the last promotion).",
)
@click.option(
    "--after",
    default=None,
    metavar="VERSION",
    help="The later model version (default: from the last promotion).",
)
@click.option(
    "--since", default=None, metavar="TIME", help="Only episodes from TIME on: ISO 8601 or an age (7d)."
)
@click.option(
    "--max-reward-drop",
    type=_common.FRACTION,
    default=0.05,
    show_default=True,
    help="Verification: a larger drop of the average reward fails.",
)
@click.option(
    "--max-error-rate-increase",
    type=_common.FRACTION,
    default=0.05,
    show_default=True,
    help="Verification: a larger rise of the error rate fails.",
)
@click.option(
    "--min-episodes",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Verification: labeled episodes of the new version needed for a verdict.",
)
@click.option(
    "--fail-on",
    type=click.Choice(["never", "failed", "not-passed"]),
    default="never",
    show_default=True,
    help="Exit 1 (after printing) when the verification failed, or did not pass (also pending): for CI.",
)
@_common.output_option
@_common.handle_errors
def compare_versions(
    store_url: str | None,
    agent_id: str,
    before: str | None,
    after: str | None,
    since: str | None,
    max_reward_drop: float,
    max_error_rate_increase: float,
    min_episodes: int,
    fail_on: str,
    output: str,
) -> None:
    """Compare live episodes of two model versions: average reward, error rate, episodes."""
    since_time = _common.parse_time(since, "--since")
    with _common.open_store(store_url) as store:
        latest = promotion.latest_promotion(store, agent_id=agent_id) if None in (before, after) else None
        promoted = latest.get("promotedModel") if latest else None
        if after is None and before is not None and promoted:
            after = str(promoted)  # --before alone: compare it with what was promoted last
        try:
            comparison = promotion.compare_versions(store, agent_id, before, after, since_time)
        except ValueError:
            # The pipeline then says "no promotion"; there is one, it lacks a model name.
            if latest is None:
                raise
            missing = "previous" if promoted else "promoted"
            _common.fail(
                f"the last promotion of {agent_id} ({latest.get('id')}) does not record the {missing} "
                f"model, and {agent_id}'s episodes show fewer than two model versions: give --before "
                "VERSION" + ("" if promoted else " and --after VERSION")
            )
    _check_versions(comparison, named={"--before": before, "--after": after})
    verdict = promotion.verification_verdict(
        comparison, max_reward_drop, max_error_rate_increase, min_episodes
    )
    if output == "json":
        _common.print_json({**comparison.to_json_dict(), "verification": verdict.to_json_dict()})
    else:
        _print_comparison(agent_id, comparison, verdict)
    status = verdict.status
    if (fail_on == "failed" and status is promotion.VerdictStatus.FAILED) or (
        fail_on == "not-passed" and status is not promotion.VerdictStatus.PASSED
    ):
        _common.fail(f"verification is {status.value} (--fail-on {fail_on}): {verdict.message}")


def _print_comparison(agent_id: str, comparison: promotion.Comparison, verdict: promotion.Verdict) -> None:

    rows: list[tuple[str, str, int | str, int | str, str, str]] = [
        (
            label,
            side.model_version,
            side.episodes,
            side.labeled,
            _common.figure(side.avg_reward, ".3f"),
            _common.figure(side.error_rate, ".3f"),
        )
        for label, side in (("before", comparison.before), ("after", comparison.after))
    ]
    rows.append(
        (
            "change",
            "",
            "",
            "",
            _common.figure(comparison.reward_delta, "+.3f"),
            _common.figure(comparison.error_rate_delta, "+.3f"),
        )
    )
    _common.print_table(
        f"agent {agent_id}: live episodes by model version",
        ["", "model version", "episodes", "labeled", "avgReward", "errorRate"],
        rows,
    )
    colour = {"Passed": "green", "Failed": "red"}.get(verdict.status.value, "yellow")
    _common.console.print(
        f"verification: [{colour}]{verdict.status.value}[/{colour}]: {verdict.message}", highlight=False
    )


def _check_versions(comparison: promotion.Comparison, named: dict[str, str | None]) -> None:
    """A version compared with itself is an error; a version named on the command line that has no
    episodes (a typo, or a name the agent never reported) is a warning naming the versions seen."""
    before, after = comparison.before.model_version, comparison.after.model_version
    if before == after:
        given = [option for option, value in named.items() if value is not None]
        source = " and ".join(given) if given else "the last promotion"
        _common.fail(
            f"both versions are {before} (from {source}): a version compared with itself says nothing; "
            "name two different versions with --before and --after"
        )
    seen = ", ".join(comparison.seen) or "none"
    for option, value in named.items():
        side = comparison.before if option == "--before" else comparison.after
        if value is not None and side.episodes == 0:
            _common.warn(
                f"{option} {value}: no episodes of {comparison.agent_id} with that model version"
                f"{' since ' + comparison.since.isoformat() if comparison.since else ''}; "
                f"versions seen: {seen}"
            )
