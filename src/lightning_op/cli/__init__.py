"""The ``lightning-op`` command line: the whole loop on one machine, with no cluster.

Commands live in small modules of this package and are imported only when invoked, so
``lightning-op list-episodes`` does not pay for importing torch. Each module talks to ``pipeline``,
``store``, ``graders``, ``datasets`` and ``training``; output goes through ``_common`` (rich tables
for people, ``-o json`` for scripts, one-line errors with a non-zero exit).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from lightning_op import __version__

# command name -> "module:function" inside lightning_op.cli
COMMANDS: dict[str, str] = {
    # data plane
    "list-episodes": "episodes:list_episodes",
    "label-episode": "episodes:label_episode",
    "build-dataset": "datasets_cmd:build_dataset",
    "dataset-info": "datasets_cmd:dataset_info",
    "collector": "collector_cmd:collector",
    # graders and labeling
    "test-grader": "graders_cmd:test_grader",
    "label-batch": "graders_cmd:label_batch",
    "dry-run": "graders_cmd:dry_run",
    # training, serving, promotion
    "start-training": "training_cmd:start_training",
    "get-training-status": "training_cmd:get_training_status",
    "serve": "serving_cmd:serve",
    "promote-model": "promotion_cmd:promote_model",
    "compare-versions": "promotion_cmd:compare_versions",
    "report": "training_cmd:report",
    "demo": "demo_cmd:demo",
    # operator
    "operator": "operator_run:operator",
    "crds": "crds_cmd:crds",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(f"lightning_op.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lightning_op.cli.{module_name}":
                return _not_built(cmd_name)
            raise
        command: click.Command = getattr(module, attr)
        return command


def _not_built(name: str) -> click.Command:
    @click.command(name=name, help="(not available in this build)")
    def missing() -> None:
        raise click.ClickException(f"'{name}' is not available in this build of lightning-op")

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lightning-op")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """Make AI agents improve from their own traffic: capture, label, fine-tune, promote."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a usage error (missing option, bad value) is one line on stderr and exit code 2."""
    try:
        # Commands exit through sys.exit/fail(); their return values are not exit codes.
        cli.main(args=argv, prog_name="lightning-op", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())  # a bare ``lightning-op``: the help, as asked
        sys.exit(0)
    except click.ClickException as exc:
        ctx = exc.ctx if isinstance(exc, click.UsageError) else None
        # name the subcommand whose usage was wrong; the group itself needs no second mention
        where = f" (lightning-op {ctx.info_name})" if ctx is not None and ctx.parent is not None else ""
        click.echo(f"error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
