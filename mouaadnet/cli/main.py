"""The `mouaadnet` command line: thin wiring over the library packages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="MouaadNet-Ultra: a tiny people-analytics CNN (boxes, gender, age) and its MLOps pipeline.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


def _flags_take_no_type() -> None:
    """Typer's rich help prints a type after every option, flags included (`--json <bool>`), though a flag takes
    no value; its plain help does not. Show flags the plain way: no type column for them."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "flags_take_no_type", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else original(self, ctx)

    display_type_rich.flags_take_no_type = True
    TyperOption.display_type_rich = display_type_rich


_flags_take_no_type()


@app.callback()
def main() -> None:
    """MouaadNet-Ultra command line. Every command has --help."""


def _load_model_config(config: Path | None):
    from model import ConfigError, ModelConfig

    if config is None:
        return ModelConfig()
    try:
        return ModelConfig.from_yaml(config)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


@app.command()
def info(
    config: Annotated[Path | None, typer.Option(help="Model config YAML (default: built-in ModelConfig).")] = None,
    size: Annotated[int | None, typer.Option(help="Scene input size in px (multiple of 32).")] = None,
    crop_size: Annotated[int | None, typer.Option(help="Crop input size in px.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print parameters (train and deploy form), deploy-form FLOPs and output shapes."""
    from model.summary import model_summary

    cfg = _load_model_config(config)
    if size is not None and size % 32:
        typer.echo(f"--size must be a multiple of 32, got {size}", err=True)
        raise typer.Exit(2)
    summary = model_summary(cfg, size, crop_size)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"parameters   train form {summary['params_train']:>10,}   deploy form {summary['params_deploy']:>10,}")
    typer.echo(f"FLOPs deploy scene {summary['scene_size']}x{summary['scene_size']}: "
               f"{summary['flops_deploy_scene'] / 1e9:.3f} G   crop {summary['crop_size']}x{summary['crop_size']}: "
               f"{summary['flops_deploy_crop'] / 1e9:.3f} G   (2 FLOPs per multiply-add)")
    for mode in ("scene", "crop"):
        shapes = ", ".join(f"{name} {shape}" for name, shape in summary[f"outputs_{mode}"].items())
        typer.echo(f"outputs {mode:<5}  {shapes}")
    field, size = summary["receptive_field_scene"], summary["scene_size"]
    reach = "every cell can see the whole input" if field >= size else "less than the input"
    typer.echo(f"theoretical receptive field of a scene heatmap cell: {field} px ({reach} of {size} px; where its "
               f"gradient actually lies, the effective field: mouaadnet evaluate --receptive-field)")


def _register_commands() -> None:
    """Each area wires its own commands; their modules import heavy libraries only inside commands."""
    from mouaadnet.cli import apps, bench, export, image, pipeline, serve, train, weights

    for module in (train, export, serve, pipeline, weights, apps, bench, image):
        module.register(app)


_register_commands()

if __name__ == "__main__":
    app()
