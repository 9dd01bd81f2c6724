"""``lightning-op operator``: run the kopf operator, with ``/healthz`` and ``/metrics`` on one port.

The controllers (``lightning_op.controllers``) register their handlers on import; this command picks
the namespaces, passes the options to them through kopf's memo (``controllers.common.OperatorConfig``)
and serves a small aiohttp app beside kopf: ``GET /healthz`` (200 once kopf is ready, 503 before)
and ``GET /metrics`` (``metrics.Metrics`` in Prometheus' text format). One app rather than kopf's
``liveness_endpoint`` plus prometheus-client's server: one port for the Pod's probes and the
ServiceMonitor, and readiness means "kopf has started its watches", which kopf's ready flag says.

The cluster is reached with the standard configuration: in-cluster (the service account), else
``KUBECONFIG`` / ``~/.kube/config`` (kopf's default login and ``k8s.load_api_client``).
``kopf run -m lightning_op.controllers`` runs the same handlers, configured from the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lightning_op.api import constants

if TYPE_CHECKING:
    from lightning_op.controllers import common

log = logging.getLogger(__name__)


@click.command("operator")
@click.option(
    "--store",
    "store_url",
    envvar=constants.ENV_STORE,
    default=None,
    metavar="URL",
    help="Episode store (sqlite:///path/episodes.db or cosmos://...); env LIGHTNING_STORE.",
)
@click.option(
    "--namespace",
    "-n",
    "namespaces",
    multiple=True,
    metavar="NS",
    help="Namespace to watch (repeat for several; globs like 'team-*' work). Default: all namespaces.",
)
@click.option("--all-namespaces", "-A", is_flag=True, help="Watch every namespace (cluster-wide).")
@click.option(
    "--metrics-port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of /healthz and /metrics.",
)
@click.option(
    "--metrics-host", default="0.0.0.0", show_default=True, help="Address of /healthz and /metrics."
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="LIGHTNING_MODELS_DIR",
    help="Where the model volume is mounted in the operator (datasets are written there).",
)
@click.option(
    "--collector-url",
    default=None,
    envvar="LIGHTNING_COLLECTOR_URL",
    metavar="URL",
    help="Collector URL that EpisodeCapture gives agents (unless the object names one).",
)
def operator(
    store_url: str | None,
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    metrics_port: int,
    metrics_host: str,
    models_dir: Path | None,
    collector_url: str | None,
) -> None:
    """Run the Kubernetes operator for the four lightning-op kinds."""
    if namespaces and all_namespaces:
        raise click.UsageError("give --namespace or --all-namespaces, not both")
    from lightning_op.controllers import common

    base = common.OperatorConfig.from_env()
    config = common.OperatorConfig(
        store_url=store_url or base.store_url,
        collector_url=collector_url or base.collector_url,
        models_dir=str(models_dir) if models_dir else base.models_dir,
        retry_delay=base.retry_delay,
    )
    _check_cluster_config()
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    asyncio.run(_run(config, namespaces, metrics_host, metrics_port))


def _check_cluster_config() -> None:
    """Exit 1 with one line when neither in-cluster config nor a kubeconfig can be loaded.

    kopf would retry its startup handler every minute with a traceback each time, and /healthz would
    answer 503 forever: a missing or broken kubeconfig does not fix itself. Loading it here is what
    the startup handler does (``k8s.load_api_client``), so a config that passes here works there."""
    from lightning_op import k8s

    try:
        k8s.load_api_client().close()  # type: ignore[no-untyped-call]
    except Exception as exc:  # ConfigException, a YAML error, an unreadable file...: all mean the same
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise click.ClickException(
            f"no Kubernetes config: set KUBECONFIG or run in a cluster ({_cut(reason, 300)})"
        ) from None


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


async def _run(config: common.OperatorConfig, namespaces: tuple[str, ...], host: str, port: int) -> None:
    import kopf
    from aiohttp import web

    import lightning_op.controllers  # noqa: F401  (registers the handlers)
    from lightning_op import metrics as metrics_mod

    metrics = metrics_mod.Metrics()
    ready = asyncio.Event()

    async def healthz(_: web.Request) -> web.Response:
        if not ready.is_set():
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics_page(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = metrics_mod.CONTENT_TYPE
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("serving /healthz and /metrics on %s:%s (pid %s)", host, port, os.getpid())
    try:
        await kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            memo=kopf.Memo(config=config, metrics=metrics),
            ready_flag=ready,
        )
    finally:
        await runner.cleanup()
