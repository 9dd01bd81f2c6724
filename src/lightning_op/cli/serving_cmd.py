"""``lightning-op serve``: an OpenAI-compatible server for a local base model plus a LoRA adapter.

Loads the model (``serving.server.ModelServer``), then serves ``/v1/chat/completions``, ``/v1/models``
and ``/admin/adapter`` in the foreground until SIGTERM or SIGINT. Logs one line when listening, with
the real port (``--port 0`` picks a free one), so scripts and the demo can wait for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from pathlib import Path

import click

from lightning_op.cli import _common

ADMIN_TOKEN_ENV = "LIGHTNING_SERVE_ADMIN_TOKEN"


@click.command(name="serve")
@click.option(
    "--base",
    "base",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Base model directory (loadable by transformers' from_pretrained).",
)
@click.option(
    "--adapter",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="LoRA adapter directory to serve as the tuned model from the start.",
)
@click.option(
    "--base-name", default=None, help="Model name for the base model (default: the directory name)."
)
@click.option(
    "--tuned-name", default=None, help="Model name for base + adapter (default: <base name>-tuned)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--admin-token",
    envvar=ADMIN_TOKEN_ENV,
    default=None,
    help=f"Bearer token for /admin/adapter (env {ADMIN_TOKEN_ENV}); required unless --host is loopback.",
)
def serve(
    base: Path,
    adapter: Path | None,
    base_name: str | None,
    tuned_name: str | None,
    host: str,
    port: int,
    device: str,
    admin_token: str | None,
) -> None:
    """Serve a base model and its fine-tuned adapter with the OpenAI chat completions API."""
    if not admin_token and not _loopback(host):
        _common.fail(
            f"--host {host} without --admin-token (env {ADMIN_TOKEN_ENV}) would let anyone who reaches it "
            "load adapters through /admin/adapter: give a token, or listen on 127.0.0.1"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    serving_log = logging.getLogger("lightning_op.serving")
    if serving_log.getEffectiveLevel() > logging.INFO:
        serving_log.setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    from lightning_op.serving import server as server_mod

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    try:
        model = server_mod.ModelServer(
            base, base_name=base_name, tuned_name=tuned_name, adapter=adapter, device=device
        )
    except server_mod.ServingError as exc:
        _common.fail(exc.message)
    except (ValueError, OSError) as exc:
        _common.fail(str(exc).splitlines()[0])
    try:
        asyncio.run(server_mod.serve(model, host, port, admin_token=admin_token))
    except server_mod.ListenError as exc:
        _common.fail(f"serve {exc}")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
