"""The baseline of ``bench_operator.py``: a kopf operator whose one handler does nothing but mark a
FineTuneJob Succeeded, with the same kopf settings as lightning-op (``controllers.common.apply_settings``)
and the same login (the kubeconfig, through the kubernetes client).

    KUBECONFIG=... python bench/noop_operator.py --namespace NS

Its handlers live in a registry of their own: importing ``controllers.common`` registers lightning-op's
handlers in kopf's default registry, which this operator does not run.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import kopf

from lightning_op.api import constants
from lightning_op.controllers import common

registry = kopf.OperatorRegistry()


@kopf.on.startup(registry=registry)
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    common.apply_settings(settings)


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_via_client(**kwargs)


@kopf.on.create(constants.GROUP, constants.VERSION, "finetunejobs", registry=registry)
async def noop(patch: kopf.Patch, **_: Any) -> None:
    patch.status["phase"] = "Succeeded"


def run_operator(operator_registry: kopf.OperatorRegistry) -> None:
    """Run a bench operator's registry in the namespace given by ``--namespace`` (also for
    ``floor_operator.py``)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", required=True)
    args = parser.parse_args()
    asyncio.run(
        kopf.operator(
            registry=operator_registry, standalone=True, clusterwide=False, namespaces=[args.namespace]
        )
    )


def main() -> None:
    run_operator(registry)


if __name__ == "__main__":
    main()
