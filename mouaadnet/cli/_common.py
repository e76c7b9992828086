"""What the command modules share: failing with a message and an exit code, loading a model checkpoint, and the
image options (--images, --calib-data) that feed the export checks and INT8 calibration."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code`` (1: a check failed; 2: a bad option or input)."""
    typer.echo(message, err=True)
    raise typer.Exit(code)


def load_checkpoint(checkpoint: Path):
    """(model, model config) of a training, deploy-form or QAT checkpoint; exit 2 with one line when it won't load."""
    from model.artifacts import load_model_checkpoint

    if not checkpoint.is_file():
        fail(f"checkpoint not found: {checkpoint}", 2)
    try:
        return load_model_checkpoint(checkpoint)
    except Exception as error:  # noqa: BLE001 - a CLI turns any load problem into one line
        message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        fail(f"cannot load checkpoint {checkpoint}: {message}", 2)


def image_source(images: Path | None, specs: list[str] | None = None, what: str = "the checks"):
    """The images of --images (a folder, a .txt list or one file), else of --calib-data source specs, else random
    inputs, with a warning that ``what`` runs on them; exit 2 when --images holds no image."""
    from mouaadnet.export.images import FileImages, ImageSourceError, RandomImages, SpecImages

    if images is not None:
        try:
            return FileImages(images)
        except ImageSourceError as error:
            fail(str(error), 2)
    if specs:
        return SpecImages(list(specs))
    typer.echo(f"warning: no --images given; {what} runs on random inputs", err=True)
    return RandomImages()
