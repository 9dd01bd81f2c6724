"""``start-training``, ``get-training-status``, ``report``: fine-tune in evaluation rounds, watch, show.

``start-training`` checks its inputs, records a job in the store and runs the rounds
(``pipeline.training``: a baseline score, then rounds with a decaying learning rate until the
held-out score meets ``--threshold`` or ``--max-rounds`` ran out), with a progress bar and one line
per finished round. ``--no-wait`` hands the job to a detached driver and prints its id.
``get-training-status`` prints the seed's table (round, epoch, train loss, valid loss, score);
``report`` writes an HTML page with plots (``pipeline.report``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar

from lightning_op.cli import _common
from lightning_op.pipeline import training as training_mod
from lightning_op.store import base as store_base

FINISHED = ("Succeeded", "Failed", "Cancelled")

format_option = _common.format_only_option("output_format")


@click.command("start-training")
@_common.store_option
@click.option(
    "--agent-id", default=None, metavar="AGENT", help="The agent the model is for (recorded on the job)."
)
@click.option(
    "--dataset",
    "dataset_name",
    default=None,
    metavar="NAME",
    help="A dataset from build-dataset (its training and validation files).",
)
@click.option(
    "--train-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A chat-format JSONL training file (instead of --dataset).",
)
@click.option(
    "--validation-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Held-out rows for validation loss and the score (with --train-file).",
)
@click.option(
    "--eval-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Score on these rows instead of the validation file.",
)
@click.option(
    "--base-model",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Base model directory (loadable by transformers' from_pretrained).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Epochs per round (trainer default 3)."
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Round 1's learning rate (trainer default 2e-4); later rounds decay it.",
)
@click.option("--lora-rank", type=click.IntRange(min=1), default=None, help="LoRA rank (trainer default 16).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Rows per micro-batch.")
@click.option(
    "--max-seq-length", type=click.IntRange(min=8), default=None, help="Longest example, in tokens."
)
@click.option("--seed", type=int, default=None, help="Random seed (data order, LoRA init).")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.75,
    show_default=True,
    help="Stop once a round's held-out score reaches this.",
)
@click.option(
    "--max-rounds", type=click.IntRange(min=1), default=3, show_default=True, help="At most this many rounds."
)
@click.option(
    "--lr-decay",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.6,
    show_default=True,
    help="Round k trains at learning-rate * lr-decay^(k-1).",
)
@click.option(
    "--grader",
    "--evaluator",
    "grader",
    default="tool_selection",
    show_default=True,
    help="Grader that scores the held-out replies: a preset name or a spec file.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Longest reply generated per held-out row when scoring.",
)
@click.option("--backend", type=click.Choice(["local", "azureOpenAI"]), default="local", show_default=True)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where jobs keep their files (default: training/ next to a SQLite store).",
)
@click.option("--job-id", default=None, help="Job id (default: ft-AGENT-<time>-<random>).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait with a progress bar, or start the job detached and print its id.",
)
@_common.output_option
@_common.handle_errors
def start_training(
    store_url: str | None,
    agent_id: str | None,
    dataset_name: str | None,
    train_file: Path | None,
    validation_file: Path | None,
    eval_file: Path | None,
    base_model: Path,
    epochs: int | None,
    learning_rate: float | None,
    lora_rank: int | None,
    batch_size: int | None,
    max_seq_length: int | None,
    seed: int | None,
    threshold: float,
    max_rounds: int,
    lr_decay: float,
    grader: str,
    max_new_tokens: int | None,
    backend: str,
    workdir: Path | None,
    job_id: str | None,
    wait: bool,
    output: str,
) -> None:
    """Fine-tune a LoRA adapter in evaluation rounds until the held-out score meets the threshold."""
    if (dataset_name is None) == (train_file is None):
        _common.fail("give exactly one of --dataset NAME (from build-dataset) or --train-file PATH")
    hyper = {
        key: value
        for key, value in {
            "epochs": epochs,
            "learningRate": learning_rate,
            "loraRank": lora_rank,
            "batchSize": batch_size,
            "maxSeqLength": max_seq_length,
            "seed": seed,
        }.items()
        if value is not None
    }
    # Training from a file needs no episodes, so it may start a store; a dataset must be in one.
    with _common.open_store(store_url, create=dataset_name is None) as store:
        sha256 = None
        if dataset_name is not None:
            train_file, dataset_validation, record = training_mod.resolve_dataset(store, dataset_name)
            validation_file = validation_file or dataset_validation
            sha256 = record.get("sha256")
            agent_id = agent_id or record.get("agentId")
        assert train_file is not None
        request = training_mod.TrainingRequest(
            agent_id=agent_id,
            base_model=base_model,
            train_file=train_file,
            validation_file=validation_file,
            eval_file=eval_file,
            dataset=dataset_name,
            dataset_sha256=sha256,
            hyperparameters=hyper,
            grader=grader,
            threshold=threshold,
            max_rounds=max_rounds,
            lr_decay=lr_decay,
            max_new_tokens=max_new_tokens,
            backend=backend,
            workdir=workdir,
            job_id=job_id,
        )
        if not wait:
            job = training_mod.start_training(store, request, wait=False)
            if output == "json":
                _common.print_json(job)
            else:
                _common.console.print(
                    f"started training job [bold]{job['id']}[/bold] (files in {job['workdir']}); "
                    "follow it with\n"
                    f"  lightning-op get-training-status --job {job['id']}"
                )
            return
        watcher = _Watcher(enabled=output != "json")
        try:
            with watcher:
                job = training_mod.start_training(store, request, wait=True, on_update=watcher.update)
        except KeyboardInterrupt:
            _common.fail(
                "interrupted: the running round was stopped and the job recorded as Cancelled", code=130
            )
    if output == "json":
        _common.print_json(job)
    else:
        _print_status(job)
    if job["phase"] == "Failed":
        _common.fail(f"training job {job['id']} failed: {job.get('message')}")


class _Watcher:
    """A live progress bar for a waiting ``start-training``, with one printed line per finished round."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=_common.err_console,
            transient=True,
            disable=not enabled,
        )
        self.task: TaskID | None = None
        self.reported_rounds = 0
        self.baseline_reported = False

    def __enter__(self) -> _Watcher:
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=100, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, job: dict[str, Any]) -> None:
        if not self.enabled or self.task is None:
            return
        baseline = job.get("baseline")
        if baseline and not self.baseline_reported:
            self.baseline_reported = True
            self.progress.console.print(
                f"baseline: base model scores {baseline['score']:.3f} on the held-out split"
            )
        done = [r for r in job.get("rounds") or [] if not r.get("running")]
        for entry in done[self.reported_rounds :]:
            score = entry.get("score")
            text = f"{score:.3f}" if score is not None else f"no score ({entry.get('message')})"
            self.progress.console.print(
                f"round {entry['round']}: lr {entry['learningRate']:.3g}, train loss "
                f"{_num(entry.get('trainLoss'))}, valid loss {_num(entry.get('validLoss'))}, score {text}"
            )
        self.reported_rounds = len(done)
        progress = job.get("progress") or {}
        round_number = progress.get("round")
        if round_number == 0:
            description = "baseline"
            detail = "scoring the base model"
        elif round_number:
            description = f"round {round_number}/{progress.get('maxRounds')}"
            epoch = f"epoch {progress.get('epoch') or 1}/{progress.get('epochs') or '?'}"
            loss = f" loss {_num(progress.get('loss'))}" if progress.get("loss") is not None else ""
            detail = epoch + loss
            if (progress.get("percent") or 0) >= 100:
                detail = "scoring the adapter"
        else:
            description, detail = job["phase"].lower(), ""
        self.progress.update(
            self.task, completed=float(progress.get("percent") or 0.0), description=description, detail=detail
        )


def _num(value: Any, digits: int = 4) -> str:
    return _common.figure(None if value is None else float(value), f".{digits}f")


def status_rows(job: dict[str, Any]) -> list[list[Any]]:
    """The seed's table: one row per (round, epoch), the round's score on its last epoch."""
    rows: list[list[Any]] = []
    baseline = job.get("baseline")
    if baseline is not None or job["phase"] not in FINISHED:
        rows.append(["baseline", "", "", "", "", _num(baseline["score"], 3) if baseline else "…"])
    for entry in job.get("rounds") or []:
        epochs = entry.get("epochs") or []
        running = bool(entry.get("running"))
        if not epochs:
            epochs = [{}]
        for i, epoch in enumerate(epochs):
            last = i == len(epochs) - 1
            score = entry.get("score")
            rows.append(
                [
                    str(entry["round"]) if i == 0 else "",
                    f"{entry['learningRate']:.3g}"
                    if i == 0 and entry.get("learningRate") is not None
                    else "",
                    _num(epoch.get("epoch"), 0) if epoch else "",
                    _num(epoch.get("trainLoss")),
                    _num(epoch.get("validLoss")),
                    ("…" if running else _num(score, 3)) if last else "",
                ]
            )
    return rows


def _print_status(job: dict[str, Any]) -> None:
    _common.print_table(
        f"training job {job['id']} ({job['phase']})",
        ["round", "learning rate", "epoch", "train loss", "valid loss", "reward/score"],
        status_rows(job),
    )
    progress = job.get("progress")
    if progress and job["phase"] not in FINISHED:
        what = "baseline" if progress.get("round") == 0 else f"round {progress.get('round')}"
        bar = ProgressBar(total=100.0, completed=float(progress.get("percent") or 0.0), width=40)
        eta = progress.get("etaSeconds")
        _common.console.print(
            bar,
            f" {what}: {float(progress.get('percent') or 0):.0f}%"
            + (f", about {eta:.0f}s left in this round" if eta else ""),
        )
    result = job.get("result")
    console = _common.console
    console.print(f"{job['phase']}: {job.get('message') or ''}", highlight=False)
    for warning in job.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if result and result.get("bestRound") is not None:
        verdict = "[green]meets[/green]" if result.get("thresholdMet") else "[red]does not meet[/red]"
        console.print(
            f"best round {result.get('bestRound')}: score {_num(result.get('score'), 3)} (baseline "
            f"{_num(result.get('baselineScore'), 3)}), {verdict} the threshold {result.get('threshold')}"
        )
        for change in result.get("improvements") or []:
            console.print(
                f"  [green]improved[/green] {change['metric']}: {change['baseline']:.4g} -> "
                f"{change['value']:.4g} ({change['delta']:+.4g})"
            )
        for change in result.get("regressions") or []:
            console.print(
                f"  [red]regressed[/red] {change['metric']}: {change['baseline']:.4g} -> "
                f"{change['value']:.4g} ({change['delta']:+.4g})"
            )
        if not result.get("fineTunedModel") and result.get("bestCheckpoint"):
            console.print(
                f"best round's adapter (below the threshold, so not offered for promotion): "
                f"{result['bestCheckpoint']}; to use it anyway: lightning-op promote-model --adapter PATH",
                highlight=False,
                soft_wrap=True,
            )
        if result.get("fineTunedModel"):
            console.print(f"fine-tuned adapter: {result['fineTunedModel']}")
            job_id = job["id"]
            console.print(
                f"next: lightning-op promote-model --job {job_id}  |  lightning-op report --job {job_id}"
            )


@click.command("get-training-status")
@_common.store_option
@click.option("--job", "job_id", required=True, metavar="ID", help="The job id start-training printed.")
@click.option(
    "--watch",
    is_flag=True,
    help="Wait until the job finishes (a progress bar with the table output); exit 1 if it failed.",
)
@_common.output_option
@_common.handle_errors
def get_training_status(store_url: str | None, job_id: str, watch: bool, output: str) -> None:
    """Show a training job: per round and epoch the losses and the held-out score, and the result."""
    with _common.open_store(store_url) as store:
        job = training_mod.get_training_status(store, job_id)
        if watch and job["phase"] not in FINISHED:
            # -o json waits too (no bar): a script gets the finished job
            with _Watcher(enabled=output != "json") as watcher:
                while job["phase"] not in FINISHED:
                    watcher.update(job)
                    time.sleep(1.0)
                    job = training_mod.get_training_status(store, job_id)
    if output == "json":
        _common.print_json(job)
    else:
        _print_status(job)
    if watch and job["phase"] == "Failed":  # as start-training --wait: a script can tell
        _common.fail(f"training job {job['id']} failed: {job.get('message')}")


@click.command("report")
@_common.store_option
@click.option("--job", "job_id", required=True, metavar="ID", help="The training job to report on.")
@click.option(
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for index.html and the PNG plots (default: the job's report/ directory).",
)
@format_option
@_common.handle_errors
def report(store_url: str | None, job_id: str, output_dir: Path | None, output_format: str) -> None:
    """Write an HTML report with loss curves, per-round scores and rewards before/after."""
    from lightning_op.pipeline import report as report_mod

    with _common.open_store(store_url) as store:
        try:
            index = report_mod.write_report(store, job_id, output_dir)
        except store_base.NotFoundError as exc:
            _common.fail(str(exc))
    if output_format == "json":
        _common.print_json(
            {"job": job_id, "report": str(index), "files": sorted(p.name for p in index.parent.iterdir())}
        )
    else:
        _common.console.print(f"report: {index}")
