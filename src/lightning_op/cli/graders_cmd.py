"""``test-grader``, ``label-batch`` and ``dry-run``: score episodes with a grader from the command line.

Each command loads a grader (``--grader FILE``: a YAML or JSON spec, or ``--evaluator PRESET``) with
``graders.load_grader_spec`` and ``graders.build_grader``, opens the store (``_common``) and calls the
matching ``pipeline.labeling`` function, the same one the RewardLabeling controller calls. A bad grader
file is a one-line error naming the field, with exit code 1.

Output contract (DESIGN.md): ``dry-run -o json`` prints one object with ``mean``, ``std``,
``fractionAboveZero``, ``fractionPerfect``, ``verdict`` (GO | WARNING | NO-GO), ``diagnosis`` (a list
of sentences) and ``count``, plus ``failed``, ``findings`` (code, severity, metric, message),
``histogram`` and the ``ranges`` used. ``test-grader -o json`` prints one object (``records``,
``average``), ``label-batch -o json`` one report object (``labeled``, ``failed``, ``skipped``, ...).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import pydantic
import yaml

from lightning_op import graders
from lightning_op.api.common import SpecError
from lightning_op.cli import _common
from lightning_op.graders import base as graders_base
from lightning_op.graders import dryrun
from lightning_op.pipeline import labeling

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_VERDICT_STYLE = {
    dryrun.VerdictLevel.GO: "bold green",
    dryrun.VerdictLevel.WARNING: "bold yellow",
    dryrun.VerdictLevel.NO_GO: "bold red",
}
NOTES_WIDTH = 80
#: Most gradings in flight: each worker holds a connection and a task, and judges rate-limit far below.
MAX_CONCURRENCY = 1024


# --- shared options and helpers ------------------------------------------------------------------


def _grader_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--evaluator",
        default=None,
        metavar="PRESET",
        help=f"A built-in grader by name: {', '.join(sorted(graders.PRESETS))}.",
    )(func)
    func = click.option(
        "--grader",
        "grader_file",
        default=None,
        metavar="FILE",
        help="A grader spec file (YAML or JSON; OpenAI grader JSON works as is).",
    )(func)
    return func


_agent_option = click.option("--agent-id", required=True, metavar="AGENT", help="Whose episodes to grade.")


def _load_grader(grader_file: str | None, evaluator: str | None) -> graders_base.Grader:
    """The grader the flags name, or a one-line error (exit 1) naming the bad field."""
    if grader_file and evaluator:
        _common.fail("give either --grader FILE or --evaluator PRESET, not both")
    if not grader_file and not evaluator:
        _common.fail(
            "no grader: give --grader FILE (a YAML or JSON spec) or --evaluator PRESET "
            f"({', '.join(sorted(graders.PRESETS))})"
        )
    if evaluator and evaluator not in graders.PRESETS:
        _common.fail(
            f"--evaluator {evaluator!r} is not a preset: use one of {', '.join(sorted(graders.PRESETS))}"
        )
    if grader_file and not Path(grader_file).expanduser().is_file() and grader_file not in graders.PRESETS:
        what = (
            "is a directory, not a grader file" if Path(grader_file).expanduser().is_dir() else "no such file"
        )
        _common.fail(f"--grader {grader_file}: {what}")
    source = grader_file or evaluator
    assert source is not None
    try:
        spec = graders.load_grader_spec(source)
        return graders.build_grader(spec)
    except (graders.GraderSpecError, graders.GraderBuildError) as exc:
        _common.fail(_one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.split()) if text else type(exc).__name__


def _run_with_grader(grader: graders_base.Grader, work: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await work()
        finally:
            await grader.aclose()

    return asyncio.run(main())


def _int(value: str, option: str, *, minimum: int, maximum: int = _common.MAX_COUNT) -> int:
    try:
        number = int(value)
    except ValueError:
        _common.fail(f"{option} {value!r} is not a whole number")
    if number < minimum:
        _common.fail(f"{option} must be at least {minimum}, got {number}")
    if number > maximum:
        _common.fail(f"{option} must be at most {maximum}, got {value}")
    return number


def _float(
    value: str, option: str, *, low: float | None = None, high: float | None = None, positive: bool = False
) -> float:
    try:
        number = float(value)
    except ValueError:
        _common.fail(f"{option} {value!r} is not a number")
    if math.isnan(number) or math.isinf(number):
        _common.fail(f"{option} must be a finite number, got {value}")
    if positive and number <= 0:
        _common.fail(f"{option} must be greater than 0, got {value}")
    if (low is not None and number < low) or (high is not None and number > high):
        _common.fail(f"{option} {value} is outside {low:g}..{high:g}")
    return number


def _opt_float(value: str | None, option: str, **bounds: Any) -> float | None:
    return None if value is None else _float(value, option, **bounds)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _cut(text: str, width: int = NOTES_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _load_ranges(path: str | None) -> dryrun.HealthyRanges:
    if path is None:
        return dryrun.HealthyRanges()
    try:
        data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        _common.fail(f"--ranges {path}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        _common.fail(f"--ranges {path}: not YAML or JSON: {_one_line(exc)}")
    try:
        return dryrun.HealthyRanges.model_validate(data or {})
    except pydantic.ValidationError as exc:
        # the file's own keys named (meanMax: ...), as in spec.dryRun.healthyRanges
        _common.fail(f"--ranges {path}: {SpecError.from_validation(exc, root='ranges')}")


# --- test-grader ---------------------------------------------------------------------------------


def _grading_options(func: F) -> F:
    """--concurrency, --rps, --timeout and --max-retries, shared by label-batch and dry-run."""
    options = [
        click.option(
            "--concurrency",
            default=str(labeling.DEFAULT_CONCURRENCY),
            show_default=True,
            metavar="N",
            help=f"Gradings in flight at once (1..{MAX_CONCURRENCY}).",
        ),
        click.option("--rps", default=None, metavar="N", help="At most N grading requests per second."),
        click.option(
            "--timeout",
            "timeout",
            default="60",
            show_default=True,
            metavar="SECONDS",
            help="Give up on one grading attempt after this long.",
        ),
        click.option(
            "--max-retries",
            default=str(labeling.DEFAULT_MAX_RETRIES),
            show_default=True,
            metavar="N",
            help="Retries of a grading that failed transiently (429, 5xx, timeout).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("test-grader")
@_common.store_option
@_grader_options
@_agent_option
@click.option(
    "--sample-size", default="5", show_default=True, metavar="N", help="How many episodes, newest first."
)
@click.option(
    "--timeout",
    "timeout",
    default="60",
    show_default=True,
    metavar="SECONDS",
    help="Give up on one grading after this long.",
)
@_common.output_option
@_common.handle_errors
def test_grader(
    store_url: str | None,
    grader_file: str | None,
    evaluator: str | None,
    agent_id: str,
    sample_size: str,
    timeout: str,
    output: str,
) -> None:
    """Score a few recent episodes with a grader and show the scores, without writing anything."""
    size = _int(sample_size, "--sample-size", minimum=1)
    timeout_s = _float(timeout, "--timeout", positive=True)
    grader = _load_grader(grader_file, evaluator)
    with _common.open_store(store_url) as store:
        result = _run_with_grader(
            grader, lambda: labeling.sample_test(store, grader, agent_id, size, timeout_s=timeout_s)
        )
    failed = [r for r in result.records if r.score is None]
    if output == "json":
        _common.print_json(result.to_json_dict())
    elif result.records:
        rows = [
            (r.episode_id, _score(r.score), _cut(f"error: {r.error}" if r.error else r.reason))
            for r in result.records
        ]
        _common.print_table(
            f"{grader.name} on {len(rows)} episodes of {agent_id}",
            ["record", "score", "notes"],
            rows,
            whole=["record"],
        )
        suffix = f" ({len(failed)} failed)" if failed else ""
        _common.console.print(f"average: {_score(result.average)}{suffix}", highlight=False)
    # Exit 1 when the test tells nothing about the grader, so a script or CI step sees it.
    if not result.records:
        _common.fail(f"no episodes for agent {agent_id}: nothing to grade (check --agent-id and --store)")
    if len(failed) == len(result.records):
        first = failed[0].error or "grading failed"
        _common.fail(f"every grading failed ({len(failed)} of {len(failed)}): {_cut(first, 200)}")


# --- label-batch ---------------------------------------------------------------------------------


@click.command("label-batch")
@_common.store_option
@_grader_options
@_agent_option
@click.option(
    "--auto-label/--no-auto-label",
    default=True,
    show_default=True,
    help="Write the scores as labels; --no-auto-label only reports them.",
)
@click.option(
    "--min-score",
    default=None,
    metavar="0..1",
    help="Write only scores at least this high; lower ones stay unlabeled for review.",
)
@click.option(
    "--limit",
    default=None,
    metavar="N",
    help="Grade at most N episodes, oldest first (narrow with --since for recent ones).",
)
@click.option("--unlabeled-only", is_flag=True, help="Only episodes without a reward yet.")
@click.option(
    "--since", default=None, metavar="TIME", help="Only episodes from TIME on: ISO 8601 or an age (6h)."
)
@_grading_options
@click.option("--tpm", default=None, metavar="N", help="At most N (estimated) judge tokens per minute.")
@_common.output_option
@_common.handle_errors
def label_batch(
    store_url: str | None,
    grader_file: str | None,
    evaluator: str | None,
    agent_id: str,
    auto_label: bool,
    min_score: str | None,
    limit: str | None,
    unlabeled_only: bool,
    since: str | None,
    concurrency: str,
    rps: str | None,
    tpm: str | None,
    timeout: str,
    max_retries: str,
    output: str,
) -> None:
    """Grade an agent's episodes and record the scores as labels (resumable: a rerun skips episodes
    this grader version already labeled)."""
    options: dict[str, Any] = {
        "min_score": _opt_float(min_score, "--min-score", low=0.0, high=1.0),
        "limit": None if limit is None else _int(limit, "--limit", minimum=1),
        "since": _common.parse_time(since, "--since"),
        "concurrency": _int(concurrency, "--concurrency", minimum=1, maximum=MAX_CONCURRENCY),
        "requests_per_second": _opt_float(rps, "--rps", positive=True),
        "tokens_per_minute": _opt_float(tpm, "--tpm", positive=True),
        "timeout_s": _float(timeout, "--timeout", positive=True),
        "max_retries": _int(max_retries, "--max-retries", minimum=0),
    }
    grader = _load_grader(grader_file, evaluator)
    quiet = output == "json" or not _common.err_console.is_terminal
    with _common.open_store(store_url) as store, _common.progress("labeling", None, disable=quiet) as bar:
        # Exit 1 when the agent has no episodes at all (a typo in --agent-id or --store, which a
        # script must see); an agent whose episodes are all graded already is a normal rerun (exit 0).
        available = store.count(agent_id, False if unlabeled_only else None)
        if not store.count(agent_id):
            _common.fail(
                f"no episodes of agent {agent_id} in {store.url}: check --agent-id "
                "(lightning-op list-episodes shows the agents)"
            )
        # Never more workers than episodes to grade: each one costs memory even when idle.
        bound = available if options["limit"] is None else min(available, options["limit"])
        options["concurrency"] = max(1, min(options["concurrency"], bound))
        task = bar.add_task(f"labeling {agent_id} with {grader.name}", total=None)

        def on_progress(p: labeling.LabelingProgress) -> None:
            bar.update(task, completed=p.done, total=p.total)

        report = _run_with_grader(
            grader,
            lambda: labeling.label_batch(
                store,
                grader,
                agent_id=agent_id,
                unlabeled_only=unlabeled_only,
                auto_label=auto_label,
                progress=on_progress,
                **options,
            ),
        )
    if output == "json":
        _common.print_json(report.to_json_dict())
    else:
        _print_label_report(report, grader, agent_id)
    if report.backend_down is not None:
        _common.fail(
            f"the grader's backend did not answer: {_cut(report.backend_down, 200)}; the run stopped after "
            f"{report.failed} gradings failed with errors that may pass (after retries) and recorded none "
            "of them, so no episode used a try: run label-batch again when it answers"
        )
    if report.failed and report.failed == report.graded:
        first = next(iter(report.errors), "grading failed")
        _common.fail(f"every grading failed ({report.failed} of {report.graded}): {_cut(first, 200)}")


def _print_label_report(report: labeling.LabelingReport, grader: graders_base.Grader, agent_id: str) -> None:
    auto_label = report.auto_label
    rows: list[tuple[str, Any]] = [
        (
            "labeled" if auto_label else "scored (not written)",
            report.labeled if auto_label else report.scored,
        ),
        ("failed", report.failed),
        ("skipped (already labeled by this grader version)", report.skipped),
    ]
    if report.min_score is not None:
        rows.append((f"below --min-score {report.min_score:g} (left for review)", report.below_min_score))
    if report.invalid:
        rows.append(("invalid episodes (left untouched)", report.invalid))
    rows += [
        ("retries", report.retries),
        ("mean score", _score(report.mean_score)),
        ("duration", f"{report.duration_s:.2f}s"),
        ("episodes/s", f"{report.episodes_per_second:,.0f}"),
    ]
    _common.print_table(f"{grader.name} ({grader.version}) on {agent_id}", ["", "episodes"], rows)
    if report.errors:
        _common.print_table(
            "failures", ["reason", "episodes"], ((_cut(msg, 100), n) for msg, n in report.errors.items())
        )
    if report.graded == 0 and report.skipped == 0 and not report.invalid:
        _common.console.print(f"nothing to grade: no episodes of {agent_id} match", highlight=False)


# --- dry-run -------------------------------------------------------------------------------------


@click.command("dry-run")
@_common.store_option
@_grader_options
@_agent_option
@click.option(
    "--sample-size",
    default="200",
    show_default=True,
    metavar="N",
    help="How many episodes to grade (a seeded random sample).",
)
@click.option("--seed", default="0", show_default=True, metavar="N", help="Seed of the random sample.")
@click.option(
    "--ranges",
    "ranges_file",
    default=None,
    metavar="FILE",
    help="Healthy ranges (YAML/JSON: meanMin, meanMax, stdMin, stdMax, fractionAboveZeroMin, ...).",
)
@_grading_options
@click.option(
    "--fail-on",
    type=click.Choice(["never", "no-go", "warning"]),
    default="never",
    show_default=True,
    help="Exit 1 (after printing) when the verdict is this bad: for CI gates.",
)
@_common.output_option
@_common.handle_errors
def dry_run(
    store_url: str | None,
    grader_file: str | None,
    evaluator: str | None,
    agent_id: str,
    sample_size: str,
    seed: str,
    ranges_file: str | None,
    concurrency: str,
    rps: str | None,
    timeout: str,
    max_retries: str,
    fail_on: str,
    output: str,
) -> None:
    """Grade a sample without writing labels and say whether the scores give a learning signal:
    GO, WARNING or NO-GO, with a diagnosis."""
    size = _int(sample_size, "--sample-size", minimum=1)
    options: dict[str, Any] = {
        "seed": _int(seed, "--seed", minimum=0, maximum=2**63 - 1),
        "concurrency": _int(concurrency, "--concurrency", minimum=1, maximum=MAX_CONCURRENCY),
        "requests_per_second": _opt_float(rps, "--rps", positive=True),
        "timeout_s": _float(timeout, "--timeout", positive=True),
        "max_retries": _int(max_retries, "--max-retries", minimum=0),
    }
    ranges = _load_ranges(ranges_file)
    grader = _load_grader(grader_file, evaluator)
    with _common.open_store(store_url) as store:
        result = _run_with_grader(
            grader, lambda: labeling.dry_run(store, grader, agent_id, size, ranges, **options)
        )
    down = labeling.backend_down(result.records)
    if down is not None:  # no scores is no signal either way: a NO-GO would blame the rewards
        _common.fail(
            f"no verdict: the grader's backend failed on all {len(result.records)} sampled episodes with "
            f"errors that may pass (after retries): {_cut(down, 200)}; run dry-run again when it answers"
        )
    if output == "json":
        _common.print_json(result.to_json_dict())
    else:
        _print_dry_run(result)
    verdict = result.verdict.verdict
    if (fail_on == "no-go" and verdict is dryrun.VerdictLevel.NO_GO) or (
        fail_on == "warning" and verdict is not dryrun.VerdictLevel.GO
    ):
        _common.fail(f"dry-run verdict is {verdict.value} (--fail-on {fail_on})")


def _print_dry_run(result: labeling.DryRunResult) -> None:
    m, r = result.metrics, result.ranges
    flagged = {d.metric: d.severity for d in result.verdict.diagnosis}

    def status(metric: str) -> str:
        severity = flagged.get(metric)
        if severity is None:
            return "[green]ok[/green]"
        return f"[{_VERDICT_STYLE[severity]}]{severity.value}[/]"

    rows = [
        ("samples scored", str(m.count), f">= {r.min_samples}", status("count")),
        ("failed", str(m.failed), f"<= {r.max_failed_fraction * 100:.0f}%", status("failed")),
        ("mean", _score(m.mean), f"{r.mean_min:g} - {r.mean_max:g}", status("mean")),
        ("std", _score(m.std), f"{r.std_min:g} - {r.std_max:g}", status("std")),
        (
            "above zero",
            _fraction(m.fraction_above_zero),
            f">= {r.fraction_above_zero_min * 100:.0f}%",
            status("fractionAboveZero"),
        ),
        (
            "perfect",
            _fraction(m.fraction_perfect),
            f"<= {r.fraction_perfect_max * 100:.0f}%",
            status("fractionPerfect"),
        ),
    ]
    from rich.table import Table

    table = Table(title=f"dry run: {result.grader} ({result.grader_version}) on {result.agent_id}")
    for column in ("metric", "value", "healthy", ""):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    _common.console.print(table)
    if m.count:
        peak = max(m.histogram) or 1
        bins = len(m.histogram)
        for i, n in enumerate(m.histogram):
            bar = "█" * max(1 if n else 0, round(30 * n / peak))
            _common.console.print(f"  {i / bins:.1f}-{(i + 1) / bins:.1f} {bar} {n}", highlight=False)
    verdict = result.verdict.verdict
    _common.console.print(f"verdict: [{_VERDICT_STYLE[verdict]}]{verdict.value}[/]")
    for finding in result.verdict.diagnosis:
        _common.console.print(f"  - {finding.message}", highlight=False)
