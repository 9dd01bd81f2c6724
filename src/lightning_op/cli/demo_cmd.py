"""``lightning-op demo``: the whole loop on this machine, in a few minutes, with every figure measured.

Runs ``demo.run.run_demo`` and prints each step as it happens (a heading per step, detail lines, a
progress bar for long steps), then the before/after comparison, the report's path, and as the very
last line the summary DESIGN.md fixes:
``demo: tool-selection accuracy before=0.42 after=0.96 threshold=0.75 rounds=2``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lightning_op.cli import _common


class _Screen:
    """Renders demo events: numbered steps, indented details, one transient bar per step."""

    def __init__(self) -> None:
        self.console = _common.console
        self.started = time.monotonic()
        self.number = 0
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def elapsed(self) -> float:
        """Seconds since the screen opened: the clock of the step stamps and of the last line."""
        return time.monotonic() - self.started

    def _close_bar(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None

    def __call__(self, event: object) -> None:
        from lightning_op.demo import run

        assert isinstance(event, run.Event)
        if event.kind == "step":
            self._close_bar()
            self.number += 1
            self.console.print(
                f"\n[bold cyan]{self.number}. {event.text}[/bold cyan] [dim]({self.elapsed():.0f}s)[/dim]",
                soft_wrap=True,
            )
        elif event.kind == "detail":
            target = self.progress.console if self.progress is not None else self.console
            target.print(f"   {event.text}", highlight=False, soft_wrap=True)
        elif event.kind == "progress" and event.total:
            if self.progress is None:
                self.progress = Progress(
                    TextColumn("   {task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=self.console,
                    transient=True,
                    disable=not self.console.is_terminal,
                )
                self.progress.start()
            if self.task is None:
                self.task = self.progress.add_task(event.text, total=event.total)
            self.progress.update(
                self.task, description=event.text, completed=event.done or 0, total=event.total
            )

    def close(self) -> None:
        self._close_bar()


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the demo keeps its store, models, datasets and report (reset each run; a directory "
    "holding other files is refused).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for the model, the traffic and training."
)
@click.option(
    "--fast", is_flag=True, help="A smaller model and less traffic (for tests; about half the time)."
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="CPU threads per process (1 is fastest on a small shared machine).",
)
def demo(workdir: Path, seed: int, fast: bool, threads: int) -> None:
    """Run the closed loop end to end: capture, label, dry run, fine-tune, promote, compare."""
    from transformers.utils import logging as hf_logging

    from lightning_op.demo import run

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    settings = run.DemoSettings(workdir=workdir, seed=seed, fast=fast, threads=threads)
    console = _common.console
    console.print(
        "[bold]lightning-op demo[/bold]: an analytics agent with five tools picks the wrong tool for some "
        "kinds of questions; watch it learn from its own traffic.",
        soft_wrap=True,
    )
    screen = _Screen()
    # SIGTERM (a stopped container, ``kill``) unwinds like Ctrl-C, so the collector and model server
    # the demo started, in sessions of their own, are stopped too rather than left running
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run.run_demo(settings, screen)
    except run.DemoError as exc:
        screen.close()
        _common.fail(str(exc))
    except KeyboardInterrupt:
        screen.close()
        _common.fail("interrupted", code=130)
    except _Terminated:
        screen.close()
        _common.fail("terminated", code=143)
    finally:
        signal.signal(signal.SIGTERM, previous)
    screen.close()
    console.print("\n[bold]Before / after[/bold]")
    rows = [
        (family, f"{before:.2f}", f"{after:.2f}")
        for family, (before, after) in sorted(result.per_family.items())
    ]
    rows.append(("all held-out queries", f"{result.before:.2f}", f"{result.after:.2f}"))
    _common.print_table(
        "tool-selection accuracy (held-out, greedy)", ["query family", "before", "after"], rows
    )
    live = result.comparison
    _common.print_table(
        "live traffic by model version (compare-versions)",
        ["model version", "episodes", "avg reward", "error rate"],
        [
            (
                side["modelVersion"],
                side["episodes"],
                _common.figure(side["avgReward"], ".2f"),
                _common.figure(side["errorRate"], ".2f"),
            )
            for side in (live["before"], live["after"])
        ],
    )
    console.print(
        f"training job {result.job_id}: held-out score {result.baseline_score or 0:.2f} -> "
        f"{result.best_score or 0:.2f} in {result.rounds} round(s); dry run {result.dry_run_verdict}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"report: {result.report}", highlight=False, soft_wrap=True)
    console.print(
        f"store: sqlite:///{(workdir / 'episodes.db').resolve()}  (try: lightning-op compare-versions "
        f"--store sqlite:///{(workdir / 'episodes.db').resolve()} --agent-id {run.AGENT_ID})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"finished in {screen.elapsed():.0f}s", highlight=False)
    click.echo(result.summary_line())


class _Terminated(BaseException):
    """SIGTERM arrived: unwinds the demo (its ``finally`` blocks stop what it started)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated()
