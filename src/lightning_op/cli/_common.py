"""Shared CLI plumbing: the ``--store`` and ``-o`` options, table/JSON output, one-line errors.

Every command uses ``store_option`` and ``output_option`` so the flags read the same everywhere, and
``emit`` to print either a rich table (people) or JSON (scripts: an array, or one object for single
results). ``fail`` exits non-zero with a one-line reason.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lightning_op import store as store_mod
from lightning_op.store import base as store_base

F = TypeVar("F", bound=Callable[..., Any])

# Soft wrap: a printed line is never broken at the terminal's width (80 columns when piped), so the
# paths, ids and commands in it can be copied whole; the terminal wraps it for the eye. Tables
# still fit the width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

#: Upper bound of counts (--limit, --sample-size, ...): SQLite integers are 64-bit, and no run needs more.
MAX_COUNT = 2**31 - 1


def _check_store_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # An empty --store (an unset shell variable: --store "$STORE") must not quietly mean the default.
    if value is not None and not value.strip():
        raise click.BadParameter(
            "is empty: give a store URL (sqlite:////path/episodes.db), or leave --store out for the default"
        )
    return value


store_option = click.option(
    "--store",
    "store_url",
    envvar="LIGHTNING_STORE",
    default=None,
    metavar="URL",
    callback=_check_store_url,
    help="Episode store URL (sqlite:///path.db, with ?timeout=SECONDS to wait longer or shorter "
    "than 10 s for another writer's lock; cosmos://...); env LIGHTNING_STORE; "
    "default: a SQLite file under the user's data directory.",
)
output_option = click.option(
    "-o",
    "--output",
    "output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format: a table for people, JSON for scripts.",
)


def format_only_option(dest: str) -> Callable[[F], F]:
    """``-o table|json`` without the long ``--output``, for commands whose ``--output`` is a path."""
    return click.option(
        "-o",
        dest,
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Output format: a table for people, JSON for scripts.",
    )


class Fraction(click.ParamType[float]):
    """A number from 0 to 1. ``click.FloatRange`` lets ``nan`` through (every comparison with it is
    false), which would switch a limit off without a word."""

    name = "fraction"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not 0.0 <= number <= 1.0:  # false for nan too
            self.fail(f"{value} is not a number from 0 to 1", param, ctx)
        return number


FRACTION = Fraction()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line reason to stderr and exit non-zero."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn expected errors (bad input, store problems) into one-line messages and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (store_base.StoreError, ValueError, OSError) as exc:
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    return wrapper  # type: ignore[return-value]


@contextmanager
def open_store(url: str | None, *, create: bool = False) -> Iterator[store_base.EpisodeStore]:
    """The store ``--store`` names, closed on exit; a store that cannot be opened is a one-line error.

    Only commands that start something new (``start-training`` from a file) pass ``create=True``: the
    others read or label what is there, and a missing file means a wrong ``--store``, not an empty
    store to create (the collector, which fills stores, opens its own)."""
    try:
        store = store_mod.open_store(url, create=create)
    except store_base.StoreError as exc:
        fail(str(exc))
    try:
        yield store
    finally:
        store.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=_json_default, ensure_ascii=False, indent=2))


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    whole: Sequence[str] = (),
) -> None:
    """A table on stdout. Columns named in ``whole`` (ids a user copies into the next command) are
    never wrapped; the others fold to fit the terminal."""
    table = Table(title=title, show_lines=False)
    for column in columns:
        if column in whole:
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def figure(value: float | None, spec: str) -> str:
    """``value`` as ``format(value, spec)`` (".3f", "+.3f"), or "–" when there is none."""
    return "–" if value is None else format(value, spec)


def warn(message: str) -> None:
    """A one-line warning on stderr: the command goes on."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def progress(description: str, total: int | None, *, disable: bool = False) -> Progress:
    """A progress bar on stderr for long work (hidden with -o json or when stderr is not a terminal)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        # A bar drawn on a pipe or file would leave blank lines in a one-line error or in logs.
        disable=disable or not err_console.is_terminal,
    )


def parse_time(value: str | None, option: str) -> datetime | None:
    """Parse ``--since``/``--until``: ISO 8601, or a relative age like 30m, 6h, 7d."""
    if value is None:
        return None
    from datetime import UTC, timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    hint = "use ISO 8601 (2026-01-31T12:00:00Z) or an age like 6h or 7d"
    if value and value[-1] in units and value[:-1].isdigit():
        try:
            return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
        except OverflowError:
            fail(f"{option} {value!r} is not a time: the age reaches before the year 1; {hint}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option} {value!r} is not a time: {hint}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
