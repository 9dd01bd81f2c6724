"""``lightning-op collector``: run the episode ingest service (``collector.server``) in the foreground.

Opens the store named by ``--store``, serves ``POST /v1/episodes``, ``/healthz``, ``/readyz`` and
``/metrics`` until SIGTERM or SIGINT, then drains in-flight batches, closes the store and exits 0.
Logs one line when listening (with the real port, so ``--port 0`` picks a free one) and one when
stopped; episode contents are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import click

from lightning_op.cli import _common
from lightning_op.collector import server
from lightning_op.store import base as store_base
from lightning_op.store import redaction


def _read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            _common.fail(f"cannot read --token-file {token_file}: {exc.strerror or exc}")
        if not token:
            _common.fail(f"--token-file {token_file} is empty: put the bearer token in it")
        return token
    token = os.environ.get(server.TOKEN_ENV, "").strip()
    return token or None


@click.command(name="collector")
@_common.store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"File holding the bearer token clients must send (else env {server.TOKEN_ENV}; none: no auth).",
)
@click.option(
    "--max-body-bytes",
    default=server.DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    type=click.IntRange(1024),
    help="Largest request body, before and after gzip decompression (413 above).",
)
@click.option(
    "--max-inflight-bytes",
    default=None,
    type=click.IntRange(1024),
    help="Request bodies held at once by the requests being handled (429 with Retry-After above); "
    f"default: {server.DEFAULT_INFLIGHT_BODIES} x --max-body-bytes.",
)
@click.option(
    "--queue-size",
    default=server.DEFAULT_QUEUE_SIZE,
    show_default=True,
    type=click.IntRange(1),
    help="Batches waiting for the writer before clients get 429 with Retry-After.",
)
@click.option(
    "--redact",
    "redact_builtins",
    multiple=True,
    metavar="NAME",
    help="Built-in detector to apply (repeatable: email, phone, credit_card, ip, ipv4, ipv6, bearer, "
    "api_key); default: all of them.",
)
@click.option(
    "--redact-pattern",
    "redact_patterns",
    multiple=True,
    metavar="REGEX",
    help="Extra regex whose matches are redacted before anything is written (repeatable).",
)
def collector(
    store_url: str | None,
    host: str,
    port: int,
    token_file: Path | None,
    max_body_bytes: int,
    max_inflight_bytes: int | None,
    queue_size: int,
    redact_builtins: tuple[str, ...],
    redact_patterns: tuple[str, ...],
) -> None:
    """Serve POST /v1/episodes: validate episode batches and commit them to the store."""
    # A service logs its lifecycle by default, even without -v.
    collector_log = logging.getLogger("lightning_op.collector")
    if collector_log.getEffectiveLevel() > logging.INFO:
        collector_log.setLevel(logging.INFO)
    try:
        # Build once here so a bad detector name or regex is a one-line error before we listen.
        redaction.Redactor(builtins=redact_builtins or None, patterns=redact_patterns)
    except ValueError as exc:
        _common.fail(f"collector redaction: {exc}")
    if max_inflight_bytes is not None and max_inflight_bytes < max_body_bytes:
        raise click.UsageError(
            f"--max-inflight-bytes {max_inflight_bytes} is below --max-body-bytes {max_body_bytes}: "
            "a body of the largest allowed size could never be taken"
        )
    config = server.CollectorConfig(
        store_url=store_url,
        token=_read_token(token_file),
        max_body_bytes=max_body_bytes,
        max_inflight_bytes=max_inflight_bytes,
        queue_size=queue_size,
        redact_builtins=redact_builtins or None,
        redact_patterns=redact_patterns,
    )
    try:
        asyncio.run(server.serve(config, host, port))
    except store_base.StoreError as exc:
        _common.fail(f"collector cannot open the store: {exc}")
    except server.ListenError as exc:
        _common.fail(f"collector {exc}")
