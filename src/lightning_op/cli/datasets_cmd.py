"""``build-dataset`` and ``dataset-info``: turn labeled episodes into a training file and inspect it.

``build-dataset`` reads the agent's labeled episodes from the store (``iter_json``, the fast path with
no per-row validation), hands them to ``datasets.build`` and keeps the statistics as the store record
``("dataset", NAME)``; ``dataset-info`` shows that record (or a bare file's figures) and re-checks the
files' sha256. Unless ``--output`` says otherwise, datasets go to a ``datasets/`` directory next to a
SQLite store's file, or under the user's data directory (``$XDG_DATA_HOME/lightning-op/datasets``)
for other stores.

``--output`` is the dataset *file* here, so the output format is ``-o`` only (``-o json`` as in
every other command).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import click

from lightning_op import store as store_mod
from lightning_op.cli import _common, episodes
from lightning_op.datasets import build, rows, validate
from lightning_op.store import base as store_base
from lightning_op.store import sqlite as sqlite_store

format_option = _common.format_only_option("output_format_")


@click.command("build-dataset")
@_common.store_option
@click.option("--agent-id", required=True, metavar="AGENT", help="The agent whose labeled episodes to use.")
@click.option(
    "--name",
    default=None,
    help="Dataset name (record and file name). Default: AGENT-<first 12 hex digits of the sha256>.",
)
@click.option(
    "--min-reward",
    default="0.7",
    show_default=True,
    metavar="0..1",
    help="Keep episodes with reward >= this.",
)
@click.option(
    "--output-format",
    default="jsonl",
    show_default=True,
    metavar="FORMAT",
    help="File format (only jsonl for now).",
)
@click.option(
    "--output",
    "output_path",
    default=None,
    metavar="PATH",
    help="The training file to write, or an existing directory for NAME.jsonl; validation rows go "
    "beside it as NAME.validation.jsonl. "
    "Default: NAME.jsonl in a datasets/ directory next to a SQLite store, "
    "else under the user data directory.",
)
@click.option(
    "--since", default=None, metavar="TIME", help="Only episodes from TIME on: ISO 8601 or an age (7d)."
)
@click.option(
    "--max-episodes", default=None, metavar="N", help="Keep at most N distinct episodes (oldest first)."
)
@click.option(
    "--validation-fraction",
    default="0.1",
    show_default=True,
    metavar="F",
    help="Share of rows for validation, 0..<1.",
)
@click.option(
    "--system-prompt",
    default=rows.DEFAULT_SYSTEM_PROMPT,
    show_default=True,
    help="System message of every row ('' for none).",
)
@format_option
@_common.handle_errors
def build_dataset(
    store_url: str | None,
    agent_id: str,
    name: str | None,
    min_reward: str,
    output_format: str,
    output_path: str | None,
    since: str | None,
    max_episodes: str | None,
    validation_fraction: str,
    system_prompt: str,
    output_format_: str,
) -> None:
    """Build a chat-format JSONL dataset from an agent's labeled episodes."""
    if output_format != "jsonl":
        _common.fail(f"--output-format {output_format!r} is not supported: use jsonl")
    minimum = episodes.parse_float(min_reward, "--min-reward", 0.0, 1.0, hint="give a reward between 0 and 1")
    fraction = episodes.parse_float(
        validation_fraction,
        "--validation-fraction",
        0.0,
        1.0,
        hint="give a share from 0 up to (not including) 1",
    )
    if fraction >= 1.0:
        _common.fail("--validation-fraction must be below 1: the training file needs rows too")
    cap = episodes.parse_int(max_episodes, "--max-episodes", minimum=1) if max_episodes is not None else None
    if name is not None:
        build.check_name(name)
    options = build.BuildOptions(
        agent_id=agent_id,
        min_reward=minimum,
        since=_common.parse_time(since, "--since"),
        max_episodes=cap,
        validation_fraction=fraction,
        system_prompt=system_prompt,
        output_format=output_format,
    )
    with _common.open_store(store_url) as store:
        target: dict[str, Any]
        if output_path and not Path(output_path).is_dir():
            target = {"output": Path(output_path)}
        else:
            target = {"output_dir": Path(output_path) if output_path else default_output_dir(store)}
        total = store.count(agent_id=agent_id, labeled=True)
        query = store_base.EpisodeQuery(**options.query_filter())
        try:
            with _common.progress("building dataset", total, disable=output_format_ == "json") as bar:
                task = bar.add_task(f"building dataset of {agent_id}", total=total or None)
                stats = build.build_dataset(
                    store.iter_json(query),
                    options,
                    name=name,
                    on_progress=lambda n: bar.update(task, completed=n),
                    **target,
                )
        except build.EmptyDatasetError as exc:
            _common.fail(_empty_message(store, options, exc))
        store.put_record(build.RECORD_KIND, stats.name, stats.to_json_dict())
    if fraction > 0 and not stats.validation_episodes:
        _common.warn(
            f"no held-out split: {stats.episodes} episode{'' if stats.episodes == 1 else 's'} at "
            f"--validation-fraction {fraction:g} give no validation row, so training will score rounds "
            "on its own training data (label more episodes, or raise --validation-fraction)"
        )
    if output_format_ == "json":
        _common.print_json(stats.to_json_dict())
        return
    _common.print_table(f"dataset {stats.name}", ["field", "value"], _stats_rows(stats))


@click.command("dataset-info")
@_common.store_option
@click.option("--name", default=None, help="A dataset built by build-dataset (a store record).")
@click.option("--path", "file_path", default=None, metavar="PATH", help="A JSONL dataset file.")
@_common.output_option
@_common.handle_errors
def dataset_info(store_url: str | None, name: str | None, file_path: str | None, output: str) -> None:
    """Show a dataset's figures and check that its files still match their sha256."""
    if (name is None) == (file_path is None):
        _common.fail("give exactly one of --name (a dataset built by build-dataset) or --path (a JSONL file)")
    if name is not None:
        with _common.open_store(store_url) as store:
            record = store.get_record(build.RECORD_KIND, name)
            if record is None:
                known = sorted(r.name for r in store.list_records(build.RECORD_KIND))
                hint = f" (known: {', '.join(known[:10])})" if known else " (none built yet)"
                _common.fail(f"dataset {name} not found in {store.url}{hint}: build it with build-dataset")
        stats: build.DatasetStats | None = build.DatasetStats.from_json_dict(record.data)
    else:
        assert file_path is not None
        if not Path(file_path).is_file():
            _common.fail(f"{file_path} is not a file: give the path of a JSONL dataset")
        stats = _record_for_path(store_url, Path(file_path))
    # Exit 1 after printing when the check fails, so a script can tell (the message is already out).
    if stats is not None:
        ok = _show_built(stats, output)
    else:
        assert file_path is not None
        ok = _show_file(Path(file_path), output)
    if not ok:
        sys.exit(1)


def default_output_dir(store: store_base.EpisodeStore) -> Path:
    """``datasets/`` next to a SQLite store's file, else ``<user data dir>/lightning-op/datasets``."""
    db_path = getattr(store, "path", None)
    if db_path is None and store.url.startswith("sqlite:///"):
        db_path = unquote(store.url.removeprefix("sqlite:///").split("?", 1)[0])
    if db_path and str(db_path) != ":memory:":
        return Path(db_path).expanduser().resolve().parent / "datasets"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "lightning-op" / "datasets"


def _empty_message(
    store: store_base.EpisodeStore, options: build.BuildOptions, exc: build.EmptyDatasetError
) -> str:
    stats = store.reward_stats(options.agent_id, since=options.since)
    scope = f"agent {options.agent_id}" + (f" since {options.since.isoformat()}" if options.since else "")
    head = f"no episodes of {scope} with reward >= {options.min_reward:g}"
    if exc.skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(exc.skipped.items()))
        return f"{head}: {exc.scanned} matched but none could become a training row ({reasons})"
    if not stats.labeled:
        return (
            f"{head} ({stats.count} episodes, none labeled): "
            "label some with label-episode or label-batch first"
        )
    best = f", best {stats.max:g}" if stats.max is not None else ""
    return f"{head} ({stats.labeled} labeled{best}): lower --min-reward or label more episodes"


def _record_for_path(store_url: str | None, path: Path) -> build.DatasetStats | None:
    """The record of the dataset whose training or validation file is ``path``, if any (none when
    there is no store: a bare file is checked on its own)."""
    try:
        store = store_mod.open_store(store_url, create=False)
    except sqlite_store.MissingStoreError:
        return None
    except store_base.StoreError as exc:
        _common.fail(str(exc))
    wanted = path.resolve()
    try:
        for record in store.list_records(build.RECORD_KIND):
            data = record.data
            for key in ("path", "validationPath"):
                if data.get(key) and Path(str(data[key])).resolve() == wanted:
                    return build.DatasetStats.from_json_dict(data)
    finally:
        store.close()
    return None


def _show_built(stats: build.DatasetStats, output: str) -> bool:
    """Print the record and its check; True when the files match their sha256."""
    problems = validate.verify_files(stats)
    for problem in problems:
        _common.err_console.print(
            f"[yellow]warning:[/yellow] {problem}: rebuild it with build-dataset before training on it",
            highlight=False,
            soft_wrap=True,
        )
    if output == "json":
        _common.print_json({**stats.to_json_dict(), "verified": not problems, "problems": problems})
        return not problems
    rows_ = _stats_rows(stats)
    rows_.append(
        ("verified", "yes: files match their sha256" if not problems else "NO: " + "; ".join(problems))
    )
    _common.print_table(f"dataset {stats.name}", ["field", "value"], rows_)
    return not problems


def _show_file(path: Path, output: str) -> bool:
    """A file no record knows: what can be read from the file itself; True when every line is valid."""
    report = validate.validate_dataset(path)
    info: dict[str, Any] = {
        "name": None,
        "path": str(path.resolve()),
        "sha256": validate.file_sha256(path),
        "bytes": path.stat().st_size,
        "episodes": report.rows,
        "tokens": report.tokens,
        "avgReward": None,
        "minReward": None,
        "maxReward": None,
        "created": datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(),
        "valid": report.ok,
        "errorCount": report.error_count,
        "errors": [{"line": e.line, "message": e.message} for e in report.errors],
    }
    if not report.ok:
        _common.err_console.print(
            f"[yellow]warning:[/yellow] {report.summary()}", highlight=False, soft_wrap=True
        )
    if output == "json":
        _common.print_json(info)
        return report.ok
    _common.print_table(
        f"dataset file {path.name}",
        ["field", "value"],
        [
            ("path", info["path"]),
            ("episodes", report.rows),
            ("tokens (estimate)", f"{report.tokens:,}"),
            ("sha256", info["sha256"]),
            ("created", info["created"]),
            ("rewards", "unknown: not built by build-dataset in this store"),
            ("valid", "yes" if report.ok else f"NO: {report.summary()}"),
        ],
    )
    return report.ok


def _stats_rows(stats: build.DatasetStats) -> list[tuple[str, Any]]:
    split = f"{stats.train_episodes:,} train, {stats.validation_episodes:,} validation"
    skipped = sum(stats.skipped.values())
    rows_: list[tuple[str, Any]] = [
        ("name", stats.name),
        ("agent", stats.agent_id),
        ("episodes", f"{stats.episodes:,} ({split})"),
        ("duplicates removed", f"{stats.duplicates_removed:,}"),
    ]
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(stats.skipped.items()))
        rows_.append(("skipped", f"{skipped:,} ({reasons})"))
    rows_ += [
        ("reward avg/min/max", f"{stats.avg_reward:.3f} / {stats.min_reward:.3f} / {stats.max_reward:.3f}"),
        ("tokens (estimate)", f"{stats.tokens:,}"),
        ("sha256", stats.sha256),
        ("path", stats.path),
    ]
    if stats.validation_path:
        rows_ += [("validation path", stats.validation_path), ("validation sha256", stats.validation_sha256)]
    rows_.append(("created", stats.created.isoformat()))
    return rows_
