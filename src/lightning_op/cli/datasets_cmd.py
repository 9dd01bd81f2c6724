"""``build-dataset`` and ``dataset-info``: turn labeled episodes into a training file and inspect it.

``build-dataset`` reads the agent's labeled episodes from the store (``iter_json``, the fast path with
no per-row validation), hands them to ``datasets.build`` and keeps the statistics as the store record
``("dataset", NAME)``; ``dataset-info`` shows that record (or a bare file's figures) and re-checks the
files' sha256. Unless ``--output`` says otherwise, datasets go to a ``datasets/`` directory next to a
SQLite store's file, or under the user's data directory (``$XDG_DATA_HOME/lightning-op/datasets``)
for other stores.

``--output`` is where the dataset goes, so the output format is ``-o`` only (``-o json`` as in every
other command). It is read one way (``output_target``): a directory (one that exists, or any path
ending in '/') gets ``NAME.jsonl`` and ``NAME.validation.jsonl``; a path ending in ``.jsonl`` is the
training file itself, with ``<stem>.validation.jsonl`` beside it; anything else is refused rather
than guessed at (``--output data`` could mean either).

The record is saved before the files are moved into place (``build.build_dataset``'s
``save_record``): when the store refuses it, the command fails and no file changed. With ``--name``
the record must still be at the revision it had when the build started, so of two builds of one name
the one that saves second fails (``ConflictError``) instead of leaving the other's record pointing at
its files.
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
    help="Dataset name: the store record, and the file name NAME.jsonl unless --output names the "
    "file. Default: AGENT-<first 12 hex digits of the training file's sha256>.",
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
    help="Where to write. A directory (an existing one, or a path ending in '/', created if "
    "missing) gets NAME.jsonl and NAME.validation.jsonl. A path ending in .jsonl is the training file "
    "itself; validation rows go beside it as <stem>.validation.jsonl (train.jsonl -> "
    "train.validation.jsonl). Files of the same names are replaced, and only once the dataset's "
    "record is saved. Default: the directory datasets/ next to a SQLite store, else under the user "
    "data directory.",
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
    output_file, output_dir = output_target(output_path)
    with _common.open_store(store_url) as store:
        if output_file is None and output_dir is None:
            output_dir = default_output_dir(store)
        revision = _revision(store, name) if name is not None else None
        total = store.count(agent_id=agent_id, labeled=True)
        query = store_base.EpisodeQuery(**options.query_filter())
        try:
            with _common.progress("building dataset", total, disable=output_format_ == "json") as bar:
                task = bar.add_task(f"building dataset of {agent_id}", total=total or None)
                stats = build.build_dataset(
                    store.iter_json(query),
                    options,
                    output=output_file,
                    output_dir=output_dir,
                    name=name,
                    save_record=lambda built: _save_record(store, built, revision),
                    on_progress=lambda n: bar.update(task, completed=n),
                )
        except build.EmptyDatasetError as exc:
            _common.fail(_empty_message(store, options, exc))
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


def output_target(output: str | None) -> tuple[Path | None, Path | None]:
    """``build_dataset``'s ``(output, output_dir)`` for ``--output``; both None when it is not given.

    A directory is one that exists or a path ending in '/'; a file is a path ending in ``.jsonl``, so
    its validation file is ``<stem>.validation.jsonl``. Anything else is a one-line error: a bare
    ``data`` would otherwise become a training file called ``data`` beside ``data.validation.jsonl``.
    """
    if not output:
        return None, None
    path = Path(output).expanduser()
    if output.endswith(("/", os.sep)) or path.is_dir():
        return None, path
    if path.suffix.lower() == ".jsonl":
        return path, None
    _common.fail(
        f"--output {output!r} is neither a directory nor a .jsonl file: end a directory with '/' "
        f"(it is created) or name the training file {path.stem or 'train'}.jsonl"
    )


def _revision(store: store_base.EpisodeStore, name: str) -> int:
    record = store.get_record(build.RECORD_KIND, name)
    return 0 if record is None else record.revision


def _save_record(store: store_base.EpisodeStore, stats: build.DatasetStats, revision: int | None) -> None:
    """Keep ``stats`` as the record ``("dataset", name)``; ``revision``: the one it must still be at
    (0: absent), or None for a content-addressed name, whose files are the same whoever writes them."""
    try:
        store.put_record(build.RECORD_KIND, stats.name, stats.to_json_dict(), expected_revision=revision)
    except store_base.ConflictError as exc:
        raise store_base.ConflictError(
            f"dataset {stats.name} not saved and no file changed: another build-dataset saved a dataset of "
            f"that name while this one ran ({exc}); run build-dataset again to replace it"
        ) from exc
    except store_base.StoreError as exc:
        raise store_base.StoreError(f"dataset {stats.name} not saved and no file changed: {exc}") from exc


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
