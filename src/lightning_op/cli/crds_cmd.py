"""``lightning-op crds``: print or write the generated CustomResourceDefinitions and RBAC.

The objects come from ``manifests.crds`` (built from the pydantic models in ``api``); this module only
renders and writes them. ``make crds`` runs ``lightning-op crds --output-dir crds`` to refresh the
checked-in files; a unit test fails when they drift. (``lightning-op operator`` is in ``operator_run``.)
"""

from __future__ import annotations

from pathlib import Path

import click

from lightning_op.manifests import crds as crd_manifests


@click.command("crds")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, dir_okay=True, writable=True, path_type=Path),
    default=None,
    metavar="DIR",
    help="Write one file per CRD (NAME.lightning-op.dev.yaml) and rbac.yaml into DIR instead of printing.",
)
@click.option(
    "--rbac/--no-rbac",
    default=False,
    show_default=True,
    help="Also print the operator's ClusterRole and the aggregated view/edit ClusterRoles.",
)
def crds(output_dir: Path | None, rbac: bool) -> None:
    """Print the four CustomResourceDefinitions as multi-document YAML (kubectl apply -f -)."""
    if output_dir is None:
        documents = crd_manifests.build_crds()
        if rbac:
            documents += crd_manifests.build_rbac()
        click.echo(crd_manifests.render_yaml(documents), nl=False)
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in crd_manifests.render_files().items():
            path = output_dir / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
            click.echo(f"wrote {path}", err=True)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {output_dir}: {exc.strerror or exc}") from None
