"""`mouaadnet image build` (what `make image` runs): the Dockerfile's images with podman (wiring only: the work is
in ``mouaadnet.containers``)."""

from __future__ import annotations

from typing import Annotated

import typer

image_app = typer.Typer(help="Container images of the project (podman; README, \"In containers\").", no_args_is_help=True)


@image_app.command("build")
def build_cmd(
    target: Annotated[list[str] | None, typer.Option(
        help="Dockerfile target (repeatable): runtime (the pipeline image) and/or serving (Triton). Default both.")
    ] = None,
    base_image: Annotated[str | None, typer.Option(
        help="BASE_IMAGE (e.g. python:3.11-slim-bookworm, a TensorRT image). Default: python:3.11-slim-bookworm "
             "when it is here or can be pulled, else a Debian base made locally with mmdebstrap.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every layer (a cold build).")] = False,
) -> None:
    """Build the images with podman (layers cached in podman's storage, the base tarball in
    ~/.cache/mouaadnet/podman) and print their tag, size and build time."""
    from mouaadnet.containers import ContainerError, build_image, podman_env

    targets = target or ["runtime", "serving"]
    try:
        for name in targets:
            built = build_image(name, base=base_image, no_cache=no_cache, echo=typer.echo)
            typer.echo(f"built {built['tag']} on {built['base']}: {built['size'] / 1e6:.0f} MB (uncompressed), "
                       f"{built['seconds']:.0f} s")
    except ContainerError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"podman's settings here (runc, rlimits, host network): export CONTAINERS_CONF={podman_env()['CONTAINERS_CONF']}")


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")
